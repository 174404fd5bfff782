"""Export the Item LLM (item tokens -> one item embedding) to ONNX for serving.

    hllm export-onnx --run runs/hllm --precision fp32 int8

Writes RUN/onnx/ (or --out): `item_llm.onnx` (fp32), optionally `item_llm.fp16.onnx`
(for the CUDA execution provider) and `item_llm.int8.onnx` (dynamic int8 MatMuls, for
CPU), the tokenizer, and `export.json` (pooling, widths, opset, files, parity figures).

The graph takes `input_ids` and `attention_mask`, int64 (batch, seq), right-padded, of
the item text only (prompt and BOS included, as `ItemLLM.tokenize` gives them); with
`pooling: item_token` the learned [ITEM] slot is appended inside the graph, so a client
never needs to know about it. Output: `embedding`, float32 (batch, hidden): the raw Item
LLM vector, before any standardisation or item projection of the HLLM run.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from hllm.config import Config, config_from_dict
from hllm.data.item_text import ByteTokenizer, HFTokenizer, Tokenizer
from hllm.errors import ConfigError, HLLMError
from hllm.models.item_llm import ItemLLM
from hllm.progress import Progress

log = logging.getLogger(__name__)

OPSET = 18
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
PRECISIONS = ("fp32", "fp16", "int8", "int8-mlp")
FILES = {"fp32": "item_llm.onnx", "fp16": "item_llm.fp16.onnx", "int8": "item_llm.int8.onnx",
         "int8-mlp": "item_llm.int8-mlp.onnx"}
# MatMuls whose inputs tolerate one int8 scale per tensor: the MLP's input projections
# (Llama gate/up, BERT intermediate). Attention q/k/v and the MLP's down projection read
# the massive-activation dimensions and stay fp32.
MLP_INPUT_MATMULS = ("gate_proj", "up_proj", "intermediate/dense")
MANIFEST = "export.json"
TOKENIZER_DIR = "tokenizer"
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
# Past ~2 GB a protobuf cannot hold the weights; they go to a side file instead.
EXTERNAL_DATA_BYTES = 1_500_000_000

# A few item texts of different lengths: the export-time parity check runs on these.
SAMPLE_TEXTS: tuple[dict[str, str], ...] = (
    {"title": "Toy Story (1995)", "genre": "Animation Children's Comedy"},
    {"title": "Heat"},
    {"title": "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)",
     "genre": "Sci-Fi War", "release": "01-Jan-1963"},
    {},
    {"title": "Alien", "genre": "Action Horror Sci-Fi Thriller"},
    {"title": "Three Colors: Red", "genre": "Drama"},
)


class ItemEmbedder(nn.Module):
    """ItemLLM's forward as (input_ids, attention_mask) -> (batch, hidden), for tracing.

    ItemLLM reads an ItemBatch (packed rows, segment ids, read-out indices) built in
    Python; an exported graph needs plain right-padded tensors instead. The [ITEM] slot
    goes at index `length` of every row, as `padded_batch` puts it.
    """

    def __init__(self, item_llm: ItemLLM):
        super().__init__()
        self.backbone = item_llm.backbone
        self.item_token = item_llm.item_token
        self.causal = item_llm.causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, T, D)
        mask = attention_mask.to(torch.long)
        lengths = mask.sum(1)  # right padding: real tokens are 0 .. length-1
        if self.item_token is not None:
            embeds = torch.cat([embeds, torch.zeros_like(embeds[:, :1])], dim=1)
            pos = torch.arange(embeds.shape[1], device=embeds.device)[None, :]
            slot = (pos == lengths[:, None])[..., None]
            embeds = torch.where(slot, self.item_token.to(embeds.dtype), embeds)
            mask = (pos <= lengths[:, None]).to(torch.long)
        positions = torch.arange(embeds.shape[1], device=embeds.device)[None, :].expand(
            embeds.shape[0], -1)
        if self.causal:
            # Plain 0..T-1 as ItemLLM's padded layout; with a mask given, transformers never
            # reads restarting positions as packed sequences.
            out = self.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                use_cache=False)
        else:
            out = self.backbone(inputs_embeds=embeds, attention_mask=mask,
                                position_ids=positions * mask)
        hidden = out.last_hidden_state
        if self.item_token is not None:
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


# ---------------------------------------------------------------- loading a run

def load_run_item_llm(run_dir: str | Path) -> tuple[Config, ItemLLM]:
    """The Item LLM of an HLLM run dir: its config.yaml and best/model.safetensors."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    weights = run_dir / "best" / "model.safetensors"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory; pass one written by `hllm train`")
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: not found; pass a run directory written by `hllm train`")
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found; the run has not finished an epoch")
    saved = yaml.safe_load(config_path.read_text()) or {}
    run = saved.pop("run", {}) or {}
    if run.get("model", "hllm") != "hllm":
        raise ConfigError(f"{config_path}: run model is {run.get('model')!r}; only HLLM runs "
                          "have an Item LLM to export")
    cfg = config_from_dict(saved)
    item_llm = ItemLLM(cfg.item_llm)
    prefix = "item_llm."
    state = {k[len(prefix):]: v for k, v in load_file(str(weights)).items() if k.startswith(prefix)}
    missing, _ = item_llm.load_state_dict(state, strict=False)
    # A frozen pretrained backbone is not saved in a run: it is re-read from its path.
    backbone_saved = any(k.startswith("backbone.") for k in state)
    bad = [k for k in missing if backbone_saved or not k.startswith("backbone.")]
    if bad or (not backbone_saved and cfg.item_llm.init != "pretrained"):
        raise ConfigError(f"{weights}: Item LLM weights missing from the run "
                          f"({(bad or ['backbone.*'])[:5]})")
    return cfg, item_llm.eval()


