"""A third kind of model goes through the platform by registering one Task.

The toy task recommends the N most popular items to everyone and is judged by hit rate
per user. It is registered in this process only (hllm.tasks.register_task) and then
trained, evaluated, registered and gated through the shared hllm.registry and hllm.gate,
which know nothing about it: the point of the Task interface.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import yaml

from hllm.errors import ConfigError
from hllm.gate_rules import Evidence, TaskRules, read_metrics
from hllm.tasks import ModelToRegister, RegistrationPlan, Task, get_task, register_task, \
    task_names, unregister_task

ROOT = Path(__file__).resolve().parents[1]
HITS = "test_hits.npy"


# ---------------------------------------------------------------- the toy task

def toy_data(seed: int = 0, users: int = 400, items: int = 50) -> dict[str, np.ndarray]:
    """Zipf-like item choices: a train interaction and a test item per user."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    weights /= weights.sum()
    return {"train": rng.choice(items, size=(users, 5), p=weights),
            "test": rng.choice(items, size=users, p=weights)}


def toy_train(data: dict[str, np.ndarray], out: Path, top_n: int) -> Path:
    out.mkdir(parents=True)
    counts = np.bincount(data["train"].ravel())
    top = [int(i) for i in np.argsort(-counts, kind="stable")[:top_n]]
    (out / "model.json").write_text(json.dumps({"top": top}))
    return out


def toy_evaluate(run_dir: Path, data: dict[str, np.ndarray]) -> dict[str, float]:
    top = json.loads((run_dir / "model.json").read_text())["top"]
    hits = np.isin(data["test"], top).astype(np.float64)
    np.save(run_dir / HITS, hits)
    metrics = {"hit_rate": float(hits.mean()),
               "split_sha256": hashlib.sha256(data["test"].tobytes()).hexdigest()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def read_evidence(directory: Path, label: str) -> Evidence:
    metrics = read_metrics(directory, HITS, "per-user test_hits.npy (toy_evaluate)")
    return Evidence(label, metrics, ranks=np.load(directory / HITS))


def rules(cfg) -> TaskRules:
    def bootstrap(a: Evidence, b: Evidence) -> dict[str, float]:
        diff = a.ranks - b.ranks
        rng = np.random.default_rng(cfg.gate.seed)
        means = diff[rng.integers(0, len(diff), (cfg.gate.bootstrap_samples, len(diff)))].mean(1)
        tail = (1 - cfg.gate.confidence) / 2
        return {"diff": float(diff.mean()), "low": float(np.quantile(means, tail)),
                "high": float(np.quantile(means, 1 - tail))}

    return TaskRules("most-popular baseline", bootstrap, lambda a, b: [])


class TopItems(mlflow.pyfunc.PythonModel):
    """The served model: the same top-N list for every request."""

    def load_context(self, context):
        self.top = json.loads(Path(context.artifacts["model"]).read_text())["top"]

    def predict(self, context, model_input, params=None):
        return [self.top] * len(model_input)


def plan_registration(run_dir: Path, workdir: Path, *, name: str) -> RegistrationPlan:
    if not (run_dir / "metrics.json").is_file():
        raise ConfigError(f"{run_dir}: not evaluated (no metrics.json)")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def log(client, uri: str, experiment: str | None):
        import mlflow

        exp = client.get_experiment_by_name("toy-task")
        exp_id = exp.experiment_id if exp else client.create_experiment("toy-task")
        with mlflow.start_run(experiment_id=exp_id) as run:
            for artifact in ("metrics.json", HITS):
                mlflow.log_artifact(str(run_dir / artifact))
            info = mlflow.pyfunc.log_model(name="toy", python_model=TopItems(),
                                           artifacts={"model": str(run_dir / "model.json")})
        return run.info.run_id, [ModelToRegister(name, info, f"top items, hit rate "
                                                             f"{metrics['hit_rate']:.3f}")]

    return RegistrationPlan(tags={"task": "toy", "split_sha256": metrics["split_sha256"]},
                            log=log)


TOY = Task(name="toy", default_model="toy-recs", evidence=HITS, evidence_writer="toy_evaluate",
           read_evidence=read_evidence, gate_rules=rules, plan_registration=plan_registration)


@pytest.fixture
def toy_task():
    register_task(TOY)
    yield TOY
    unregister_task(TOY.name)


def toy_ab_config(tmp_path: Path, model: str) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "ab" / "llm4msr-rollout.yaml").read_text())
    raw["model"] = model
    raw["gate"] = {"task": "toy", "primary_metric": "hit_rate", "min_uplift": {"hit_rate": 0.0},
                   "absolute": {"hit_rate": 0.2}, "beat_baseline": False,
                   "bootstrap_samples": 300}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------- tests

