"""Tracking and registry against real servers: `mlflow server` (SQLite) + moto S3 artifacts.

One cpu-tiny HLLM run is trained per module through the CLI with MLFLOW_TRACKING_URI set,
so the train hook itself is what logs it; the tests then register it and load it back
in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MLFLOW_BUCKET, synthetic_rows, write_recbole
from servers import S3_TEST_CREDENTIALS

ROOT = Path(__file__).resolve().parents[1]
PY = str(Path(sys.executable))


def _env(tracking_uri: str, s3: str, cache: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL": s3,
           "MLFLOW_TRACKING_URI": tracking_uri, "HLLM_CACHE": str(cache), **extra}
    env.pop("MLFLOW_RUN_ID", None)
    return env


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, mlflow_server_url, s3_endpoint):
    """A cpu-tiny HLLM run trained by `hllm train` with tracking on (2 epochs)."""
    base = tmp_path_factory.mktemp("tracked")
    inter, items = synthetic_rows()
    data = write_recbole(base / "toy", inter, items)
    out = base / "run"
    env = _env(mlflow_server_url, s3_endpoint, base / "cache", MLFLOW_EXPERIMENT_NAME="hllm-tests")
    result = subprocess.run([PY, "-m", "hllm.cli", "train", "--preset", "cpu-tiny", "--data",
                             str(data), "--out", str(out)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "logged to MLflow" in result.stdout
    return {"run": out, "data": data, "cache": base / "cache"}


def test_train_logs_params_metrics_and_artifacts(tracked_run, mlflow_env):
    from mlflow.tracking import MlflowClient

    run_dir = tracked_run["run"]
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert record["experiment_name"] == "hllm-tests" and record["tracking_uri"] == mlflow_env
    client = MlflowClient(mlflow_env)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["item_llm.pooling"] == "item_token"
    assert params["preset"] == "cpu-tiny" and params["run.model"] == "hllm"
    assert params["train.epochs"] == "2"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_ndcg_at_10"] == metrics["ndcg@10"]
    assert run.data.metrics["best_valid_recall_at_10"] == metrics["valid"]["recall@10"]
    # Per-epoch curves, step = epoch.
    history = client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    epochs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
              if '"train_loss"' in line]
    assert [(m.step, m.value) for m in history] == [(e["epoch"], e["valid_ndcg@10"]) for e in epochs]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(epochs) == 2
    tags = run.data.tags
    assert tags["sys.torch"] and tags["sys.transformers"] and tags["sys.device"] == "cpu"
    assert tags["hllm.split_sha256"] == metrics["split_sha256"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "log.jsonl"} <= names


def test_register_then_reproduce_in_a_fresh_process(tracked_run, mlflow_env, tmp_path, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient

    from hllm import lineage
    from hllm.registry import register

    run_dir = tracked_run["run"]
    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-123")
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"success": True, "checks": [{"success": True}] * 3}))
    name, onnx_name = "hllm-accept", "hllm-accept-item-llm"
    client = MlflowClient(mlflow_env)

    # The first registration goes through the CLI, the second through the function.
    cli = subprocess.run([PY, "-m", "hllm.cli", "register", "--run", str(run_dir), "--name", name,
                          "--onnx-name", onnx_name, "--validation", str(validation)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env=_env(mlflow_env, os.environ["AWS_ENDPOINT_URL"], tracked_run["cache"]))
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"registered {name} version 1 (alias challenger)" in cli.stdout
    champion = client.get_model_version_by_alias(name, "challenger").version
    client.set_registered_model_alias(name, "champion", champion)
    second = register(run_dir, name, onnx_name=onnx_name, validation=validation)
    assert [v.name for v in second.versions] == [name, onnx_name]
    new = second.versions[0].version
    assert new != champion
    assert client.get_model_version_by_alias(name, "challenger").version == new
    assert client.get_model_version_by_alias(name, "champion").version == champion  # untouched
    assert client.get_model_version_by_alias(onnx_name, "challenger").version == \
        second.versions[1].version

    # Lineage tags on both versions.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recorded = json.loads((run_dir / "mlflow.json").read_text())
    for version in second.versions:
        tags = client.get_model_version(version.name, version.version).tags
        assert tags["data_sha256"] == lineage.data_sha256(str(tracked_run["data"]))
        assert tags["split_sha256"] == metrics["split_sha256"]
        assert tags["code_version"] and tags["preset"] == "cpu-tiny"
        assert tags["pipeline_run_id"] == "kfp-run-123"
        assert tags["validation.success"] == "true" and tags["validation.checks"] == "3/3 passed"
        assert tags["mlflow_run_id"] == recorded["run_id"]  # the training run is reused
        assert client.get_model_version(version.name, version.version).run_id == recorded["run_id"]

    # Artifacts really are in the moto bucket, under the server's artifacts destination.
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=MLFLOW_BUCKET, Prefix="mlflow/") for o in page.get("Contents", [])]
    for suffix in ("artifacts/config.yaml", "artifacts/metrics.json", "artifacts/log.jsonl",
                   "item_table.safetensors", "model.safetensors", "MLmodel", "model.onnx",
                   "extra_files/export.json"):
        assert any(k.endswith(suffix) for k in keys), f"no key ending in {suffix}: {keys[:20]}"

    # A fresh process loads models:/NAME@challenger and reproduces the test metrics exactly.
    script = f"""
