"""The CTR task: multi-scenario click-through models (a backbone alone or with LLM4MSR).

Evidence is the test split's metrics.json (overall and per-scenario AUC and logloss)
plus, per test row, the label, the predicted probability and the scenario
(test_predictions.npz, written by `hllm msr train`); the gate's rules are
hllm.msr.gate_checks.ctr_rules, registration is hllm.msr.registry.plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hllm.gate_rules import Evidence, read_metrics
from hllm.msr.gate_checks import ctr_rules
from hllm.msr.registry import plan
from hllm.tasks import Task

PREDICTIONS_FILE = "test_predictions.npz"
WRITER = "per-row test_predictions.npz (written by `hllm msr train`)"


def read_evidence(directory: Path, label: str) -> Evidence:
    """metrics.json and the per-row predictions."""
    metrics = read_metrics(directory, PREDICTIONS_FILE, WRITER)
    with np.load(directory / PREDICTIONS_FILE, allow_pickle=False) as z:
        return Evidence(label, metrics, predictions={k: z[k] for k in z.files})


TASK = Task(name="ctr", default_model="llm4msr", evidence=PREDICTIONS_FILE, evidence_writer=WRITER,
            read_evidence=read_evidence, gate_rules=ctr_rules, plan_registration=plan,
            endpoint="hllm.online.endpoints:ScoreEndpoint")
