"""Numeric precision of training and scoring: bf16 autocast, FSDP's mixed-precision dtypes.

One place decides, so training, evaluation after training and `hllm evaluate` on a
saved run compute in the same precision.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from hllm.config import Config
from hllm.errors import ConfigError


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    precision = cfg.train.precision
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def autocast_context(cfg: Config, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16(cfg, device) else nullcontext()


def fsdp_dtypes(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(param_dtype, reduce_dtype) of the FSDP mixed-precision policy; None keeps fp32.

    auto: bf16 compute copies of the parameters only on CUDA with bf16 (on CPU the
    sharded run stays fp32, so it can be compared with one process exactly).
    """
    mode, reduce = cfg.train.fsdp_mixed_precision, cfg.train.fsdp_reduce_dtype
    if mode not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.fsdp_mixed_precision must be auto, bf16 or fp32, got {mode!r}")
    if reduce not in ("fp32", "bf16"):
        raise ConfigError(f"train.fsdp_reduce_dtype must be fp32 or bf16, got {reduce!r}")
    bf16 = mode == "bf16" or (mode == "auto" and device.type == "cuda" and uses_bf16(cfg, device))
    if not bf16:
        return None, None
    return torch.bfloat16, (torch.bfloat16 if reduce == "bf16" else torch.float32)