import json, sys
import mlflow, mlflow.onnx, numpy as np, pandas as pd, yaml
from hllm.config import config_from_dict
from hllm.evaluate import metrics_from_ranks
from hllm.train import load_split
saved = yaml.safe_load(open({str(run_dir / 'config.yaml')!r}))
run = saved.pop('run')
split = load_split(run['dataset'], config_from_dict(saved))
model = mlflow.pyfunc.load_model('models:/{name}@challenger')
users = range(split.num_users)
hist = [[split.item_raw_ids[i] for i in split.history(u, 'test')] for u in users]
out = model.predict(pd.DataFrame({{'history': hist}}),
                    params={{'k': split.num_items, 'exclude_history': False}})
ranks = []
for u, (ids, scores) in enumerate(zip(out['item_ids'], out['scores'])):
    score = dict(zip(ids, scores))
    target = split.item_raw_ids[split.target(u, 'test')]
    seen = {{split.item_raw_ids[i] for i in split.history(u, 'test')}} - {{target}}
    rest = np.array([s for i, s in score.items() if i not in seen])
    t = score[target]
    ranks.append(1 + (rest > t).sum() + ((rest == t).sum() - 1) / 2)
top = model.predict(pd.DataFrame({{'history': [hist[0]], 'k': [5]}}))
onnx_model = mlflow.onnx.load_model('models:/{onnx_name}@challenger')
print(json.dumps({{'split': split.fingerprint(), 'metrics': metrics_from_ranks(np.array(ranks)),
                  'top': top['item_ids'][0], 'top_scores': top['scores'][0], 'hist0': hist[0],
                  'onnx_inputs': [i.name for i in onnx_model.graph.input]}}))
