"""ONNX export of the Item LLM: parity with PyTorch, CPU sessions, int8, run dirs, errors."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from helpers import ML100K
from hllm import onnx_export
from hllm.config import cpu_default, cpu_tiny
from hllm.errors import ConfigError, HLLMError
from hllm.models.item_llm import ItemLLM
from hllm.onnx_export import (export_item_llm, export_item_llm_model, load_tokenizer, onnx_embed,
                              parity, session)

BERT = dict(model_type="bert", vocab_size=260, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
WORDS = ["star", "wars", "comedy", "drama", "the", "return", "of", "night", "love", "(1995)",
         "Sci-Fi", "Thriller", "a", "very", "long", "title", "indeed", "x"]


def random_texts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Item texts from empty to longer than max_text_len (so some are truncated)."""
    rng = random.Random(seed)
    return [{"title": " ".join(rng.choices(WORDS, k=rng.randint(0, 14))),
             "genre": " ".join(rng.choices(WORDS, k=rng.randint(0, 3)))} for _ in range(n)]


def tiny_item_llm(**changes) -> ItemLLM:
    torch.manual_seed(0)
    return ItemLLM(dataclasses.replace(cpu_tiny().item_llm, **changes)).eval()


def standardized_cosine(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-item cosine after the per-dimension standardisation HLLM.set_item_cache applies."""
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------- fast: tiny models

@pytest.mark.parametrize("arch,pooling", [("llama", "item_token"), ("llama", "mean"),
                                          ("bert", "item_token")])
def test_tiny_export_matches_pytorch(tmp_path, arch, pooling):
    model = tiny_item_llm(pooling=pooling, **({"arch": BERT} if arch == "bert" else {}))
    manifest = export_item_llm_model(model, tmp_path)
    assert manifest["pooling"] == pooling and manifest["hidden_size"] == 32
    assert manifest["parity_vs_pytorch"]["fp32"]["max_abs_diff"] <= 1e-4
    tokens = model.tokenize(random_texts(40))
    lengths = {len(t) for t in tokens}
    assert len(lengths) > 10 and max(lengths) == model.cfg.max_text_len  # truncated ones too
    sess = session(tmp_path / "item_llm.onnx", device="cpu")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    reference = model.encode_all(tokens, device=torch.device("cpu"), progress=False)
    for batch_size in (1, 7, 40):  # one item per run, mixed lengths padded together
        assert parity(model, sess, tokens, batch_size, reference=reference) <= 1e-4
    # The wrapper's padding never leaks: a pad id inside the vocabulary changes nothing.
    got = onnx_embed(sess, tokens, batch_size=40, pad_id=3)
    assert np.abs(got - reference.numpy()).max() <= 1e-4


def test_manifest_lists_external_weight_files_readable_like_their_graph(tmp_path, caplog):
    """int8-mlp's quantizer writes its weights to a side file, 0600 through a temp file: the
    manifest names it and it gets the graph's mode, so a server under another user reads it."""
    with caplog.at_level("WARNING"):
        manifest = export_item_llm_model(tiny_item_llm(), tmp_path, ["fp32", "int8-mlp"])
    assert manifest["external_data"] == {"int8-mlp": ["item_llm.int8-mlp.onnx.data"]}
    graph_mode = (tmp_path / "item_llm.int8-mlp.onnx").stat().st_mode & 0o777
    assert (tmp_path / "item_llm.int8-mlp.onnx.data").stat().st_mode & 0o777 == graph_mode
    assert "pre-processing" not in caplog.text  # onnxruntime's model-zoo hint is dropped


def test_item_token_slot_is_in_the_graph(tmp_path):
    """The learned [ITEM] vector is exported: changing it changes the ONNX output."""
    model = tiny_item_llm()
    tokens = model.tokenize(random_texts(5))
    export_item_llm_model(model, tmp_path / "a")
    with torch.no_grad():
        model.item_token.add_(1.0)
    export_item_llm_model(model, tmp_path / "b")
    a = onnx_embed(session(tmp_path / "a" / "item_llm.onnx", device="cpu"), tokens)
    b = onnx_embed(session(tmp_path / "b" / "item_llm.onnx", device="cpu"), tokens)
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: CUDA would start")
def test_session_falls_back_to_cpu_when_cuda_cannot_start(tmp_path, caplog):
    """The real path, no mocks: onnxruntime-gpu lists the CUDA provider on this GPU-less
    machine, asking for it fails to start, and the session runs on CPU with a warning."""
    model = tiny_item_llm()
    export_item_llm_model(model, tmp_path)
    ort = onnx_export._ort()
    assert "CUDAExecutionProvider" in ort.get_available_providers()  # onnxruntime-gpu
    with caplog.at_level("WARNING", logger="hllm.onnx_export"):
        sess = session(tmp_path / "item_llm.onnx", device="cuda")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert "running on CPU" in caplog.text
    tokens = model.tokenize(random_texts(3))
    assert onnx_embed(sess, tokens).shape == (3, 32)


def _fake_run(run_dir, model: ItemLLM, cfg=None, model_name: str = "hllm"):
    """A run dir as `hllm train` writes it: config.yaml and best/model.safetensors."""
    cfg = cfg or dataclasses.replace(cpu_tiny(), item_llm=model.cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"run": {"model": model_name, "dataset": "toy"}, **cfg.to_dict()}, sort_keys=False))
    (run_dir / "best").mkdir()
    state = {f"item_llm.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["user_llm.dummy"] = torch.zeros(1)  # other HLLM weights are ignored
    save_file(state, str(run_dir / "best" / "model.safetensors"))
    return run_dir


def test_export_run_dir_and_cli(tmp_path, capsys):
    from hllm.cli import main

    model = tiny_item_llm()
    with torch.no_grad():
        model.item_token.mul_(10)  # trained weights differ from a fresh init: they must load
    run = _fake_run(tmp_path / "run", model)
    out = export_item_llm(run, precision=["fp32", "int8"])
    assert out == run / "onnx"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"fp32": "item_llm.onnx", "int8": "item_llm.int8.onnx"}
    assert manifest["opset"] == onnx_export.OPSET and manifest["tokenizer"]["kind"] == "bytes"
    assert manifest["parity_vs_pytorch"]["fp32"]["max_abs_diff"] <= 1e-4
    tokenizer = load_tokenizer(out)
    texts = ["Toy Story (1995) Animation", "Heat", "x" * 80]
    got = onnx_embed(session(out / "item_llm.onnx", device="cpu"), (tokenizer, texts))
    tokens = [tokenizer.encode(t) for t in texts]
    want = model.encode_all(tokens, device=torch.device("cpu"), progress=False).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert main(["export-onnx", "--run", str(run), "--out", str(tmp_path / "cli"),
                 "--precision", "fp32", "fp16"]) == 0
    assert (tmp_path / "cli" / "item_llm.fp16.onnx").is_file()
    assert "item_llm.fp16.onnx" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input

