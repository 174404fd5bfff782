"""KFP v2 components, one per pipeline step, each a thin wrapper over one `hllm` function.

Every component imports hllm inside its body (it runs in the project image), exchanges
typed artifacts (Dataset, Model, Metrics, HTML, Markdown) and records its wall time in
its main output artifact's metadata (components.artifacts.step_timer).

The package imports its component modules on first use of a name, not when it is
imported: a component body imports components.artifacts inside KFP's executor, where
kfp.dsl is still loading, and decorating the other components there would fail.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULE_OF = {
    "CPU_IMAGE": "images", "CUDA_IMAGE": "images",
    "build_features": "features", "data_rejected": "report", "evaluate_model": "evaluate",
    "evaluate_msr": "msr", "export_onnx": "onnx_export", "gate_model": "gate",
    "msr_knowledge": "msr", "register_model": "register", "register_msr_model": "msr",
    "report_msr": "msr", "report_run": "report", "train_hllm": "train",
    "train_msr_backbone": "msr", "train_msr_llm4msr": "msr", "train_sasrec": "train",
    "validate_data": "validate", "validate_msr_data": "msr",
}
__all__ = sorted(MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in MODULE_OF:
        raise AttributeError(f"module 'components' has no attribute {name!r}")
    return getattr(importlib.import_module(f"components.{MODULE_OF[name]}"), name)