"""
    env = _env(mlflow_env, os.environ["AWS_ENDPOINT_URL"], tracked_run["cache"])
    result = subprocess.run([PY, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["split"] == metrics["split_sha256"]
    for key in ("recall@10", "ndcg@10", "recall@50", "ndcg@50", "recall@200", "ndcg@200", "mrr"):
        assert got["metrics"][key] == metrics[key], key  # exact, not approx
    assert len(got["top"]) == 5 and not set(got["top"]) & set(got["hist0"])
    assert got["top_scores"] == sorted(got["top_scores"], reverse=True)
    assert got["onnx_inputs"] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("damage", ["no_weights", "no_metrics", "no_split_hash", "other_data"])
def test_bad_input_registers_nothing(tracked_run, mlflow_env, tmp_path, monkeypatch, damage):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from hllm.errors import ConfigError, DataError
    from hllm.registry import register

    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    run_dir = tmp_path / "run"
    shutil.copytree(tracked_run["run"], run_dir)
    expected: tuple[type[Exception], str]
    if damage == "no_weights":
        shutil.rmtree(run_dir / "best")
        expected = (ConfigError, "no best/model.safetensors")
    elif damage == "no_metrics":
        (run_dir / "metrics.json").unlink()
        expected = (ConfigError, "no metrics.json")
    elif damage == "no_split_hash":
        metrics = json.loads((run_dir / "metrics.json").read_text())
        del metrics["split_sha256"]
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        expected = (ConfigError, "missing split_sha256")
    else:  # the dataset changed since training: the split no longer matches
        inter, items = synthetic_rows(seed=1)
        other = write_recbole(tmp_path / "other", inter, items)
        text = (run_dir / "config.yaml").read_text().replace(str(tracked_run["data"]), str(other))
        (run_dir / "config.yaml").write_text(text)
        expected = (DataError, "the split differs")
    name = f"hllm-bad-{damage.replace('_', '-')}"
    with pytest.raises(expected[0], match=expected[1]) as info:
        register(run_dir, name, onnx_name=name + "-onnx")
    assert str(run_dir) in str(info.value) or damage == "other_data"
    client = MlflowClient(mlflow_env)
    for model in (name, name + "-onnx"):
        assert client.search_model_versions(f"name='{model}'") == []
        with pytest.raises(MlflowException):
            client.get_registered_model(model)  # not even an empty registered model


def test_failure_part_way_rolls_back(tracked_run, mlflow_env, monkeypatch):
    """The ONNX name is refused after the recommender version exists: that version goes too."""
    from mlflow.tracking import MlflowClient

    from hllm.registry import RegistryError, register

    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    name = "hllm-rollback"
    client = MlflowClient(mlflow_env)
    kept = register(tracked_run["run"], name, onnx=False).versions[0].version
    with pytest.raises(RegistryError, match="rolled back") as info:
        register(tracked_run["run"], name, onnx_name="bad/name%with spaces")
    assert "bad/name%with spaces" in str(info.value)
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == [kept]
    assert client.get_model_version_by_alias(name, "challenger").version == kept
    assert client.search_model_versions("name='bad/name%with spaces'") == []
    # Version kept+1 was created and deleted: the next one is kept+2.
    again = register(tracked_run["run"], name, onnx=False).versions[0].version
    assert int(again) == int(kept) + 2


def test_register_cli_one_line_error(tmp_path, mlflow_env):
    run_dir = tmp_path / "empty-run"
    run_dir.mkdir()
    result = subprocess.run([PY, "-m", "hllm.cli", "register", "--run", str(run_dir)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_env})
    assert result.returncode == 2
    assert "no config.yaml" in result.stderr and str(run_dir) in result.stderr
    assert "Traceback" not in result.stderr


def test_feature_view_versions_are_recorded(tracked_run, mlflow_env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from hllm.features import build_features
    from hllm.lineage import feature_view_versions
    from hllm.registry import register

    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    repo = build_features(str(tracked_run["data"]), tmp_path / "features").repo
    versions = feature_view_versions(repo)
    assert set(versions) == {"item_embedding", "item_text", "user_history",
                             "user_history_training", "scenario_knowledge", "user_knowledge"}
    assert feature_view_versions(repo) == versions  # a hash of the definition, stable
    result = register(tracked_run["run"], "hllm-features", onnx=False, feature_repo=repo,
                      pipeline_run_id="pipe-7")
    tags = MlflowClient(mlflow_env).get_model_version("hllm-features",
                                                      result.versions[0].version).tags
    assert tags["feature_views"] == ",".join(f"{n}@{h}" for n, h in sorted(versions.items()))
    assert tags["pipeline_run_id"] == "pipe-7"


def test_a_failed_registers_undo_never_moves_a_concurrent_registers_alias(mlflow_env):
    """Register A creates the model and moves `challenger`; register B (another process,
    here another client) adds its version and moves `challenger` to it; then A fails and
    undoes: B's version, alias and the model itself stay."""
    import uuid

    from mlflow.tracking import MlflowClient

    from hllm.registry import ALIAS, Rollback

    client, name = MlflowClient(mlflow_env), f"concurrent-{uuid.uuid4().hex[:8]}"
    exp = client.create_experiment(f"concurrent-{uuid.uuid4().hex[:8]}")

    def version_of(client) -> str:
        run = client.create_run(exp)
        return client.create_model_version(name, source=run.info.artifact_uri,
                                           run_id=run.info.run_id).version

    a = Rollback(client, "register A")
    a.ensure_model(name)
    mine = version_of(client)
    a.steps.append(("version", (name, mine)))
    a.set_alias(name, mine)
    theirs = version_of(MlflowClient(mlflow_env))  # register B, concurrently
    MlflowClient(mlflow_env).set_registered_model_alias(name, ALIAS, theirs)
    a.undo()
    assert client.get_model_version_by_alias(name, ALIAS).version == theirs
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [theirs]
    # Alone, a failed register still undoes everything it did.
    alone = Rollback(client, "register C")
    other = f"{name}-alone"
    alone.ensure_model(other)
    assert client.get_registered_model(other)
    alone.undo()
    with pytest.raises(Exception, match="not found|RESOURCE_DOES_NOT_EXIST"):
        client.get_registered_model(other)


