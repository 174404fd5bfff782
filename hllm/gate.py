"""The promotion gate: a challenger becomes `champion` only if it measurably beat it offline.

    hllm gate --challenger 3 --ab-config configs/ab/hllm-rollout.yaml --baseline runs/x/sasrec
    hllm rollback --ab-config configs/ab/hllm-rollout.yaml

Evidence is read from the registry itself: each model version's source run holds the
`metrics.json` and the per-unit file of its evaluation (per-user `test_ranks.npy` for
ranking, per-row `test_predictions.npz` for CTR: the A/B config's `gate.task` names the
task, hllm.tasks says how it is read and judged). With a champion, the challenger must
have been evaluated on the same split (same split_sha256), its uplift on the primary
metric must clear the configured bar at the lower end of a paired bootstrap interval
(over users, or rows), and the task's other checks must pass (for ranking: no other
metric below its bar, default -tolerance). The first model ever is held to absolute
floors instead. With `beat_baseline`, it must also be ahead of the baseline (SASRec, or
the CTR backbone alone) on the primary metric, on the same split.

On pass, `previous-champion` is pointed at the old champion and `champion` at the
challenger (undone if the second write fails), and the rollout plan is logged beside
the version. With `gate.promote: after_experiment` a pass only approves the challenger
(`gate.approved=true` on the version): the experiment's control arm is `@champion`, so
moving it before the experiment would serve one model in both arms; `hllm ab promote`
(hllm.promotion) moves it after the last stage. A first model, with nothing to
experiment against, is promoted either way. On fail nothing moves. Either way the
decision (inputs, numbers, outcome) is logged as an MLflow run in the `hllm-gate`
experiment and as tags on the version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from hllm import tracking
from hllm.errors import BusyError, ConfigError, HLLMError
from hllm.experiment import ALIASES, ABConfig, load_ab_config
from hllm.gate_rules import Check, Evidence
from hllm.tasks import get_task

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = ALIASES
GATE_EXPERIMENT = "hllm-gate"
# Version tags `hllm ab promote` trusts: the gate passed this version ("true"/"false",
# rewritten by every gate), for which experiment, and against which champion.
APPROVED_TAG = "gate.approved"
EXPERIMENT_TAG = "gate.experiment"
APPROVED_AGAINST_TAG = "gate.approved_against"


@dataclass
class GateDecision:
    decision: str  # promoted | approved (passed; promotion waits for the experiment) | refused
    model: str
    challenger: str
    champion: str | None
    reasons: list[str]
    checks: list[Check]
    experiment: str
    decided_at: str
    gate_run_id: str = ""
    next_step: str = ""  # what the operator does now, in words

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    @property
    def passed(self) -> bool:
        """Every check passed, whether champion moved now or waits for the experiment."""
        return self.decision in ("promoted", "approved")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": [asdict(c) for c in self.checks]}


# ---------------------------------------------------------------- evidence

def evidence_from_dir(path: str | Path, label: str | None = None, task: str = "ranking") -> Evidence:
    """A run directory (or a directory holding metrics.json and the task's evidence files)."""
    return get_task(task).read_evidence(Path(path), label or str(path))


def evidence_from_version(client, name: str, version: str, task: str = "ranking") -> Evidence:
    """The evaluation logged with a version's source run, read as its task reads it."""
    kind = get_task(task)
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise ConfigError(f"model {name} version {version} has no source run; register it with "
                          "`hllm register` so its evaluation travels with it")
    with tempfile.TemporaryDirectory(prefix="hllm-gate-") as tmp:
        try:
            for artifact in ("metrics.json", kind.evidence):
                client.download_artifacts(run_id, artifact, tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds here
            raise ConfigError(f"model {name} version {version} (run {run_id}): cannot read its "
                              f"metrics.json/{kind.evidence} artifacts: {exc}") from exc
        for artifact in kind.optional_evidence:
            try:  # versions registered before the file existed lack it; the rules say so
                client.download_artifacts(run_id, artifact, tmp)
            except Exception:  # noqa: BLE001
                log.info("%s v%s: no %s", name, version, artifact)
        return kind.read_evidence(Path(tmp), f"{name} v{version}")


def resolve_version(client, name: str, ref: str) -> str | None:
    """'7', 'v7' or an alias -> the version number; None when an alias is not set.

    Only MLflow's "not found" means unset: an outage or a refused request is raised as
    such, so an operator is never told "no alias" while the registry is down.
    """
    ref = str(ref).removeprefix("v") if str(ref).removeprefix("v").isdigit() else str(ref)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref).version
        return client.get_model_version_by_alias(name, ref).version
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds; sorted below
        uri = getattr(client, "tracking_uri", "?")
        if not tracking.is_not_found(exc):
            raise tracking.registry_error(exc, uri, f"reading {name}@{ref}") from exc
        if "Registered Model with name" in str(getattr(exc, "message", exc)):
            raise ConfigError(f"no registered model {name!r} in the MLflow registry at {uri}; "
                              "register one with `hllm register`") from None
        if ref.isdigit():
            raise ConfigError(f"model {name!r} has no version {ref} in the registry") from None
        return None


def check_models(cfg: ABConfig, client) -> None:
    """Pinned versions in the A/B config must exist (aliases may still be unset)."""
    for arm in ("control", "treatment"):
        ref = cfg.arm_ref(arm)
        if ref.version is not None:
            try:
                resolve_version(client, cfg.model, str(ref.version))
            except ConfigError as exc:
                raise ConfigError(f"{cfg.source}: {arm}.version: {exc}") from None


# ---------------------------------------------------------------- the decision

def decide(cfg: ABConfig, challenger: Evidence, champion: Evidence | None,
           baseline: Evidence | None) -> list[Check]:
    """Every check the gate applies, in order; pure (no registry access)."""
    rules = get_task(cfg.gate.task).gate_rules(cfg)
    g = cfg.gate
    primary = g.primary_metric
    checks: list[Check] = []

    def against(who: str, start: int) -> None:
        for check in checks[start:]:
            check.against = who

    if champion is None:
        for metric, floor in g.absolute.items():
            value = float(challenger.metrics.get(metric, math.nan))
            checks.append(Check(f"absolute {metric}", value >= floor,
                                f"first model: {metric} {value:.4f} vs floor {floor:.4f}",
                                {"value": value, "floor": floor}))
        against("floor", 0)
    elif challenger.split != champion.split:
        checks.append(Check("same split", False,
                            f"evaluated on a different split than the champion "
                            f"({challenger.split[:12]} vs {champion.split[:12]}); re-evaluate both "
                            "on one split"))
        against("champion", 0)
    else:
        bar = g.min_uplift[primary]
        ci = rules.bootstrap(challenger, champion)
        checks.append(Check(
            f"uplift {primary}", ci["low"] > bar,
            f"{primary} {challenger.metrics[primary]:.4f} vs champion {champion.metrics[primary]:.4f}: "
            f"diff {ci['diff']:+.4f}, {g.confidence:.0%} CI {ci['low']:+.4f}..{ci['high']:+.4f}, "
            f"lower end must exceed {bar:+.4f}", {**ci, "bar": bar}))
        checks += rules.vs_champion(challenger, champion)
        against("champion", 0)
    start = len(checks)
    if g.beat_baseline or g.segments:
        name = f"ahead of {rules.baseline}" if g.beat_baseline else f"vs {rules.baseline}"
        if baseline is None:
            checks.append(Check(name, False, f"no {rules.baseline} evaluation given (--baseline); "
                                             "the gate requires one"))
        elif baseline.split != challenger.split:
            checks.append(Check(name, False, f"the {rules.baseline} was evaluated on a different split "
                                             f"({baseline.split[:12]} vs {challenger.split[:12]})"))
        else:
            if g.beat_baseline:
                ci = rules.bootstrap(challenger, baseline)
                ahead, rule = baseline_rule(g.baseline_margin, ci)
                checks.append(Check(
                    name, ahead,
                    f"{primary} {challenger.metrics[primary]:.4f} vs {rules.baseline} "
                    f"{baseline.metrics[primary]:.4f}: diff {ci['diff']:+.4f} "
                    f"(CI {ci['low']:+.4f}..{ci['high']:+.4f}), {rule}", ci))
            checks += rules.vs_baseline(challenger, baseline)
    against("baseline", start)
    return checks


def baseline_rule(margin: str, ci: dict[str, float]) -> tuple[bool, str]:
    """gate.baseline_margin: a positive difference, or an interval clear of zero."""
    if margin == "interval":
        return ci["low"] > 0, "the interval's lower end must be > 0"
    return ci["diff"] > 0, "must be > 0"


@tracking.keeps_tracking_uri
def gate(challenger: str, ab_config: str | Path, baseline: str | Path | None = None,
         tracking_uri: str | None = None, out: str | Path | None = None) -> GateDecision:
    """Decide, log the decision, and on pass move `champion` to the challenger."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = load_ab_config(ab_config)
    uri = tracking.registry_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = cfg.model
    check_models(cfg, client)
    version = resolve_version(client, name, challenger)
    if version is None:
        raise ConfigError(f"model {name!r} has no alias {challenger!r}")
    task = cfg.gate.task
    chal = evidence_from_version(client, name, version, task)
    base = _baseline(client, baseline, task)
    # From reading the champion to moving it, one gate per model at a time: two gates
    # at once then act as one after the other, each judged against the champion it sees.
    with registry_lock(client, name):
        champ_version = resolve_version(client, name, CHAMPION)
        if champ_version == version:
            raise ConfigError(f"{name} version {version} is already the champion")
        champ = evidence_from_version(client, name, champ_version, task) if champ_version else None
        checks = decide(cfg, chal, champ, base)
        reasons = [c.detail for c in checks if not c.passed]
        result = GateDecision(outcome(cfg, reasons, champ_version), name, version,
                              champ_version, reasons, checks, cfg.name,
                              dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        result.next_step = next_step(cfg, result)
        result.gate_run_id = _log_decision(client, cfg, result, Path(ab_config))
        if result.promoted:
            promote_aliases(client, name, version, champ_version)
        _tag_version(client, name, version, result)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gate.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        (Path(out) / "rollout_plan.md").write_text(rollout_plan(cfg, result))
    log.info("gate: %s %s v%s (%s)", result.decision, name, version, "; ".join(reasons) or "all checks passed")
    return result


def outcome(cfg: ABConfig, reasons: list[str], champion: str | None) -> str:
    """refused, promoted, or approved: a pass whose promotion waits for the experiment.

    Without a champion there is no control to experiment against, so a first model is
    promoted even under `gate.promote: after_experiment` (`next_step` says so).
    """
    if reasons:
        return "refused"
    if cfg.gate.promote == "after_experiment" and champion is not None:
        return "approved"
    return "promoted"


def next_step(cfg: ABConfig, result: GateDecision) -> str:
    """One sentence for the operator: what the decision leaves them to do."""
    source = cfg.source or "CONFIG"
    if result.decision == "refused":
        return "nothing moved; improve the challenger or change the bar, then gate again"
    if result.decision == "approved":
        return (f"start the experiment with version {result.challenger} as its treatment "
                f"(pin it: treatment: {{version: {result.challenger}}}); champion stays at version "
                f"{result.champion} until, after the last ramp stage, `hllm ab promote "
                f"--ab-config {source}`")
    if cfg.gate.promote == "after_experiment":
        return ("no champion yet, so nothing to experiment against: promoted now despite "
                "gate.promote: after_experiment; the next challenger goes through the experiment")
    return (f"champion serves everyone now; watch the guardrails, and `hllm rollback "
            f"--ab-config {source}` undoes it")


LOCK_TAG = "gate.lock"


@contextmanager
def registry_lock(client, name: str, wait_s: float = 120.0, settle_s: float = 1.0,
                  stale_s: float = 600.0) -> Iterator[None]:
    """Hold `name`'s gate lock (a registered-model tag) for the block.

    The registry has no compare-and-set, so: wait until the tag is free (or older than
    `stale_s`, a crashed holder), write our token, wait `settle_s`, read it back. Of two
    writers within `settle_s` only the later reads its own token; the other waits again.
    Two writes in the same instant make the server refuse one (a unique-key error, seen
    under a full test run); that writer has lost and waits for the tag like the other.
    """
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        holder = client.get_registered_model(name).tags.get(LOCK_TAG, "")
        held_at = float(holder.rsplit("@", 1)[1]) if "@" in holder else 0.0
        if holder and time.time() - held_at < stale_s:
            if time.monotonic() > deadline:
                raise BusyError(f"model {name!r}: another gate holds the registry lock "
                                f"({holder.rsplit('@', 1)[0]}) for over {wait_s:.0f} s; if it "
                                f"crashed, delete the registered-model tag {LOCK_TAG!r}")
            time.sleep(0.5)
            continue
        try:
            client.set_registered_model_tag(name, LOCK_TAG, f"{token}@{time.time():.3f}")
        except Exception as exc:  # noqa: BLE001 - only a lost race is retried
            if not _lost_tag_race(exc):
                raise
            continue  # another gate wrote the tag in the same instant: it holds the lock
        time.sleep(settle_s)
        if client.get_registered_model(name).tags.get(LOCK_TAG, "").startswith(token + "@"):
            break
    try:
        yield
    finally:
        try:
            if client.get_registered_model(name).tags.get(LOCK_TAG, "").startswith(token + "@"):
                client.delete_registered_model_tag(name, LOCK_TAG)
        except Exception as exc:  # noqa: BLE001 - the lock goes stale after stale_s anyway
            log.warning("model %s: could not release the gate lock: %s", name, exc)


def _lost_tag_race(exc: Exception) -> bool:
    """The tracking server's answer when two clients create the same tag at once: its
    SQL store reads, then inserts, so the second insert breaks the unique key."""
    return "UNIQUE constraint failed" in str(exc) or "IntegrityError" in str(exc)


def rollback(ab_config: str | Path, tracking_uri: str | None = None) -> tuple[str, str]:
    """Point `champion` back at `previous-champion`; returns (from version, to version)."""
    from mlflow.tracking import MlflowClient

    cfg = load_ab_config(ab_config)
    client = MlflowClient(tracking.registry_uri(tracking_uri))
    name = cfg.model
    previous = resolve_version(client, name, PREVIOUS)
    if previous is None:
        raise ConfigError(f"model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
    with registry_lock(client, name):  # not in the middle of a gate's promotion
        previous = resolve_version(client, name, PREVIOUS)
        current = resolve_version(client, name, CHAMPION)
        if previous is None:
            raise ConfigError(f"model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.delete_registered_model_alias(name, PREVIOUS)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if current is not None:
            client.set_model_version_tag(name, current, "gate.rolled_back_at", now)
    log.info("rollback: %s champion %s -> %s", name, current, previous)
    return str(current), str(previous)


# ---------------------------------------------------------------- helpers

def _baseline(client, baseline: str | Path | None, task: str = "ranking") -> Evidence | None:
    """A run directory, or `models:/NAME/VERSION` / `models:/NAME@ALIAS` in the registry."""
    if baseline is None:
        return None
    text = str(baseline)
    if text.startswith("models:/"):
        name, sep, ref = text.removeprefix("models:/").partition("@")
        if not sep:
            name, _, ref = name.partition("/")
        version = resolve_version(client, name, ref)
        if version is None:
            raise ConfigError(f"{text}: no such model version or alias")
        return evidence_from_version(client, name, version, task)
    return evidence_from_dir(baseline, f"baseline {baseline}", task)


def promote_aliases(client, name: str, version: str, old: str | None) -> None:
    """`champion` to `version` and `previous-champion` to `old`: both or neither.

    The second write failing restores the first, so the server never sees a champion
    without the previous one `hllm rollback` needs. Call it under `registry_lock`.
    """
    previous_before = resolve_version(client, name, PREVIOUS)
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception:
        if old is not None:
            if previous_before is None:
                client.delete_registered_model_alias(name, PREVIOUS)
            else:
                client.set_registered_model_alias(name, PREVIOUS, previous_before)
        raise HLLMError(f"moving {name}@{CHAMPION} to version {version} failed; aliases restored")


def _log_decision(client, cfg: ABConfig, result: GateDecision, ab_path: Path) -> str:
    """An MLflow run holding the gate's inputs, numbers and outcome, for registry reviewers."""
    experiment = client.get_experiment_by_name(GATE_EXPERIMENT)
    exp_id = experiment.experiment_id if experiment else client.create_experiment(GATE_EXPERIMENT)
    run = client.create_run(exp_id, run_name=f"{result.model}-v{result.challenger}-{result.decision}",
                            tags={"gate.decision": result.decision, "model": result.model,
                                  "challenger": result.challenger,
                                  "champion": result.champion or "none"})
    run_id = run.info.run_id
    client.log_param(run_id, "ab_config", cfg.name)
    client.log_param(run_id, "primary_metric", cfg.gate.primary_metric)
    for check in result.checks:
        for key, value in check.numbers.items():
            client.log_metric(run_id, f"{check.name.replace(' ', '_').replace('@', '_at_')}.{key}", value)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "decision.json").write_text(json.dumps(result.to_dict() | {"gate_run_id": run_id},
                                                            indent=2) + "\n")
        (Path(tmp) / "rollout_plan.md").write_text(rollout_plan(cfg, result))
        client.log_artifact(run_id, str(Path(tmp) / "decision.json"))
        client.log_artifact(run_id, str(Path(tmp) / "rollout_plan.md"))
        if ab_path.is_file():
            client.log_artifact(run_id, str(ab_path))
    client.set_terminated(run_id)
    return run_id


