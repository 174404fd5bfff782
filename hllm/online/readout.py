"""`hllm ab readout`: an experiment's exposure log read out against its A/B config.

What ops need from a readout, in the order they need it:

1. Can the numbers be trusted? The sample-ratio test of users per arm against the
   allocation (hllm.online.ab_stats); a mismatch means assignment or logging is broken.
2. Per arm (control; treatment users actually treated in the ramp; the holdout is left
   out, as hllm.assignment documents): users, exposures, click-through (exposures with a
   click on a shown item) and hit@k (a click within the top k shown), each with an
   interval over users, and treatment against control.
3. Each guardrail of the config: held, at risk (the point estimate is past the limit but
   the interval is not), crossed, or no data. Latency is the server's own time per
   request, from the exposure log; the error rate counts requests an arm's model failed.
4. A recommendation with its reasons: roll back when a guardrail is crossed; hold when the
   sample ratio is off, an arm is too small, a guardrail is at risk, or the ramp stage has
   not run its days; advance to the next stage otherwise (after the last stage: end the
   experiment, the treatment may replace control).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hllm.atomic import write_text
from hllm.errors import DataError
from hllm.experiment import ABConfig, Guardrail, RampStage, load_ab_config
from hllm.online import ab_stats
from hllm.online.exposure import read_log
from hllm.report_html import fmt, render
from hllm.tracking import check_server, resolve_uri

ARMS = ("control", "treatment")
DEFAULT_KS = (10,)
MIN_USERS = 100  # per arm; below it an interval says little and the readout holds
READOUT_EXPERIMENT = "ab-readouts"  # the MLflow experiment holding one run per readout


@dataclass
class ArmOutcome:
    users: int
    exposures: int
    errors: int
    ctr: ab_stats.Ratio
    hits: dict[int, ab_stats.Ratio]
    latency_ms: dict[str, float]  # p50, p99 of the server's time per request
    versions: dict[str, int]  # model version -> exposures it answered


@dataclass
class GuardrailOutcome:
    metric: str
    limit: str
    value: float
    low: float | None
    high: float | None
    status: str  # held | at risk | crossed | no data
    reason: str


@dataclass
class Readout:
    experiment: str
    model: str
    log: str
    confidence: float
    first: str | None
    last: str | None
    stage: dict[str, Any]
    sample_ratio: ab_stats.SampleRatio
    arms: dict[str, ArmOutcome]
    changes: dict[str, ab_stats.Change]  # ctr_relative_change, hit@k_difference
    guardrails: list[GuardrailOutcome]
    decision: str  # advance | hold | roll back
    reasons: list[str]
    next_step: str
    feedback_unmatched: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ends_experiment(self) -> bool:
        """The last ramp stage ran its days with every guardrail held: promote the treatment."""
        return (self.decision == "advance" and self.stage["index"] is not None
                and self.stage["index"] + 1 == self.stage["of"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sample_ratio"]["mismatch"] = self.sample_ratio.mismatch
        out["ends_experiment"] = self.ends_experiment
        return json.loads(json.dumps(out, default=str).replace("NaN", "null"))


# ----------------------------------------------------------------- reading the log
def exposures_and_feedback(records: Iterable[dict[str, Any]], model: str):
    """Exposure/error records of `model`, and the clicks per (request id, user)."""
    routed: list[dict[str, Any]] = []
    clicks: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in records:
        kind = record.get("kind")
        if kind == "feedback":
            clicks[(record.get("request_id"), record.get("user"))].update(record.get("clicked") or [])
        elif kind in ("exposure", "error") and record.get("model") == model:
            routed.append(record)
    return routed, clicks


def in_arm(record: dict[str, Any], arm: str) -> bool:
    """Control, or treatment users the ramp actually treated (holdout is in neither)."""
    if arm == "treatment":
        return record.get("arm") == "treatment" and record.get("in_ramp", True)
    return record.get("arm") == "control"


def arm_outcome(records: list[dict[str, Any]], clicks: dict, ks: tuple[int, ...]) -> ArmOutcome:
    per_user: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2 + len(ks)))
    latencies, versions, errors = [], Counter(), 0
    for r in records:
        latencies.append(float(r.get("latency_ms", math.nan)))
        if r["kind"] == "error":
            errors += 1
            continue
        versions[str(r.get("version"))] += 1
        shown = list(r.get("items") or [])
        clicked = clicks.get((r.get("request_id"), r.get("user")), set())
        first = min((shown.index(i) for i in clicked if i in shown), default=None)
        row = per_user[r["user"]]
        row[0] += 1
        row[1] += first is not None
        for j, k in enumerate(ks):
            row[2 + j] += first is not None and first < k
    sums = np.array(list(per_user.values())) if per_user else np.zeros((0, 2 + len(ks)))
    latencies = [x for x in latencies if not math.isnan(x)]
    return ArmOutcome(
        users=len(per_user), exposures=int(sums[:, 0].sum()), errors=errors,
        ctr=ab_stats.ratio(sums[:, 1], sums[:, 0]),
        hits={k: ab_stats.ratio(sums[:, 2 + j], sums[:, 0]) for j, k in enumerate(ks)},
        latency_ms={"p50": ab_stats.percentile(latencies, 50),
                    "p99": ab_stats.percentile(latencies, 99)},
        versions=dict(versions))


def current_stage(cfg: ABConfig, routed: list[dict[str, Any]]) -> dict[str, Any]:
    """The ramp stage of the newest record, and how long records have come at that stage."""
    def stage_percent(record: dict[str, Any]) -> float:  # no ramp given: the full allocation
        ramp = record.get("ramp")
        return cfg.allocation["treatment"] if ramp is None else float(ramp)

    percent = stage_percent(max(routed, key=lambda r: r["time"]))
    times = [r["time"] for r in routed if stage_percent(r) == percent]
    days = (dt.datetime.fromisoformat(max(times)) - dt.datetime.fromisoformat(min(times))
            ).total_seconds() / 86400
    index = next((i for i, s in enumerate(cfg.ramp) if s.percent == percent), None)
    return {"percent": percent, "index": index, "days_run": days,
            "days_needed": cfg.ramp[index].days if index is not None else None,
            "of": len(cfg.ramp)}


# ----------------------------------------------------------------- guardrails
def check_guardrail(g: Guardrail, value: float, low: float | None = None,
                    high: float | None = None) -> GuardrailOutcome:
    """held / at risk / crossed against the config's limit; intervals decide when given."""
    limit = " and ".join(x for x in (f">= {g.min:g}" if g.min is not None else "",
                                     f"<= {g.max:g}" if g.max is not None else "") if x)
    if value is None or math.isnan(value):
        return GuardrailOutcome(g.metric, limit, math.nan, low, high, "no data",
                                f"{g.metric}: no data to check {limit}")

    def past(x: float) -> bool:
        return (g.max is not None and x > g.max) or (g.min is not None and x < g.min)

    shown = f"{g.metric} {value:.4g}" + (f" [{low:.4g}, {high:.4g}]" if low is not None else "")
    if not past(value):
        return GuardrailOutcome(g.metric, limit, value, low, high, "held", f"{shown} is {limit}")
    if low is not None and high is not None and not (past(low) and past(high)):
        return GuardrailOutcome(g.metric, limit, value, low, high, "at risk",
                                f"{shown}: the estimate is past the limit ({limit}) but the "
                                "interval still reaches it; more data decides")
    return GuardrailOutcome(g.metric, limit, value, low, high, "crossed",
                            f"{shown} is not {limit}")


