"""The promotion gate against a real `mlflow server` (SQLite + S3 artifacts on moto).

Model versions are made the way the registry makes them (a run holding metrics.json and
test_ranks.npy, a version pointing at it) from rank arrays with known differences, so
each refusal reason is exercised on purpose.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from hllm.errors import ConfigError
from hllm.evaluate import metrics_from_ranks
from hllm.gate import gate, rollback
from hllm.segments import save_masks

ROOT = Path(__file__).resolve().parents[1]
USERS, ITEMS = 943, 1682
RNG = np.random.default_rng(0)
BASE = np.minimum(RNG.geometric(0.02, size=USERS), ITEMS).astype(np.float64)  # champion ranks
SPLIT = "a" * 64


def better(ranks):  # most users' targets move well up the list
    return np.maximum(1.0, np.floor(ranks / 4))


def write_ab(tmp_path: Path, model: str, **gate_overrides) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "ab" / "hllm-rollout.yaml").read_text())
    raw["model"] = model
    # The overall-baseline rule by default; tests of the shipped segment rules pass them in.
    raw["gate"].update({"bootstrap_samples": 500, "absolute": {"ndcg@10": 0.01},
                        "beat_baseline": True, "segments": {}}, **gate_overrides)
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def evaluation_dir(tmp_path: Path, ranks: np.ndarray, split: str = SPLIT,
                   segments: dict[str, np.ndarray] | None = None) -> Path:
    d = tmp_path / uuid.uuid4().hex[:8]
    d.mkdir()
    metrics = {**metrics_from_ranks(ranks), "split_sha256": split}
    (d / "metrics.json").write_text(json.dumps(metrics))
    np.save(d / "test_ranks.npy", ranks)
    if segments is not None:
        save_masks(d / "test_segments.npz", segments)
    return d


def add_version(client, tmp_path: Path, model: str, ranks: np.ndarray, split: str = SPLIT,
                segments: dict[str, np.ndarray] | None = None) -> str:
    """A registered version whose source run carries the evaluation, as `hllm register` leaves it."""
    from mlflow.exceptions import MlflowException

    d = evaluation_dir(tmp_path, ranks, split, segments)
    exp = client.get_experiment_by_name("gate-tests") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("gate-tests")
    run = client.create_run(exp_id)
    for f in ("metrics.json", "test_ranks.npy", "test_segments.npz"):
        if (d / f).is_file():
            client.log_artifact(run.info.run_id, str(d / f))
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model)
    version = client.create_model_version(model, source=f"{run.info.artifact_uri}", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "challenger", version.version)
    return version.version


def aliases(client, model: str) -> dict[str, str]:
    return dict(client.get_registered_model(model).aliases)


@pytest.fixture
def registry(mlflow_env, tmp_path):
    from mlflow.tracking import MlflowClient

    model = f"gate-{uuid.uuid4().hex[:8]}"
    return MlflowClient(mlflow_env), model, write_ab(tmp_path, model)


def test_first_model_then_better_challenger_are_promoted_and_rollback_restores(registry, tmp_path):
    client, model, ab = registry
    baseline = evaluation_dir(tmp_path, BASE * 2)  # the ID baseline is well behind
    v1 = add_version(client, tmp_path, model, BASE)
    first = gate(v1, ab, baseline=baseline, out=tmp_path / "g1")
    assert first.promoted and first.champion is None, first.reasons
    assert [(c.name, c.against) for c in first.checks] == [("absolute ndcg@10", "floor"),
                                                           ("ahead of ID baseline", "baseline")]
    assert aliases(client, model) == {"champion": v1, "challenger": v1}

    v2 = add_version(client, tmp_path, model, better(BASE))
    second = gate("challenger", ab, baseline=baseline, out=tmp_path / "g2")
    assert second.promoted, second.reasons
    uplift = second.checks[0]
    assert uplift.name == "uplift ndcg@10" and uplift.numbers["low"] > 0
    assert {c.against for c in second.checks if c.name != "ahead of ID baseline"} == {"champion"}
    assert aliases(client, model) == {"champion": v2, "previous-champion": v1, "challenger": v2}
    # The decision is where registry reviewers look: version tags and a gate run.
    tags = client.get_model_version(model, v2).tags
    assert tags["gate.decision"] == "promoted" and tags["gate.reasons"] == "all checks passed"
    gate_run = client.get_run(tags["gate.run_id"])
    assert gate_run.data.tags["gate.decision"] == "promoted"
    assert gate_run.data.metrics["uplift_ndcg_at_10.low"] == pytest.approx(uplift.numbers["low"])
    plan = (tmp_path / "g2" / "rollout_plan.md").read_text()
    assert f"now points at version {v2}" in plan and "| 3 | 45% | 7" in plan
    assert json.loads((tmp_path / "g2" / "gate.json").read_text())["decision"] == "promoted"

    assert rollback(ab) == (v2, v1)
    assert aliases(client, model) == {"champion": v1, "challenger": v2}
    # A second rollback has nothing to go back to, and moves nothing.
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        rollback(ab)
    assert aliases(client, model) == {"champion": v1, "challenger": v2}
    # Judging the champion itself is refused before anything is logged.
    with pytest.raises(ConfigError, match=f"version {v1} is already the champion"):
        gate(v1, ab, baseline=baseline)


@pytest.mark.parametrize("case, reason", [
    ("worse", "lower end must exceed"),
    ("within noise", "lower end must exceed"),
    ("different split", "different split than the champion"),
    ("behind ID baseline", "must be > 0"),
    ("secondary metric beyond tolerance", "recall@200 diff"),
    ("no baseline given", "no ID baseline evaluation given"),
    ("baseline on another split", "ID baseline was evaluated on a different split"),
])
def test_refused_challengers_move_nothing(registry, tmp_path, case, reason):
    client, model, ab = registry
    v1 = add_version(client, tmp_path, model, BASE)
    client.set_registered_model_alias(model, "champion", v1)
    baseline_ranks, baseline_split = BASE * 2, SPLIT
    if case == "secondary metric beyond tolerance":
        # The top of the list improves (the primary passes); the targets at 60+ fall far.
        ranks = np.where(BASE <= 40, better(BASE), np.where(BASE > 60, BASE * 5, BASE))
    elif case in ("no baseline given", "baseline on another split"):
        ranks, baseline_split = better(BASE), "c" * 64
    elif case == "worse":
        ranks = BASE * 2
    elif case == "within noise":  # a handful of users a little better: no clear uplift
        ranks = BASE.copy()
        ranks[:5] = np.maximum(1, ranks[:5] - 3)
    elif case == "different split":
        ranks = better(BASE)
    else:
        ranks, baseline_ranks = better(BASE), better(better(BASE))
    v2 = add_version(client, tmp_path, model, ranks, split="b" * 64 if case == "different split" else SPLIT)
    before = aliases(client, model)
    baseline = (None if case == "no baseline given"
                else evaluation_dir(tmp_path, baseline_ranks, baseline_split))
    result = gate(v2, ab, baseline=baseline)
    assert result.decision == "refused"
    assert any(reason in r for r in result.reasons), result.reasons
    if case == "secondary metric beyond tolerance":
        assert next(c for c in result.checks if c.name == "uplift ndcg@10").passed
    assert aliases(client, model) == before == {"champion": v1, "challenger": v2}
    assert client.get_model_version(model, v2).tags["gate.decision"] == "refused"


def test_first_model_below_its_floor_is_refused_and_the_cli_exit_code_says_so(
        registry, tmp_path, mlflow_env):
    import os
    import subprocess
    import sys

    client, model, ab = registry
    v1 = add_version(client, tmp_path, model, np.minimum(BASE * 50, ITEMS))  # far down the list
    baseline = evaluation_dir(tmp_path, np.minimum(BASE * 60, ITEMS))

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hllm.cli", "gate", "--challenger", v1,
                               "--ab-config", str(ab), "--baseline", str(baseline), *extra],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_env})

    refused = cli()
    assert refused.returncode == 1, refused.stderr[-1500:]
    assert "FAIL  absolute ndcg@10: first model" in refused.stdout
    assert f"refused: {model} version {v1} (nothing moved)" in refused.stdout
    assert cli("--refusal-ok").returncode == 0
    assert aliases(client, model) == {"challenger": v1}


def test_two_gates_at_once_act_one_after_the_other(registry, tmp_path):
    """Two equally good challengers gated at the same moment: the first promoted is the
    champion the second is judged against, so exactly one moves it, and the aliases and
    every version's tags tell the same story."""
    import threading

    client, model, ab = registry
    baseline = evaluation_dir(tmp_path, BASE * 2)
    v1 = add_version(client, tmp_path, model, BASE)
    client.set_registered_model_alias(model, "champion", v1)
    v2 = add_version(client, tmp_path, model, better(BASE))
    v3 = add_version(client, tmp_path, model, better(BASE))
    results, errors = {}, []

    def run(version: str) -> None:
        try:
            results[version] = gate(version, ab, baseline=baseline)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    promoted = [v for v, r in results.items() if r.promoted]
    assert len(promoted) == 1, {v: r.reasons for v, r in results.items()}
    winner, loser = promoted[0], ({v2, v3} - set(promoted)).pop()
    assert results[loser].champion == winner  # judged against the new champion
    assert aliases(client, model) == {"champion": winner, "previous-champion": v1,
                                      "challenger": v3}
    tags = {v: client.get_model_version(model, v).tags["gate.decision"] for v in (v2, v3)}
    assert tags == {winner: "promoted", loser: "refused"}
    assert "gate.lock" not in client.get_registered_model(model).tags  # released


