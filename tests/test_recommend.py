"""`hllm recommend` end to end: a registered, gated model served by A/B arm from Feast history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import synthetic_rows, write_recbole
from servers import S3_TEST_CREDENTIALS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, mlflow_server_url, s3_endpoint):
    """A cpu-tiny HLLM: v1 promoted to champion by the gate, v2 registered as challenger."""
    base = tmp_path_factory.mktemp("served")
    data = write_recbole(base / "toy", *synthetic_rows())
    env = {**os.environ, **S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_TRACKING_URI": mlflow_server_url, "HLLM_CACHE": str(base / "cache")}
    model = "recommend-tests"
    ab = base / "ab.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "ab" / "hllm-rollout.yaml").read_text())
    raw["model"] = model
    # No ID baseline here: neither the overall nor the per-segment comparison with it.
    raw["gate"].update(absolute={"ndcg@10": 0.0}, beat_baseline=False, segments={},
                       bootstrap_samples=200)
    ab.write_text(yaml.safe_dump(raw))

    def hllm(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                                text=True, cwd=ROOT, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        return result

    run = base / "run"
    hllm("train", "--preset", "cpu-tiny", "--data", str(data), "--out", str(run),
         "--set", "train.epochs=1")
    hllm("register", "--run", str(run), "--name", model, "--no-onnx")
    gated = hllm("gate", "--challenger", "challenger", "--ab-config", str(ab))
    assert "promoted" in gated.stdout
    # The challenger is another model (another seed): each arm's answer can be told apart.
    run2 = base / "run2"
    hllm("train", "--preset", "cpu-tiny", "--data", str(data), "--out", str(run2),
         "--set", "train.epochs=1", "--set", "train.seed=7")
    hllm("register", "--run", str(run2), "--name", model, "--no-onnx")
    hllm("features", "build", "--data", str(data), "--run", str(base / "features"))
    return {"data": data, "ab": ab, "env": env, "features": base / "features", "hllm": hllm,
            "model": model, "uri": mlflow_server_url}


FRESH_PROCESS = """
import json, sys
from hllm.serving import load_model, top_k
name, requests = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps({user: top_k(load_model(f"models:/{name}/{version}"), history, 5)
                  for user, (version, history) in requests.items()}))
"""


def test_users_are_routed_by_arm_and_ranked_from_online_history(served, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", *S3_TEST_CREDENTIALS):
        monkeypatch.setenv(key, served["env"][key])
    from hllm.serving import DatasetHistory, recommend

    from_data = DatasetHistory(str(served["data"]))
    answers, requests = {}, {}
    for user in [str(u) for u in range(1, 21)]:
        rec = recommend(user, served["ab"], k=5, feature_repo=served["features"])
        arm = rec.assignment.serve
        expected_uri = f"models:/{served['model']}@" + ("challenger" if arm == "treatment"
                                                         else "champion")
        assert rec.model_uri == expected_uri
        assert rec.history == from_data(user)[-50:]  # the online store holds the latest history
        assert len(rec.item_ids) == 5 and not set(rec.item_ids) & set(rec.history)
        assert rec.scores == sorted(rec.scores, reverse=True)
        if rec.assignment.arm == "holdout":
            assert arm == "control"  # held-out users see the champion
        answers[user] = (rec.item_ids, rec.scores)
        requests[user] = ("2" if arm == "treatment" else "1", rec.history)
    assert {v for v, _ in requests.values()} == {"1", "2"}
    # Each arm answers as its own registered version does, loaded by a fresh process.
    fresh = subprocess.run([sys.executable, "-c", FRESH_PROCESS, served["model"],
                            json.dumps(requests)], capture_output=True, text=True,
                           env=served["env"], timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    for user, (items, scores) in json.loads(fresh.stdout.splitlines()[-1]).items():
        assert answers[user][0] == items and answers[user][1] == pytest.approx(scores, abs=1e-5)
    # ... and the two versions answer differently, so the comparison above can fail.
    from hllm.serving import load_model, top_k

    some = next(iter(requests.values()))[1]
    v1 = top_k(load_model(f"models:/{served['model']}/1"), some, 5)
    v2 = top_k(load_model(f"models:/{served['model']}/2"), some, 5)
    assert v1 != v2


def test_ramp_zero_serves_everyone_the_champion(served, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", *S3_TEST_CREDENTIALS):
        monkeypatch.setenv(key, served["env"][key])
    from hllm.serving import recommend

    served_arms = {recommend(str(u), served["ab"], k=3, data=str(served["data"]),
                             ramp_percent=0).model_uri for u in range(1, 41)}
    assert served_arms == {f"models:/{served['model']}@champion"}


def test_cli_prints_json_and_names_unknown_users(served):
    out = served["hllm"]("recommend", "--user", "3", "--ab-config", str(served["ab"]),
                         "--data", str(served["data"]), "-k", "3")
    answer = json.loads(out.stdout)
    assert answer["user"] == "3" and len(answer["items"]) == 3
    assert answer["arm"] in ("control", "treatment", "holdout")
    bad = subprocess.run([sys.executable, "-m", "hllm.cli", "recommend", "--user", "nobody",
                          "--ab-config", str(served["ab"]), "--data", str(served["data"])],
                         capture_output=True, text=True, cwd=ROOT, env=served["env"], timeout=300)
    assert bad.returncode == 2 and "user 'nobody' has no history" in bad.stderr