def test_missing_run_dir_weights_or_config_is_a_clear_error(tmp_path, capsys):
    from hllm.cli import main

    with pytest.raises(ConfigError, match="no such run directory"):
        export_item_llm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"config\.yaml: not found"):
        export_item_llm(tmp_path / "empty")
    run = _fake_run(tmp_path / "run", tiny_item_llm())
    (run / "best" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"best/model\.safetensors: not found"):
        export_item_llm(run)
    sasrec = _fake_run(tmp_path / "sasrec", tiny_item_llm(), model_name="sasrec")
    with pytest.raises(ConfigError, match="only HLLM runs"):
        export_item_llm(sasrec)
    with pytest.raises(ConfigError, match="unknown ONNX precision"):
        export_item_llm_model(tiny_item_llm(), tmp_path / "x", ["fp32", "int4"])
    with pytest.raises(ConfigError, match="no ONNX model"):
        session(tmp_path / "missing.onnx")
    assert main(["export-onnx", "--run", str(run)]) == 2  # the CLI prints, no traceback
    assert "model.safetensors: not found" in capsys.readouterr().err


def test_run_without_item_llm_weights_is_rejected(tmp_path):
    model = tiny_item_llm()  # random init: its backbone must be in the run's weights
    run = _fake_run(tmp_path / "run", model)
    save_file({"user_llm.dummy": torch.zeros(1)}, str(run / "best" / "model.safetensors"))
    with pytest.raises(HLLMError, match="Item LLM weights missing"):
        export_item_llm(run)