def test_a_pinned_version_that_does_not_exist_is_named(registry, tmp_path):
    client, model, ab = registry
    v1 = add_version(client, tmp_path, model, BASE)
    raw = yaml.safe_load(ab.read_text())
    raw["treatment"] = {"version": 99}
    ab.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"treatment.version: model '{model}' has no version 99"):
        gate(v1, ab)
    assert aliases(client, model) == {"challenger": v1}


def test_rollback_without_a_previous_champion_is_refused(registry):
    client, model, ab = registry
    # Before any registration: the real cause, not "no alias".
    with pytest.raises(ConfigError, match=f"no registered model '{model}' in the MLflow registry"):
        rollback(ab)
    client.create_registered_model(model)
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        rollback(ab)


COLD = np.arange(USERS) < 120  # the first 120 users' targets are cold items
MASKS = {"warm": ~COLD, "long_tail": COLD | (np.arange(USERS) % 3 == 0), "cold": COLD}
SHIPPED_SEGMENT_RULES = yaml.safe_load(
    (ROOT / "configs" / "ab" / "hllm-rollout.yaml").read_text())["gate"]["segments"]


@pytest.mark.parametrize("case", ["wins cold, level elsewhere", "loses on warm", "no segments"])
def test_shipped_segment_rules_against_the_id_baseline(mlflow_env, tmp_path, case):
    """configs/ab/hllm-rollout.yaml's business rule: win on cold, do not lose overall or warm."""
    from mlflow.tracking import MlflowClient

    assert set(SHIPPED_SEGMENT_RULES) == {"cold", "overall", "warm"}
    client, model = MlflowClient(mlflow_env), f"seg-{uuid.uuid4().hex[:8]}"
    ab = write_ab(tmp_path, model, beat_baseline=False, segments=SHIPPED_SEGMENT_RULES)
    ranks = np.where(COLD, better(BASE), BASE)  # far ahead of the baseline on cold targets
    if case == "loses on warm":
        ranks = np.where(COLD, ranks, BASE * 3)
    segments = None if case == "no segments" else MASKS
    version = add_version(client, tmp_path, model, ranks, segments=segments)
    result = gate(version, ab, baseline=evaluation_dir(tmp_path, BASE, segments=MASKS))
    by_name = {c.name: c for c in result.checks}
    if case == "wins cold, level elsewhere":
        assert result.promoted, result.reasons
        cold = by_name["segment cold vs ID baseline"]
        assert cold.numbers["users"] == 120 and cold.numbers["low"] > 0
        assert by_name["segment warm vs ID baseline"].numbers["diff"] == 0
    elif case == "loses on warm":
        assert result.decision == "refused"
        assert [r.split(" (")[0] for r in result.reasons] == ["segment overall", "segment warm"]
        assert "segment warm (823 users): ndcg@10" in result.reasons[1]
        assert "diff must be >= -0.0050" in result.reasons[1]
    else:
        assert result.decision == "refused"
        assert any("segment cold" in r and "test_segments.npz" in r for r in result.reasons)
    assert aliases(client, model).get("champion") == (version if result.promoted else None)