def test_a_registered_task_goes_through_train_evaluate_register_and_gate(
        toy_task, tmp_path, mlflow_env):
    import mlflow
    from mlflow.tracking import MlflowClient

    from hllm.gate import gate
    from hllm.registry import register

    data = toy_data()
    runs = {}
    for label, top_n in (("narrow", 3), ("wide", 15)):
        runs[label] = toy_train(data, tmp_path / label, top_n)
        toy_evaluate(runs[label], data)
    name = "toy-recs"
    ab = toy_ab_config(tmp_path, name)
    client = MlflowClient(mlflow_env)

    first = register(runs["narrow"], name, task="toy").versions[0].version
    assert client.get_model_version_by_alias(name, "challenger").version == first
    assert gate("challenger", ab).decision == "promoted"  # first model: over its floor

    second = register(runs["wide"], name, task="toy").versions[0].version
    decision = gate("challenger", ab)
    assert decision.decision == "promoted", decision.reasons  # a far higher hit rate
    assert decision.checks[0].numbers["low"] > 0
    assert client.get_model_version_by_alias(name, "champion").version == second
    assert client.get_model_version_by_alias(name, "previous-champion").version == first

    register(runs["narrow"], name, task="toy")  # the weak one again: refused, numbers named
    refused = gate("challenger", ab)
    assert refused.decision == "refused"
    assert any(r.startswith("hit_rate ") and "lower end must exceed" in r for r in refused.reasons)
    assert client.get_model_version_by_alias(name, "champion").version == second

    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert served.predict([{"user": 1}]) == [json.loads((runs["wide"] / "model.json").read_text())["top"]]


def test_an_unknown_task_is_named_with_the_known_ones(toy_task):
    with pytest.raises(ConfigError, match=r"unknown task 'tox': one of ranking, ctr, toy"):
        get_task("tox")
    assert task_names() == ["ranking", "ctr", "toy"]
    assert get_task("toy") is TOY


def test_an_ab_config_may_name_a_registered_task_and_only_then(toy_task, tmp_path):
    from hllm.experiment import load_ab_config

    path = toy_ab_config(tmp_path, "toy-recs")
    assert load_ab_config(path).gate.task == "toy"
    unregister_task("toy")
    with pytest.raises(ConfigError, match="gate.task: one of ranking, ctr, got 'toy'"):
        load_ab_config(path)


@pytest.mark.fast
def test_the_shared_modules_never_branch_on_a_task():
    """Gate, registry, the CLI and the pipelines look tasks up; only a task's own module
    says what it is."""
    branch = re.compile(r"""\btask\s*(==|!=|\bin\b|\bnot in\b)\s*["'(\[]""")
    offenders = []
    for root in ("hllm", "pipelines", "components"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if branch.search(line) and not line.lstrip().startswith("for "):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_each_shipped_task_names_the_endpoint_hllm_serve_runs():
    from hllm.online.endpoints import RecommendEndpoint, ScoreEndpoint

    assert get_task("ranking").serving_endpoint() is RecommendEndpoint
    assert get_task("ctr").serving_endpoint() is ScoreEndpoint
    assert RecommendEndpoint.needs_history and not ScoreEndpoint.needs_history


def test_serving_a_task_without_an_endpoint_is_one_line(toy_task, tmp_path, mlflow_env):
    from hllm.online.server import serve

    ab = toy_ab_config(tmp_path, "toy-recs")
    with pytest.raises(ConfigError, match=rf"^{ab}: gate.task: task 'toy' has no serving endpoint$"):
        serve(ab, str(tmp_path / "exposures"))
    assert not (tmp_path / "exposures").exists()


@pytest.mark.fast
def test_validating_an_ab_config_does_not_import_torch():
    """`hllm ab validate` loads the task the config names (gate.segments needs it): the
    task's module stays light, its statistics are imported when the gate judges."""
    import subprocess
    import sys

    script = ("import sys; from hllm.experiment import load_ab_config; "
              "load_ab_config('configs/ab/hllm-rollout.yaml'); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=True)
    assert result.stdout.strip() == "False"