def guardrail_values(arms: dict[str, ArmOutcome], changes: dict[str, ab_stats.Change]):
    """Each guardrail metric hllm.experiment.GUARDRAIL_METRICS names, on the treatment arm."""
    t = arms["treatment"]
    answered = t.exposures + t.errors
    ctr = changes["ctr_relative_change"]
    return {"p50_latency_ms": (t.latency_ms["p50"], None, None),
            "p99_latency_ms": (t.latency_ms["p99"], None, None),
            "error_rate": (t.errors / answered if answered else math.nan, None, None),
            "ctr_relative_change": (ctr.value, ctr.low, ctr.high)}


# ----------------------------------------------------------------- the decision
def decide(cfg: ABConfig, readout_parts: dict[str, Any], min_users: int) -> tuple[str, list[str], str]:
    srm, arms, guardrails, stage = (readout_parts[k] for k in ("srm", "arms", "guardrails", "stage"))
    rollback = f"hllm rollback --ab-config {cfg.source}" if cfg.source else "hllm rollback"
    crossed = [g for g in guardrails if g.status == "crossed"]
    if crossed:
        return "roll back", [f"guardrail crossed: {g.reason}" for g in crossed], (
            f"{rollback}, and serve with --ramp-percent 0 until the cause is known")
    reasons = []
    if srm.mismatch:
        reasons.append(f"sample ratio mismatch: users per arm {srm.observed} against shares "
                       f"{ {a: round(s, 3) for a, s in srm.expected_share.items()} } "
                       f"(chi-square {srm.chi2:.2f}, p {srm.p_value:.2g} < {ab_stats.SRM_ALPHA:g}); "
                       "assignment or logging is broken, so no metric here can be trusted")
    for arm in ARMS:
        if arms[arm].users < min_users:
            reasons.append(f"{arm}: {arms[arm].users} users, fewer than {min_users}")
    reasons += [f"guardrail {g.status}: {g.reason}" for g in guardrails
                if g.status in ("at risk", "no data")]
    if stage["index"] is None:
        reasons.append(f"the server's ramp ({stage['percent']:g}%) is not a stage of the "
                       f"config's ramp ({', '.join(f'{s.percent:g}%' for s in cfg.ramp)})")
    elif stage["days_run"] < stage["days_needed"]:
        reasons.append(f"stage {stage['index'] + 1} of {stage['of']} ({stage['percent']:g}% "
                       f"treatment) has run {stage['days_run']:.2f} of its "
                       f"{stage['days_needed']} days")
    if reasons:
        return "hold", reasons, "read out again later; change nothing"
    held = [f"guardrail held: {g.reason}" for g in guardrails]
    if stage["index"] + 1 < len(cfg.ramp):
        nxt: RampStage = cfg.ramp[stage["index"] + 1]
        return "advance", held + [f"stage {stage['index'] + 1} ran its {stage['days_needed']} "
                                  "days with every guardrail held"], (
            f"serve with --ramp-percent {nxt.percent:g} (stage {stage['index'] + 2} of "
            f"{len(cfg.ramp)}, {nxt.days} days)")
    return "advance", held + ["the last ramp stage ran its days with every guardrail held"], (
        f"end the experiment: the treatment may replace control (hllm ab promote --ab-config "
        f"{cfg.source})")


