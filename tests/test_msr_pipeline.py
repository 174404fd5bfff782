"""The LLM4MSR pipeline: compiled IR (placement, caching, branches) and a local run on ml-100k
through kfp.local with the tiny preset against real MLflow + S3 servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

STEPS = ("validate", "features", "knowledge", "train_backbone", "train_llm4msr",
         "evaluate_backbone", "evaluate_llm4msr", "register", "gate")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from pipelines.msr import compile_pipeline

    path = compile_pipeline(str(tmp_path_factory.mktemp("ir") / "msr.yaml"))
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0], docs[1]


def _tasks(spec) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return {n: t for n, t in tasks.items() if not n.startswith("condition")}


def test_only_the_knowledge_step_gets_a_gpu(spec):
    from components.images import CUDA_IMAGE

    ir, _ = spec
    gpu = {n.removeprefix("exec-") for n, ex in ir["deploymentSpec"]["executors"].items()
           if ex["container"].get("resources", {}).get("accelerator")}
    assert gpu == {"msr-knowledge"}
    assert ir["deploymentSpec"]["executors"]["exec-msr-knowledge"]["container"]["image"] == CUDA_IMAGE


def test_registry_steps_always_run_and_training_is_cached(spec):
    tasks = _tasks(spec[0])
    uncached = {n for n, t in tasks.items() if not t.get("cachingOptions", {}).get("enableCache")}
    assert uncached == {"register-msr-model", "gate-model", "report-msr", "data-rejected"}
    assert tasks["gate-model"]["retryPolicy"]["maxRetryCount"] >= 1


def test_gate_compares_against_the_backbone_evaluation(spec):
    ir, _ = spec
    valid = next(c for n, c in ir["components"].items() if n.startswith("comp-condition")
                 and "gate-model" in c["dag"]["tasks"])
    baseline = valid["dag"]["tasks"]["gate-model"]["inputs"]["artifacts"]["baseline"]
    assert baseline["taskOutputArtifact"]["producerTask"] == "evaluate-msr"
    producers = {t["componentRef"]["name"]: n for n, t in valid["dag"]["tasks"].items()}
    assert "comp-train-msr-backbone" in producers and "comp-msr-knowledge" in producers
    ev = valid["dag"]["tasks"]["evaluate-msr"]["inputs"]["artifacts"]["model"]
    assert ev["taskOutputArtifact"]["producerTask"] == "train-msr-backbone"


def test_cli_compiles_the_msr_pipeline(tmp_path, capsys):
    from hllm.cli import main

    out = tmp_path / "msr.yaml"
    assert main(["pipeline", "compile", "--pipeline", "llm4msr", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text().split("\n---")[0])["pipelineInfo"]["name"] == "llm4msr-training"


@pytest.mark.slow
def test_local_run_validates_trains_registers_and_gates(tmp_path, mlflow_env, ml100k_300):
    from mlflow.tracking import MlflowClient

    from pipelines.local_run import run_local

    name = "llm4msr-pipeline-test"
    ab = tmp_path / "ab.yaml"
    ab.write_text((ROOT / "configs/ab/llm4msr-rollout.yaml").read_text()
                  .replace("model: llm4msr ", f"model: {name} "))
    run = run_local(ml100k_300, pipeline="llm4msr", preset="cpu-tiny", runs_dir=tmp_path / "runs",
                    run_id="msr-1", tracking_uri=mlflow_env, registered_name=name,
                    ab_config=ab, max_history=20)
    s = run.summary
    assert s["status"] == "completed", s
    assert s["pipeline"] == "llm4msr" and s["validation"]["success"]
    assert set(s["steps"]) == set(STEPS)
    models = {m["model"]: m["metrics"] for m in s["models"].values()}
    assert set(models) == {"star", "star+llm4msr"}
    for metrics in models.values():
        assert 0.5 < metrics["auc"] < 1 and all(f"auc/{sc}" in metrics for sc in
                                                 ("family", "action", "thriller", "drama_comedy"))
    # The evaluate step re-scored the saved model: same numbers as training wrote.
    trained = json.loads((run.run_dir / "train_llm4msr" / "metrics.json").read_text())
    assert trained["auc"] == pytest.approx(models["star+llm4msr"]["auc"], abs=1e-6)
    # Training read the knowledge step's vectors back from the Feast views they were
    # pushed to; it did not run the LLM itself.
    assert trained["knowledge"]["source"].endswith("knowledge (feature store)")
    knowledge = json.loads((run.run_dir / "knowledge" / "knowledge.json").read_text())
    assert knowledge["pushed"] == {"scenario_knowledge": 4, "user_knowledge": 300}
    client = MlflowClient(mlflow_env)
    tags = client.get_model_version(name, s["registry"]["version"]).tags
    assert tags["pipeline_run_id"] == "msr-1" and tags["task"] == "ctr"
    assert "user_knowledge@" in tags["feature_views"]
    assert tags["gate.decision"] == s["gate"]["decision"]
    ahead = next(c for c in s["gate"]["checks"] if c["name"] == "ahead of backbone baseline")
    assert ahead["passed"] == (ahead["numbers"]["low"] > 0)  # baseline_margin: interval
    assert ahead["numbers"]["diff"] == pytest.approx(models["star+llm4msr"]["auc"] - models["star"]["auc"],
                                                     abs=1e-6)
    assert "<table>" in (run.run_dir / "report.html").read_text()
