"""Bit-identical training runs: torch's deterministic kernels, switched on for a block.

Multi-threaded CPU kernels may add in a different order from one process to the next,
so two identical runs drift apart in the last bits and, after a few epochs, in the
fifth decimal of a metric (seen with both HLLM and LLM4MSR). Deterministic kernels
remove that at no measurable cost on CPU. On CUDA they cost speed and cuBLAS needs
CUBLAS_WORKSPACE_CONFIG set, so "auto" keeps them for the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from hllm.errors import ConfigError

SETTINGS = {"auto": None, "on": True, "off": False, "true": True, "false": False}


def wanted(setting: str | bool, device: torch.device) -> bool:
    """Resolve a config value (auto | on | off, or a bool) for the device that trains."""
    value = SETTINGS.get(str(setting).lower(), "unknown")
    if value == "unknown":
        raise ConfigError(f"train.deterministic: {setting!r} is not one of auto, on, off")
    return device.type == "cpu" if value is None else bool(value)


@contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms for the duration; the previous setting comes back."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