# ---------------------------------------------------------------- export

def _example_inputs(item_llm: ItemLLM) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = item_llm.tokenize(SAMPLE_TEXTS[:3])
    return _pad(tokens, item_llm.tokenizer.pad_id)


def _pad(tokens: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(t) for t in tokens))
    ids = torch.full((len(tokens), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tokens), width), dtype=torch.long)
    for i, t in enumerate(tokens):
        ids[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def export_fp32(item_llm: ItemLLM, path: Path, opset: int = OPSET) -> None:
    """Trace the Item LLM to `path` with dynamic batch and sequence axes.

    Exporter: the TorchScript tracer (dynamo=False), on purpose. On torch 2.13 +
    transformers 5 it exports Llama-family (SmolLM2) and BERT-style encoders with
    dynamic batch and sequence axes and matches PyTorch to ~1e-5. The default dynamo
    exporter also converts the Llama tower, but its graph names a value `embedding`
    (after aten.embedding) and so becomes invalid with our output name, and it took
    ~20x longer on the tiny model. The tracer's warnings concern Python conditions on
    shapes in transformers' mask code (mask width vs sequence length) that hold for
    every input this graph accepts; the tests check parity across batch and length.
    """
    wrapper = ItemEmbedder(item_llm).eval()
    ids, mask = _example_inputs(item_llm)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            OUTPUT: {0: "batch"}}
    n_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        torch.onnx.export(wrapper, (ids, mask), str(path), input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False,
                          external_data=n_bytes > EXTERNAL_DATA_BYTES)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs/outputs: half the size, for the CUDA EP.

    Norm statistics and softmax stay fp32. Check the manifest's parity before serving
    it: on SmolLM2 (cpu-default) this graph loses the one massive-activation dimension
    (max abs diff 34 vs fp32; ml-100k test recall@10 0.186 -> 0.013 with it as the item
    table), also with residual adds and the MLP kept fp32. fp32 or int8 are safe there.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True,
                                     op_block_list=["ReduceMean", "Pow", "Sqrt", "Softmax",
                                                    "ReduceSum", "Div"])
    onnx.save(model, str(dst), save_as_external_data=_large(model))


