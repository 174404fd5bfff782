"""components.artifacts on real KFP artifact objects: what a step leaves in its metadata
and files, and what the report step reads back."""

from __future__ import annotations

import json

import pytest
from kfp.dsl import Dataset, Metrics

from components.artifacts import log_metrics, step_record, step_timer

pytestmark = pytest.mark.fast


def test_a_step_records_its_wall_time_even_when_it_fails(tmp_path):
    artifact = Dataset(uri=str(tmp_path / "features"))
    with pytest.raises(RuntimeError):
        with step_timer(artifact, "features"):
            raise RuntimeError("step failed")
    assert artifact.metadata["step"] == "features"
    assert artifact.metadata["wall_seconds"] >= 0
    record = step_record(artifact)
    assert record["path"] == str(tmp_path / "features")
    assert record["seconds"] == artifact.metadata["wall_seconds"]
    assert record["started_at"] == artifact.metadata["started_at"]


def test_metrics_go_on_the_artifact_and_into_its_file(tmp_path):
    """kfp.local's cache treats a missing output file as a miss: the file must exist."""
    artifact = Metrics(uri=str(tmp_path / "eval" / "metrics"))
    log_metrics(artifact, {"ndcg@10": 0.25, "recall@10": 0.5, "history": [1, 2]},
                names=("recall@10", "ndcg@10", "mrr"))
    assert artifact.metadata == {"recall@10": 0.5, "ndcg@10": 0.25}
    assert json.loads((tmp_path / "eval" / "metrics").read_text()) == artifact.metadata


def test_every_exported_name_is_a_component_even_after_its_module_is_imported():
    """The package resolves names lazily; a submodule named like its component would
    shadow it once imported (the pipeline would call a module)."""
    import importlib
    import types

    import components

    for name in components.__all__:
        importlib.import_module(f"components.{components.MODULE_OF[name]}")
    for name in components.__all__:
        assert not isinstance(getattr(components, name), types.ModuleType), name