def readout(cfg: ABConfig, records: Iterable[dict[str, Any]], log: str = "",
            ks: tuple[int, ...] = DEFAULT_KS, confidence: float = 0.95,
            min_users: int = MIN_USERS) -> Readout:
    """Read the experiment out of its log records (pure: no I/O)."""
    routed, clicks = exposures_and_feedback(records, cfg.model)
    if not routed:
        raise DataError(f"{log or 'exposure log'}: no exposures of model {cfg.model!r} "
                        f"(experiment {cfg.name}); is this the log `hllm serve` wrote?")
    arm_of_user = {r["user"]: r.get("arm") for r in routed}
    srm = ab_stats.sample_ratio(Counter(arm_of_user.values()), cfg.allocation)
    arms = {arm: arm_outcome([r for r in routed if in_arm(r, arm)], clicks, ks) for arm in ARMS}
    changes = {"ctr_relative_change": ab_stats.relative_change(
        arms["treatment"].ctr, arms["control"].ctr, confidence)}
    for k in ks:
        changes[f"hit@{k}_difference"] = ab_stats.difference(
            arms["treatment"].hits[k], arms["control"].hits[k], confidence)
    values = guardrail_values(arms, changes)
    guardrails = [check_guardrail(g, *values[g.metric]) for g in cfg.guardrails]
    stage = current_stage(cfg, routed)
    decision, reasons, next_step = decide(
        cfg, {"srm": srm, "arms": arms, "guardrails": guardrails, "stage": stage}, min_users)
    shown = {(r.get("request_id"), r.get("user")) for r in routed}
    times = sorted(r["time"] for r in routed)
    return Readout(cfg.name, cfg.model, log, confidence, times[0], times[-1], stage, srm, arms,
                   changes, guardrails, decision, reasons, next_step,
                   feedback_unmatched=sum(1 for key in clicks if key not in shown))