def quantize_int8(src: Path, dst: Path, block_size: int = 32) -> None:
    """Weight-only int8 (blockwise, symmetric) MatMuls: a quarter of the weight bytes.

    Not QDQ/dynamic activation quantization: LLM hidden states have a few dimensions
    hundreds of times larger than the rest, and one int8 scale per activation tensor
    erases the others. On SmolLM2 / ml-100k, quantize_dynamic's MatMulInteger graph kept
    a mean cosine of only 0.47 to fp32 after per-dimension standardisation (what the HLLM
    feeds its projection); 8-bit MatMulNBits with 32-weight blocks keeps 0.99 and the
    run's test recall@10 (ndcg@10 -0.0006). Its speed is about fp32's (fp32 compute on
    dequantized blocks): the gain is a 2.4x smaller file and less memory traffic.
    """
    import onnx

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # This module calls logging.basicConfig(level=INFO) on import; undo that, and its
    # per-node INFO lines.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)
    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                     accuracy_level=1)  # fp32 compute on dequantized blocks
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=_large(
        quantizer.model.model))


def quantize_int8_mlp(src: Path, dst: Path) -> None:
    """Dynamic int8 (integer MatMul, per-channel weights) on the MLP input projections only.

    The one int8 variant that is faster than fp32 on CPU. On SmolLM2 / ml-100k (256
    items, 2 threads) it ran 1.58x eager PyTorch with a mean standardized cosine of 0.969
    to fp32; quantizing attention q/k/v as well was 2.0x but fell to 0.78, hence the
    selection. Its recall cost is measured by bench/onnx_item_llm.py --run.
    """
    import onnx

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root.handlers[:], root.level = handlers, level
    graph = onnx.load(str(src), load_external_data=False).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    chosen = [n for n in matmuls if any(k in n for k in MLP_INPUT_MATMULS)]
    if not chosen:
        raise ConfigError(f"{src}: no MLP input projections ({', '.join(MLP_INPUT_MATMULS)}) "
                          "among the graph's MatMuls; use precision int8 for this model")
    advice = _DropMessage("consider to run pre-processing")  # a model-zoo hint, not for us
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=[n for n in matmuls if n not in chosen],
                         op_types_to_quantize=["MatMul"], use_external_data_format=True)
    finally:
        logging.getLogger().removeFilter(advice)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def external_data_files(graph: Path) -> list[str]:
    """The weight files a graph names beside itself (they ship with it), made as readable as
    the graph: onnxruntime's quantizer writes them 0600 through a temporary file, which a
    server running as another user then cannot open."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    names = sorted({ExternalDataInfo(t).location for t in model.graph.initializer
                    if uses_external_data(t)})
    for name in names:
        (graph.parent / name).chmod(graph.stat().st_mode & 0o777)
    return names


def _large(model: Any) -> bool:
    return model.ByteSize() > EXTERNAL_DATA_BYTES


def save_tokenizer(item_llm: ItemLLM, out_dir: Path) -> dict[str, Any]:
    """The tokenizer beside the graph: HF save_pretrained, or a tiny json for bytes."""
    target = out_dir / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    tok = item_llm.tokenizer
    info: dict[str, Any] = {"dir": TOKENIZER_DIR, "bos_id": tok.bos_id, "pad_id": tok.pad_id}
    if isinstance(tok, ByteTokenizer):
        (target / BYTE_TOKENIZER_FILE).write_text(json.dumps(
            {"type": "bytes", "bos_id": tok.bos_id, "pad_id": tok.pad_id,
             "vocab_size": tok.vocab_size}, indent=2) + "\n")
        return {**info, "kind": "bytes"}
    if isinstance(tok, HFTokenizer):
        tok.tok.save_pretrained(str(target))
        return {**info, "kind": "hf"}
    raise HLLMError(f"cannot save a tokenizer of type {type(tok).__name__}")


def load_tokenizer(export_dir: str | Path) -> Tokenizer:
    """The tokenizer written by `save_tokenizer` (BOS first, as at training time)."""
    target = Path(export_dir) / TOKENIZER_DIR
    if (target / BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer()
    if not target.is_dir():
        raise ConfigError(f"{target}: no tokenizer; export the model with hllm export-onnx")
    return HFTokenizer(target)


def export_item_llm_model(item_llm: ItemLLM, out_dir: str | Path,
                          precision: str | Sequence[str] = "fp32", *, opset: int = OPSET,
                          parity_tokens: Sequence[Sequence[int]] | None = None,
                          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export an ItemLLM to out_dir; returns the manifest also written as export.json.

    fp32 is always written (fp16 and int8 are derived from it). Parity is measured on
    `parity_tokens` (default: a few sample item texts) against PyTorch: fp32 and int8
    on the CPU EP, fp16 on CUDA where there is one (else CPU, which runs it slowly).
    """
    precisions = [precision] if isinstance(precision, str) else list(precision)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown ONNX precision {unknown} (known: {', '.join(PRECISIONS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = item_llm.training
    item_llm.eval()
    t0 = time.perf_counter()
    fp32 = out / FILES["fp32"]
    try:
        export_fp32(item_llm, fp32, opset)
    finally:
        item_llm.train(was_training)
    files = {"fp32": FILES["fp32"]}
    if "fp16" in precisions:
        convert_fp16(fp32, out / FILES["fp16"])
        files["fp16"] = FILES["fp16"]
    if "int8" in precisions:
        quantize_int8(fp32, out / FILES["int8"])
        files["int8"] = FILES["int8"]
    if "int8-mlp" in precisions:
        quantize_int8_mlp(fp32, out / FILES["int8-mlp"])
        files["int8-mlp"] = FILES["int8-mlp"]
    seconds = time.perf_counter() - t0
    external = {name: data for name, file in files.items() if (data := external_data_files(out / file))}
    tokens = list(parity_tokens) if parity_tokens is not None else item_llm.tokenize(SAMPLE_TEXTS)
    with torch.no_grad():
        reference = item_llm.encode_all(tokens, device=torch.device("cpu"), progress=False).numpy()
    checks: dict[str, Any] = {}
    for name, file in files.items():
        try:
            sess = session(out / file, device="auto" if name == "fp16" else "cpu")
        except HLLMError as exc:
            checks[name] = {"skipped": str(exc)}
            continue
        got = onnx_embed(sess, tokens, pad_id=item_llm.tokenizer.pad_id)
        checks[name] = {"items": len(tokens), "max_abs_diff": float(np.abs(got - reference).max()),
                        "min_cosine": float(_cosine(got, reference).min()),
                        "provider": sess.get_providers()[0]}
        if checks[name]["min_cosine"] < 0.999:
            log.warning("%s differs from PyTorch: max abs diff %.3g, min cosine %.4f on %d "
                        "sample items; check it before serving", file,
                        checks[name]["max_abs_diff"], checks[name]["min_cosine"], len(tokens))
    manifest = {
        "format": 1,
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "seq"]} for n in INPUTS},
        "output": {OUTPUT: {"dtype": "float32", "shape": ["batch", item_llm.hidden_size]}},
        "padding": "right",
        "pooling": item_llm.cfg.pooling,
        "hidden_size": item_llm.hidden_size,
        "model_type": item_llm.backbone.config.model_type,
        "opset": opset,
        "exporter": "torchscript",
        "files": files,
        "external_data": external,
        "tokenizer": save_tokenizer(item_llm, out),
        "text": {"prompt": item_llm.cfg.prompt, "field_separator": item_llm.cfg.field_separator,
                 "max_text_len": item_llm.cfg.max_text_len},
        "parity_vs_pytorch": checks,
        "export_seconds": round(seconds, 2),
        "versions": {"torch": torch.__version__, "onnxruntime": _ort().__version__},
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_item_llm(run_dir: str | Path, out_dir: str | Path | None = None,
                    precision: str | Sequence[str] = "fp32") -> Path:
    """Export a run's Item LLM (config.yaml + best weights) to out_dir (default RUN/onnx)."""
    run_dir = Path(run_dir)
    _, item_llm = load_run_item_llm(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "onnx"
    export_item_llm_model(item_llm, out, precision, extra={"run": str(run_dir)})
    return out


# ---------------------------------------------------------------- inference

def _ort():
    import onnxruntime

    return onnxruntime


def _gpu_present() -> bool:
    if torch.cuda.is_available():
        return True
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def session(path: str | Path, device: str = "auto", *, threads: int = 0,
            optimize: bool = True):
    """An onnxruntime InferenceSession on CUDA when there is one, else CPU.

    device: auto | cuda | cpu. A CUDA EP that cannot start (no GPU, CUDA/cuDNN libraries
    missing) logs a warning and the session runs on CPU instead of failing.
    """
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no ONNX model; export one with `hllm export-onnx`")
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"device must be auto, cuda or cpu, got {device!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # keep ORT's own fallback chatter out of the logs
    want_cuda = device == "cuda" or (device == "auto" and _gpu_present())
    if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            sess = ort.InferenceSession(str(path), opts, providers=[
                "CUDAExecutionProvider", "CPUExecutionProvider"])
            if "CUDAExecutionProvider" in sess.get_providers():
                return sess
            log.warning("%s: CUDA execution provider did not start; running on CPU", path.name)
            return sess
        except Exception as exc:  # noqa: BLE001 - any EP start-up failure means: use CPU
            log.warning("%s: CUDA execution provider failed (%s); running on CPU",
                        path.name, str(exc).splitlines()[0][:200])
    elif want_cuda:
        log.warning("onnxruntime has no CUDA execution provider here; running %s on CPU",
                    path.name)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - e.g. fp16 ops without CPU kernels
        raise HLLMError(f"{path}: onnxruntime cannot run this model on CPU: "
                        f"{str(exc).splitlines()[0][:300]}") from exc


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches: little padding per batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def onnx_embed(sess, items: Sequence[Sequence[int]] | tuple[Tokenizer, Sequence[str]],
               batch_size: int = 32, pad_id: int = 0, progress: bool | None = None) -> np.ndarray:
    """(n, hidden) float32 embeddings, in input order.

    items: token id lists (as ItemLLM.tokenize gives them), or (tokenizer, texts) to
    tokenize here, texts being whole item prompts (hllm.data.item_text.item_prompt with
    the manifest's `text` settings; cut the ids to its max_text_len as training did). Items are sorted by length and right-padded per batch, so a batch
    pays for its own longest item only; pad_id's value never reaches the output.
    progress: a bar (default: on a terminal), else a log line every 30 s of long work.
    """
    if isinstance(items, tuple) and len(items) == 2 and hasattr(items[0], "encode"):
        tokenizer, texts = items
        token_ids: Sequence[Sequence[int]] = [tokenizer.encode(t) for t in texts]
        pad_id = tokenizer.pad_id
    else:
        token_ids = items  # type: ignore[assignment]
    if any(len(t) == 0 for t in token_ids):
        raise HLLMError("onnx_embed: an item has no tokens (the tokenizer adds BOS; "
                        "pass ItemLLM.tokenize output)")
    out: np.ndarray | None = None
    with Progress(len(token_ids), "onnx embed", "item", bar=progress) as shown:
        for chunk in length_batches([len(t) for t in token_ids], batch_size):
            ids, mask = _pad([token_ids[i] for i in chunk], pad_id)
            got = sess.run([OUTPUT], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            if out is None:
                out = np.empty((len(token_ids), got.shape[1]), dtype=np.float32)
            out[chunk] = got
            shown.update(len(chunk))
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def parity(item_llm: ItemLLM, sess, token_ids: Sequence[Sequence[int]], batch_size: int = 32,
           reference: np.ndarray | torch.Tensor | None = None) -> float:
    """Max abs diff between ONNX and PyTorch (ItemLLM.encode_all) embeddings.

    Pass `reference` (PyTorch embeddings of the same items) to compare several graphs
    against one PyTorch pass.
    """
    if reference is None:
        reference = item_llm.encode_all(token_ids, device=torch.device("cpu"), progress=False)
    ref = reference.numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    got = onnx_embed(sess, token_ids, batch_size, pad_id=item_llm.tokenizer.pad_id)
    return float(np.abs(got - ref).max())