# ---------------------------------------------------------------- acceptance: SmolLM2 on ml-100k

@pytest.fixture(scope="module")
def smollm2_ml100k(tmp_path_factory):
    """cpu-default Item LLM (pretrained SmolLM2, mean pooling) exported once, and one
    PyTorch pass over a sample of ml-100k items (the production encode_all path)."""
    from hllm.train import load_split

    cfg = cpu_default()
    split = load_split(str(ML100K), cfg)
    model = ItemLLM(cfg.item_llm).eval()
    every = model.tokenize(split.item_text[1:])  # index 0 is the padding item
    assert len(every) == 1682
    # An eighth of the catalogue (every 8th item) plus the 16 longest texts: the lengths
    # and shapes of all of it, at an eighth of the cost of four full passes.
    longest = sorted(range(len(every)), key=lambda i: -len(every[i]))[:16]
    sample = sorted(set(range(0, len(every), 8)) | set(longest))
    tokens = [every[i] for i in sample]
    out = tmp_path_factory.mktemp("smollm2-onnx")
    manifest = export_item_llm_model(model, out, ["fp32", "int8", "int8-mlp"])
    reference = model.encode_all(tokens, device=torch.device("cpu"), progress=False).numpy()
    return model, tokens, out, manifest, reference


@pytest.mark.slow
def test_smollm2_fp32_parity_on_ml100k_items(smollm2_ml100k):
    model, tokens, out, manifest, reference = smollm2_ml100k
    assert len(tokens) > 220 and manifest["pooling"] == "mean"
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    sess = session(out / "item_llm.onnx", device="cpu")
    got = onnx_embed(sess, tokens, batch_size=32, pad_id=model.tokenizer.pad_id)
    diff = float(np.abs(got - reference).max())
    print(f"ml-100k fp32 ONNX vs PyTorch: max abs diff {diff:.3g} over {len(tokens)} items")
    assert diff <= 1e-4


@pytest.mark.slow
def test_smollm2_int8_runs_and_stays_close(smollm2_ml100k):
    model, tokens, out, manifest, reference = smollm2_ml100k
    sess = session(out / "item_llm.int8.onnx", device="cpu")
    got = onnx_embed(sess, tokens, batch_size=32, pad_id=model.tokenizer.pad_id)
    assert np.isfinite(got).all()
    cos = standardized_cosine(got, reference, reference)
    print(f"int8 vs PyTorch, standardized cosine: mean {cos.mean():.4f} min {cos.min():.4f}")
    # Measured on these items: mean 0.990, min 0.977. Quantizing activations per tensor
    # (quantize_dynamic) gave a mean of 0.47 on a sample, which this threshold rejects.
    assert cos.mean() >= 0.98 and cos.min() >= 0.95


@pytest.mark.slow
def test_smollm2_int8_mlp_stays_close(smollm2_ml100k):
    model, tokens, out, manifest, reference = smollm2_ml100k
    sess = session(out / "item_llm.int8-mlp.onnx", device="cpu")
    ops = {n.op_type for n in __import__("onnx").load(str(out / "item_llm.int8-mlp.onnx"),
                                                      load_external_data=False).graph.node}
    assert "MatMulInteger" in ops and "MatMul" in ops  # MLP inputs int8, the rest fp32
    got = onnx_embed(sess, tokens, batch_size=32, pad_id=model.tokenizer.pad_id)
    cos = standardized_cosine(got, reference, reference)
    print(f"int8-mlp vs PyTorch, standardized cosine: mean {cos.mean():.4f} min {cos.min():.4f}")
    # Measured on a 256-item sample: mean 0.969, min 0.926 when this test was written; on
    # a quarter of the items with onnxruntime-gpu 1.31.1 / onnx 1.23.2 (a fresh install on
    # 2026-12-01, the code unchanged): mean 0.927, min 0.834. All-MatMul dynamic int8 gives
    # 0.47, which this bar still rejects.
    assert cos.mean() >= 0.90 and cos.min() >= 0.80