# ----------------------------------------------------------------- rendering
def _interval(r: ab_stats.Ratio, confidence: float) -> str:
    if math.isnan(r.value):
        return "n/a"
    if math.isnan(r.variance):
        return f"{r.value:.4f}"
    low, high = r.interval(confidence)
    return f"{r.value:.4f} [{low:.4f}, {high:.4f}]"


def _change(c: ab_stats.Change) -> str:
    return "n/a" if math.isnan(c.value) else f"{c.value:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"


def arm_rows(r: Readout) -> list[list[str]]:
    ks = sorted(next(iter(r.arms.values())).hits)
    rows = [["users", *(str(r.arms[a].users) for a in ARMS), ""],
            ["exposures", *(str(r.arms[a].exposures) for a in ARMS), ""],
            ["errors", *(str(r.arms[a].errors) for a in ARMS), ""],
            ["click-through", *(_interval(r.arms[a].ctr, r.confidence) for a in ARMS),
             _change(r.changes["ctr_relative_change"]) + " relative"]]
    rows += [[f"hit@{k}", *(_interval(r.arms[a].hits[k], r.confidence) for a in ARMS),
              _change(r.changes[f"hit@{k}_difference"])] for k in ks]
    rows += [[f"latency {q} (ms)", *(f"{r.arms[a].latency_ms[q]:.1f}" for a in ARMS), ""]
             for q in ("p50", "p99")]
    rows.append(["model versions", *(", ".join(f"v{v} ({n})" for v, n in sorted(r.arms[a].versions.items()))
                                     or "-" for a in ARMS), ""])
    return rows


def render_text(r: Readout) -> str:
    pct = f"{r.confidence:.0%}"
    srm = r.sample_ratio
    stage = r.stage
    lines = [f"A/B readout: {r.experiment} (model {r.model}), log {r.log}",
             f"records {r.first} .. {r.last}; ramp stage "
             + (f"{stage['index'] + 1} of {stage['of']}" if stage["index"] is not None else "?")
             + f" ({stage['percent']:g}% treatment), {stage['days_run']:.2f} days at this stage",
             f"sample ratio: users {srm.observed}, expected shares "
             f"{ {a: round(s, 3) for a, s in srm.expected_share.items()} }, chi-square "
             f"{srm.chi2:.2f}, p {srm.p_value:.3g}: " + ("MISMATCH" if srm.mismatch else "ok"),
             ""]
    rows = arm_rows(r)
    header = ["", "control", "treatment", f"treatment - control ({pct} interval)"]
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    lines.append("")
    for g in r.guardrails:
        lines.append(f"guardrail {g.metric} ({g.limit}): {g.status} - {g.reason}")
    if r.feedback_unmatched:
        lines.append(f"note: {r.feedback_unmatched} feedback report(s) name no logged exposure")
    lines += ["", f"recommendation: {r.decision.upper()}"]
    lines += [f"  - {reason}" for reason in r.reasons]
    lines.append(f"next: {r.next_step}")
    return "\n".join(lines) + "\n"