def _tag_version(client, name: str, version: str, result: GateDecision) -> None:
    client.set_model_version_tag(name, version, "gate.decision", result.decision)
    client.set_model_version_tag(name, version, "gate.reasons",
                                 "; ".join(result.reasons)[:4000] or "all checks passed")
    client.set_model_version_tag(name, version, "gate.run_id", result.gate_run_id)
    client.set_model_version_tag(name, version, "gate.rollout_plan",
                                 f"runs:/{result.gate_run_id}/rollout_plan.md")
    client.set_model_version_tag(name, version, APPROVED_TAG, str(result.passed).lower())
    client.set_model_version_tag(name, version, EXPERIMENT_TAG, result.experiment)
    client.set_model_version_tag(name, version, APPROVED_AGAINST_TAG, result.champion or "none")


def rollout_plan(cfg: ABConfig, result: GateDecision) -> str:
    """The ops-facing plan: what moved, how traffic ramps, what to watch, what next, how to undo."""
    lines = [f"# Rollout plan: {result.model} version {result.challenger}", "",
             f"Gate decision: **{result.decision}** ({result.decided_at}); experiment "
             f"`{cfg.name}`, owner {cfg.owner}, layer `{cfg.layer.name}` slice "
             f"{cfg.layer.slice[0]:g}-{cfg.layer.slice[1]:g}%, {cfg.start} to {cfg.end}.", ""]
    if not result.passed:
        lines += ["Nothing moves. Reasons:", ""] + [f"- {r}" for r in result.reasons] + [""]
        return "\n".join(lines)
    lines += _what_moved(cfg, result) + _ramp_lines(cfg)
    lines += ["", "Offline evidence:", ""] + [f"- {c.name}: {c.detail}" for c in result.checks]
    lines += ["", f"Next: {result.next_step}.", "", _undo_line(cfg, result), ""]
    return "\n".join(lines)