def test_server_killed_between_the_version_and_the_alias_leaves_what_the_error_names(
        tracked_run, s3_env, tmp_path, monkeypatch):
    """A real `mlflow server` process is SIGKILLed (its whole process group) the moment the
    new version exists; started again on the same SQLite store, the registry holds exactly
    what the error says could not be taken back, and `challenger` was never set."""
    import signal

    from mlflow.tracking import MlflowClient

    from hllm import registry
    from hllm.services import mlflow_server, mlflow_server_process

    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server needs no retries
    name = "hllm-server-killed"
    store = tmp_path / "store"
    store.mkdir()
    created = registry.Rollback.create_version

    with mlflow_server_process(store, s3_env, "mlflow-killed") as (url, proc):
        def create_then_die(self, *args, **kwargs):
            version = created(self, *args, **kwargs)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return version

        monkeypatch.setattr(registry.Rollback, "create_version", create_then_die)
        with pytest.raises(registry.RegistryError) as info:
            registry.register(tracked_run["run"], name, onnx=False, tracking_uri=url)
    message = str(info.value)
    assert url in message and "could not be fully rolled back" in message
    left = message.split("still in the registry: ")[1].split(". Delete")[0].split("; ")
    assert sorted(left) == sorted([f"model version {name} 1", f"registered model {name}"])

    with mlflow_server(store, s3_env, "mlflow-killed") as again:
        client = MlflowClient(again)
        assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
        assert client.get_registered_model(name).aliases == {}


def test_server_gone_between_the_version_and_the_alias_says_what_is_left(
        tracked_run, mlflow_env, monkeypatch):
    """The tracking server dies after the version exists and before `challenger` moves to
    it (a proxy in front of the real server refuses everything from the alias request on):
    the error names the version it could not take back, and that is exactly what remains."""
    from mlflow.tracking import MlflowClient

    from hllm.registry import RegistryError, register
    from servers import FaultyProxy

    monkeypatch.setenv("HLLM_CACHE", str(tracked_run["cache"]))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server needs no retries
    name = "hllm-server-gone"
    client = MlflowClient(mlflow_env)
    kept = register(tracked_run["run"], name, onnx=False).versions[0].version
    dead = {"since": None}

    def gone(method: str, path: str, n: int) -> bool:
        if dead["since"] is None and method == "POST" and path.endswith("/registered-models/alias"):
            dead["since"] = n
        return dead["since"] is not None

    import mlflow

    with FaultyProxy(mlflow_env, gone) as proxy:
        with pytest.raises(RegistryError) as info:
            register(tracked_run["run"], name, onnx=False, tracking_uri=proxy.url)
    # mlflow's URI is process-wide: register put back the caller's, not the gone proxy's
    assert mlflow.get_tracking_uri() == mlflow_env == os.environ["MLFLOW_TRACKING_URI"]
    message = str(info.value)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [int(kept), int(kept) + 1]  # the new version is still there ...
    assert f"still in the registry: model version {name} {int(kept) + 1}. " in message
    assert "rolled back:" not in message and "alias" not in message.split("still in")[1]
    # ... and challenger never moved to it: the error claims nothing that did not happen
    assert client.get_model_version_by_alias(name, "challenger").version == kept
