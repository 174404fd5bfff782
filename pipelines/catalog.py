"""The pipelines `hllm pipeline` compiles, runs and submits, looked up by name.

Each entry says where its pipeline is defined, which report step writes its page, its
defaults (A/B config, registered model name, cluster preset, package file), the
run_local arguments only it takes, and how the terminal summary shows one of its
models. The CLI and the local runner read the entry and never branch on the name, so a
new pipeline is a new module with `build_pipeline(platform)` and `compile_pipeline(out)`
plus one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hllm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RANKING_METRICS = ("recall@10", "recall@50", "recall@200", "ndcg@10")


def _ranking_line(name: str, model: dict[str, Any]) -> str:
    m = model["metrics"]
    return f"  {name:7s} " + "  ".join(f"{k} {m[k]:.4f}" for k in RANKING_METRICS if k in m)


def _ctr_line(name: str, model: dict[str, Any]) -> str:
    m = model["metrics"]
    per = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in m.items() if k.startswith("auc/"))
    return f"  {model['model']:21s} AUC {m['auc']:.4f} logloss {m['logloss']:.4f} | {per}"


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    summary: str  # one line for --help
    module: str  # defines build_pipeline(platform) and compile_pipeline(out)
    report: str  # "module:function" that writes the run's report.html and summary
    ab_config: Path  # default A/B config the gate reads
    registered_name: str  # default registered model name
    cluster_preset: str  # default preset of `hllm pipeline submit`
    local_args: tuple[str, ...] = ()  # run_local arguments only this pipeline takes
    model_line: Callable[[str, dict[str, Any]], str] = _ranking_line  # terminal summary

    @property
    def package(self) -> str:
        """Default file name of the compiled IR."""
        return f"{self.name}-training.yaml"

    def build(self, platform):
        return importlib.import_module(self.module).build_pipeline(platform)

    def compile(self, out: str) -> str:
        return importlib.import_module(self.module).compile_pipeline(out)

    def write_report(self, *args, **kwargs) -> dict[str, Any]:
        module, _, function = self.report.partition(":")
        return getattr(importlib.import_module(module), function)(*args, **kwargs)


PIPELINES = {spec.name: spec for spec in (
    PipelineSpec("hllm", "HLLM + SASRec (the default)", "pipelines.training",
                 "hllm.report:write_report", ROOT / "configs" / "ab" / "hllm-rollout.yaml",
                 "hllm", "hllm-1b", local_args=("onnx_name", "min_user_interactions")),
    PipelineSpec("llm4msr", "multi-scenario CTR", "pipelines.msr",
                 "hllm.msr.report:write_report", ROOT / "configs" / "ab" / "llm4msr-rollout.yaml",
                 "llm4msr", "cpu-default", model_line=_ctr_line),
)}
DEFAULT = "hllm"


def get_pipeline(name: str) -> PipelineSpec:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ConfigError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINES)})") from None


def choices_help() -> str:
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in PIPELINES.values())