def _what_moved(cfg: ABConfig, result: GateDecision) -> list[str]:
    if result.promoted:
        control = f"version {result.champion}" if result.champion else "no model (first release)"
        return [f"`{result.model}@champion` now points at version {result.challenger}; the "
                f"previous champion ({control}) keeps `@{PREVIOUS}`.", ""]
    lines = [f"`{result.model}@champion` stays at version {result.champion}, the control arm: "
             f"version {result.challenger} is approved (`{APPROVED_TAG}=true`) for the treatment "
             "arm, and moving champion now would serve it in both arms.", ""]
    if cfg.treatment.version != int(result.challenger):
        lines += [f"The config's treatment is {cfg.treatment}: pin it to `treatment: {{version: "
                  f"{result.challenger}}}` before the experiment starts, so that a registration "
                  "cannot swap the arm.", ""]
    return lines


def _ramp_lines(cfg: ABConfig) -> list[str]:
    lines = [f"Arms: control {cfg.control} {cfg.allocation['control']:g}%, treatment "
             f"{cfg.treatment} {cfg.allocation['treatment']:g}%, holdout "
             f"{cfg.allocation['holdout']:g}%; bucketing by {cfg.bucketing.unit}, salt "
             f"`{cfg.bucketing.salt}`, {cfg.bucketing.buckets} buckets.", "",
             "| stage | treatment share | days | advance when |", "|---|---|---|---|"]
    day = 0
    for i, stage in enumerate(cfg.ramp, 1):
        lines.append(f"| {i} | {stage.percent:g}% | {stage.days} (day {day + 1}-{day + stage.days}) "
                     "| every guardrail held for the whole stage |")
        day += stage.days
    lines += ["", "Guardrails (roll back as soon as one is crossed):", ""]
    for g in cfg.guardrails:
        limit = " and ".join(x for x in (f"<= {g.max:g}" if g.max is not None else "",
                                        f">= {g.min:g}" if g.min is not None else "") if x)
        lines.append(f"- `{g.metric}` {limit}")
    return lines


def _undo_line(cfg: ABConfig, result: GateDecision) -> str:
    source = cfg.source or "CONFIG"
    if result.promoted:
        return (f"Rollback: `hllm rollback --ab-config {source}` points `@champion` back at "
                f"`@{PREVIOUS}`.")
    return (f"Rollback: the registry has not moved; stop the treatment by serving with "
            f"`--ramp-percent 0`. After `hllm ab promote`, `hllm rollback --ab-config {source}` "
            f"points `@champion` back at `@{PREVIOUS}`.")