def render_html(r: Readout) -> str:
    """The readout page (templates/ab_readout.html.j2): the decision and why first."""
    srm = r.sample_ratio
    view = {"experiment": r.experiment, "decision": r.decision.upper(),
            "kind": {"advance": "promoted", "hold": "none", "roll back": "refused"}[r.decision],
            "reasons": r.reasons, "next_step": r.next_step, "model": r.model, "log": r.log,
            "first": str(r.first), "last": str(r.last), "confidence": f"{r.confidence:.0%}",
            "arms": arm_rows(r),
            "sample_ratio": [[a, n, fmt(srm.expected_share[a])] for a, n in srm.observed.items()],
            "chi2": srm.chi2, "p_value": f"{srm.p_value:.3g}", "mismatch": srm.mismatch,
            "guardrails": [[g.metric, g.limit, fmt(g.value),
                            "" if g.low is None else f"[{g.low:.4g}, {g.high:.4g}]", g.status,
                            g.reason] for g in r.guardrails],
            "guardrail_classes": ["fail" if g.status != "held" else "" for g in r.guardrails]}
    return render("ab_readout.html.j2", title=f"A/B readout {r.experiment}", r=view)


def metrics_for_tracking(r: Readout) -> dict[str, float]:
    out: dict[str, float] = {"srm_p_value": r.sample_ratio.p_value, "srm_chi2": r.sample_ratio.chi2}
    for arm, o in r.arms.items():
        out.update({f"{arm}.users": o.users, f"{arm}.exposures": o.exposures,
                    f"{arm}.errors": o.errors, f"{arm}.ctr": o.ctr.value,
                    f"{arm}.p99_latency_ms": o.latency_ms["p99"]})
        out.update({f"{arm}.hit_at_{k}": h.value for k, h in o.hits.items()})
    for name, c in r.changes.items():
        out[name.replace("@", "_at_")] = c.value
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def log_readout(r: Readout, html_text: str, tracking_uri: str) -> str:
    """One MLflow run per readout (experiment `ab-readouts`): metrics, decision, the page.

    `hllm ab promote` reads the newest of these runs: its tags say what it decided, whether
    that ends the experiment, and which versions each arm served.
    """
    import mlflow

    check_server(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(READOUT_EXPERIMENT)
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(READOUT_EXPERIMENT))
    run = client.create_run(experiment_id, run_name=f"{r.experiment} {r.last}", tags={
        "ab.experiment": r.experiment, "ab.decision": r.decision, "ab.model": r.model,
        "ab.ends_experiment": str(r.ends_experiment).lower(), "ab.next_step": r.next_step,
        "ab.log": r.log, **{f"ab.{arm}.versions": ",".join(sorted(o.versions))
                             for arm, o in r.arms.items()}})
    run_id = run.info.run_id
    for key, value in metrics_for_tracking(r).items():
        client.log_metric(run_id, key, value)
    client.log_text(run_id, html_text, "readout.html")
    client.log_text(run_id, json.dumps(r.to_dict(), indent=2), "readout.json")
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints a "View run" line: not ours
        client.set_terminated(run_id)
    return run_id


def run_readout(ab_config: str | Path, exposure_log: str, html_out: str | Path | None = None,
                tracking_uri: str | None = None, ks: tuple[int, ...] = DEFAULT_KS,
                min_users: int = MIN_USERS) -> tuple[Readout, str | None]:
    """The CLI's work: read, decide, write the page, log the run (when a URI is set)."""
    cfg = load_ab_config(ab_config)
    result = readout(cfg, read_log(exposure_log), log=str(exposure_log), ks=ks,
                     confidence=cfg.gate.confidence, min_users=min_users)
    page_text = render_html(result)
    if html_out is not None:
        write_text(Path(html_out), page_text)
    uri = resolve_uri(tracking_uri)
    run_id = log_readout(result, page_text, uri) if uri else None
    return result, run_id
