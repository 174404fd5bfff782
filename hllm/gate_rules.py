"""What a gate check is made of: the evidence, one check's outcome, and a task's rules.

hllm.gate applies the checks in one order for every task; each task (hllm.tasks)
supplies its rules (hllm.ranking_task.ranking_rules for full ranking,
hllm.msr.gate_checks.ctr_rules for CTR) and reads its own evidence. The types live
here, apart from the gate's registry work, so a task imports them without importing
the gate (which looks the task up).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hllm.errors import ConfigError


@dataclass
class Evidence:
    """One model's offline evaluation: test metrics, split hash and per-user ranks."""

    label: str
    metrics: dict[str, Any]
    ranks: np.ndarray | None = None  # ranking task: per-user rank of the held-out item
    segments: dict[str, np.ndarray] | None = None  # ranking task: per-user segment masks
    predictions: dict[str, np.ndarray] | None = None  # ctr task: label, probability, scenario per row

    @property
    def split(self) -> str:
        return str(self.metrics.get("split_sha256", ""))


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    numbers: dict[str, float] = field(default_factory=dict)
    against: str = ""  # floor | champion | baseline: what the challenger was measured against


@dataclass
class TaskRules:
    """What differs between gate tasks; decide() applies the same order of checks to all."""

    baseline: str  # how the baseline is named in check names and messages
    bootstrap: Callable[[Evidence, Evidence], dict[str, float]]  # primary metric, a - b, with CI
    vs_champion: Callable[[Evidence, Evidence], list[Check]]  # beyond the primary uplift
    vs_baseline: Callable[[Evidence, Evidence], list[Check]] = lambda a, b: []


def read_metrics(directory: Path, evidence: str, writer: str) -> dict[str, Any]:
    """metrics.json of an evaluation whose per-unit `evidence` file must sit beside it."""
    for f in (directory / "metrics.json", directory / evidence):
        if not f.is_file():
            raise ConfigError(f"{f}: missing; the gate needs the evaluation's metrics.json and {writer}")
    return json.loads((directory / "metrics.json").read_text())
