"""A trained MSR model as an MLflow pyfunc: (user_id, item_id, scenario) rows in, click probability out.

The model carries the run directory's config.yaml, model.safetensors (LLM4MSR: the
knowledge tables are buffers inside, so the LLM never runs at serving time) and
encoding.json (vocabularies and per-user / per-item field values, so a request needs
only ids). Unseen ids map to the "unknown" row exactly as in evaluation, so the test
rows reproduce the run's probabilities.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

RUN_FILES = ("config.yaml", "model.safetensors", "encoding.json", "metrics.json")


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, "user_id"), ColSpec(DataType.string, "item_id"),
                     ColSpec(DataType.string, "scenario")])
    outputs = Schema([ColSpec(DataType.double, "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def write_artifacts(run_dir: Path, out: Path) -> dict[str, str]:
    """Copy the files serving needs; returns MLflow's artifacts mapping."""
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copyfile(run_dir / name, out / name)
    return {"run": str(out)}


class MSRScorer(mlflow.pyfunc.PythonModel):
    """Scores CTR rows with the saved backbone (+ LLM4MSR meta layers)."""

    def load_context(self, context) -> None:
        from hllm.msr.run import load_run

        self.run = load_run(context.artifacts["run"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        frame = pd.DataFrame(model_input)
        for col in ("user_id", "item_id", "scenario"):
            if col in frame:
                frame[col] = frame[col].astype(str)
        return pd.DataFrame({"probability": self.run.predict(frame).astype("float64")})