# ---------------------------------------------------------------- promotion after an experiment

def pin_treatment(ab: Path, version: str, **edits) -> None:
    """What an operator does before the experiment starts: treatment: {version: N}."""
    raw = yaml.safe_load(ab.read_text())
    raw.update(treatment={"version": int(version)}, **edits)
    ab.write_text(yaml.safe_dump(raw))


def log_a_readout(ab: Path, control: str, treatment: str, last_stage: bool = True) -> None:
    """What `hllm ab readout` logs to MLflow after the last ramp stage (else after stage 2),
    from a log of users routed by the real assignment, the treatment clicking more."""
    from test_ab_readout import traffic

    from hllm.experiment import load_ab_config
    from hllm.online.readout import log_readout, readout

    cfg = load_ab_config(ab)
    records = traffic(cfg, ramp=None if last_stage else 10, days=8 if last_stage else 3,
                      ctr={"control": 0.10, "treatment": 0.12}, versions=(control, treatment))
    result = readout(cfg, records)
    assert result.ends_experiment == last_stage, (result.decision, result.reasons)
    log_readout(result, "<html></html>", os.environ["MLFLOW_TRACKING_URI"])


def ab_promote(ab: Path, capsys, monkeypatch, *extra: str) -> tuple[int, str, list[str]]:
    """`hllm ab promote` in this process: exit code, stdout, stderr lines."""
    from hllm.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it; keep it this test's
    capsys.readouterr()  # drop what the setup printed (MLflow's run links)
    code = main(["ab", "promote", "--ab-config", str(ab), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_after_experiment_the_gate_approves_and_ab_promote_moves_champion(
        registry, tmp_path, capsys, monkeypatch):
    """gate.promote: after_experiment. The first model is still promoted (no control to
    experiment against); a better challenger is only approved, so @champion, the control
    arm, keeps serving the old version; after the experiment `hllm ab promote` moves it to
    the pinned treatment, although a registration during the experiment moved @challenger."""
    from hllm.report_html import verdict

    client, model, _ = registry
    ab = write_ab(tmp_path, model, promote="after_experiment")
    baseline = evaluation_dir(tmp_path, BASE * 2)
    v1 = add_version(client, tmp_path, model, BASE)
    first = gate(v1, ab, baseline=baseline)
    assert first.promoted and "no champion yet" in first.next_step, first.reasons
    assert aliases(client, model) == {"champion": v1, "challenger": v1}

    v2 = add_version(client, tmp_path, model, better(BASE))
    second = gate("challenger", ab, baseline=baseline, out=tmp_path / "g2")
    assert second.decision == "approved" and second.passed and not second.promoted, second.reasons
    assert aliases(client, model) == {"champion": v1, "challenger": v2}
    tags = client.get_model_version(model, v2).tags
    assert (tags["gate.decision"], tags["gate.approved"]) == ("approved", "true")
    assert (tags["gate.experiment"], tags["gate.approved_against"]) == ("hllm-rollout", v1)
    plan = (tmp_path / "g2" / "rollout_plan.md").read_text()
    assert f"stays at version {v1}" in plan and f"`hllm ab promote --ab-config {ab}`" in plan
    assert f"pin it to `treatment: {{version: {v2}}}`" in plan  # the config's treatment is an alias
    assert "<b>APPROVED</b>" in verdict(second.to_dict(), "succeeded")

    pin_treatment(ab, v2)
    v3 = add_version(client, tmp_path, model, BASE * 2)  # registered mid-experiment: @challenger
    log_a_readout(ab, control=v1, treatment=v2)  # the last stage's readout: end it
    code, out, err = ab_promote(ab, capsys, monkeypatch)
    assert code == 0, err
    assert f"{model} version {v1} -> version {v2}, the treatment of hllm-rollout" in out
    assert aliases(client, model) == {"champion": v2, "previous-champion": v1, "challenger": v3}
    assert client.get_model_version(model, v2).tags["gate.promoted_after_experiment"].startswith(
        "hllm-rollout at ")
    assert "gate.lock" not in client.get_registered_model(model).tags  # released
    assert rollback(ab) == (v2, v1)  # previous-champion was set for exactly this


@pytest.mark.parametrize("case, words", [
    ("never gated", "was never gated; only a version the gate approved is promoted: run "
                    "`hllm gate --challenger"),
    ("refused by the gate", "the gate refused it (its gate.reasons tag says why)"),
    ("already champion", "is already the champion; nothing to promote"),
    ("approved for another experiment", "was approved for experiment 'hllm-rollout', not "
                                        "'hllm-rollout-2'"),
    ("champion replaced since the approval", "was approved against champion version"),
    ("no readout", "no readout of experiment 'hllm-rollout' in MLflow (experiment "
                   "'ab-readouts'): run `hllm ab readout --ab-config"),
    ("no readout", " --exposure-log LOG` with the tracking URI set, or pass --without-readout"),
    ("readout before the last stage", ", not to end the experiment (next step: "),
    ("readout of another version", "measured treatment version(s) 99, not version"),
])
def test_ab_promote_refuses_in_one_line_and_moves_nothing(
        registry, tmp_path, capsys, monkeypatch, case, words):
    client, model, _ = registry
    ab = write_ab(tmp_path, model, promote="after_experiment")
    v1 = add_version(client, tmp_path, model, BASE)
    client.set_registered_model_alias(model, "champion", v1)
    v2 = add_version(client, tmp_path, model, BASE * 2 if case == "refused by the gate" else better(BASE))
    if case not in ("never gated", "already champion"):
        decision = gate(v2, ab, baseline=evaluation_dir(tmp_path, BASE * 2))
        assert decision.decision == ("refused" if case == "refused by the gate" else "approved")
    if case == "champion replaced since the approval":
        client.set_registered_model_alias(model, "champion", add_version(client, tmp_path, model, BASE))
    pin_treatment(ab, v1 if case == "already champion" else v2,
                  **({"name": "hllm-rollout-2"} if case == "approved for another experiment" else {}))
    if case == "readout before the last stage":
        log_a_readout(ab, control=v1, treatment=v2, last_stage=False)
    elif case == "readout of another version":
        log_a_readout(ab, control=v1, treatment="99")
    elif case != "no readout":  # a readout that would let it through: the refusal is the gate's
        log_a_readout(ab, control=v1, treatment=v2)
    before = aliases(client, model)
    code, out, err = ab_promote(ab, capsys, monkeypatch)
    assert code == 2 and out == "" and len(err) == 1, (code, out, err)
    assert err[0].startswith("error: ") and words in err[0], err
    assert aliases(client, model) == before
    assert "gate.lock" not in client.get_registered_model(model).tags


def test_a_tag_write_lost_to_a_simultaneous_gate_waits_for_the_lock():
    """The tracking server refuses the second of two simultaneous tag creations with a
    unique-key error (seen once under a full suite run; not reproducible on demand with
    the real server): that gate has lost the race and waits, it does not fail."""
    import threading
    import time

    from mlflow.exceptions import MlflowException

    from hllm.gate import LOCK_TAG, registry_lock

    class Registry:
        def __init__(self):
            self.tags, self.writes = {}, 0

        def get_registered_model(self, name):
            return type("Model", (), {"tags": dict(self.tags)})()

        def set_registered_model_tag(self, name, key, value):
            self.writes += 1
            if self.writes == 1:  # the other gate's insert landed first
                self.tags[key] = f"other:1:abc@{time.time():.3f}"
                raise MlflowException("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE "
                                      "constraint failed: registered_model_tags.key")
            self.tags[key] = value

        def delete_registered_model_tag(self, name, key):
            self.tags.pop(key, None)

    registry = Registry()
    released = {"done": False}

    def other_gate_finishes():
        time.sleep(0.8)
        registry.tags.pop(LOCK_TAG, None)
        released["done"] = True

    threading.Thread(target=other_gate_finishes).start()
    with registry_lock(registry, "m", wait_s=10, settle_s=0.05):
        assert released["done"]  # it waited for the other gate, then took the lock
        assert registry.tags[LOCK_TAG].rsplit("@", 1)[0] != "other:1:abc"
    assert LOCK_TAG not in registry.tags
    # Any other registry error still fails the gate.
    def refuse(*args):
        raise MlflowException("PERMISSION_DENIED: no")

    registry.set_registered_model_tag = refuse
    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        with registry_lock(registry, "m", wait_s=1, settle_s=0.01):
            pass


def test_ab_promote_without_readout_promotes_and_says_so(registry, tmp_path, capsys, monkeypatch):
    """An experiment read out outside MLflow: the operator vouches, the version's tag records it."""
    client, model, _ = registry
    ab = write_ab(tmp_path, model, promote="after_experiment")
    baseline = evaluation_dir(tmp_path, BASE * 2)
    v1 = add_version(client, tmp_path, model, BASE)
    assert gate(v1, ab, baseline=baseline).promoted
    v2 = add_version(client, tmp_path, model, better(BASE))
    assert gate(v2, ab, baseline=baseline).decision == "approved"
    pin_treatment(ab, v2)
    code, out, err = ab_promote(ab, capsys, monkeypatch, "--without-readout")
    assert code == 0, err
    assert aliases(client, model)["champion"] == v2
    assert client.get_model_version(model, v2).tags["gate.promoted_after_experiment"].endswith(
        "(without a readout)")
