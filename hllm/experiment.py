"""A/B experiment configs: who gets which model, how fast it ramps, and what gates it.

    hllm ab validate configs/ab/hllm-rollout.yaml --others configs/ab/

One YAML file per experiment (see configs/ab/hllm-rollout.yaml for every field with
comments). Loading checks the schema and the invariants ops rely on, and reports every
problem at once, each naming its field: allocations that do not sum to 100, a ramp that
goes down, an end before the start, unknown keys. `check_layer` refuses experiments
that would share users in one layer at the same time; `check_models` (in hllm.gate)
refuses arms pointing at registry versions that do not exist; `config_warnings` names
settings that are legal but risky (an alias as the treatment of an experiment that
promotes only after it ends).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hllm.errors import ConfigError
from hllm.tasks import get_task, task_names
from hllm.yaml_file import load_yaml

ARMS = ("control", "treatment", "holdout")
# The registry aliases the platform moves (`hllm register` sets challenger, `hllm gate`
# and `hllm ab promote` champion and previous-champion); an arm naming any other would
# never resolve.
ALIASES = ("champion", "challenger", "previous-champion")


@dataclass(frozen=True)
class ModelRef:
    """A registry pointer: an alias (moves with promotions) or a pinned version."""

    alias: str | None = None
    version: int | None = None

    def uri(self, name: str) -> str:
        return f"models:/{name}@{self.alias}" if self.alias else f"models:/{name}/{self.version}"

    def __str__(self) -> str:
        return f"@{self.alias}" if self.alias else f"version {self.version}"


@dataclass(frozen=True)
class Layer:
    """Experiments in one layer are mutually exclusive: each owns a slice of its traffic."""

    name: str
    slice: tuple[float, float] = (0.0, 100.0)  # percent of the layer's buckets, [lo, hi)


@dataclass(frozen=True)
class Bucketing:
    unit: str = "user_id"
    salt: str = ""
    buckets: int = 10_000


@dataclass(frozen=True)
class RampStage:
    percent: float  # share of all traffic on treatment during this stage
    days: int = 1


@dataclass(frozen=True)
class Guardrail:
    """An online metric ops watch during the ramp; crossing a limit means roll back."""

    metric: str
    max: float | None = None
    min: float | None = None


PROMOTE_WHEN = ("on_pass", "after_experiment")  # gate.promote
# What `hllm ab readout` can measure from the exposure log (on the treatment arm; the
# relative change is treatment against control).
GUARDRAIL_METRICS = ("p50_latency_ms", "p99_latency_ms", "error_rate", "ctr_relative_change")


@dataclass(frozen=True)
class GateConfig:
    # ranking: full-ranking metrics over users (HLLM); ctr: AUC/logloss over rows, checked
    # overall and per scenario (LLM4MSR). Decides which evidence the gate reads.
    task: str = "ranking"
    primary_metric: str = "ndcg@10"
    # Required uplift over the champion per metric (absolute). For the primary metric
    # the lower end of the bootstrap interval must clear it; others must not fall below
    # it (default: -tolerance, i.e. no regression beyond tolerance).
    min_uplift: dict[str, float] = field(default_factory=lambda: {"ndcg@10": 0.0})
    tolerance: float = 0.005
    absolute: dict[str, float] = field(default_factory=dict)  # first model ever: floors
    beat_baseline: bool = True  # the challenger must be ahead of the ID baseline
    # How far ahead: "point" = a positive difference; "interval" = the lower end of the
    # bootstrap interval above zero (ahead beyond the noise of the test sample).
    baseline_margin: str = "point"
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    seed: int = 0
    # Ranking only: rules on the primary metric per user segment (overall, warm, long_tail,
    # cold; see hllm.segments) against the ID baseline, e.g. {cold: {min_uplift: 0.0},
    # warm: {tolerance: 0.005}}. min_uplift: the paired bootstrap interval's lower end must
    # exceed it; tolerance: the difference may not fall below -tolerance.
    segments: dict[str, dict[str, float]] = field(default_factory=dict)
    # When a passing challenger becomes champion. on_pass: at once (an offline-only
    # rollout). after_experiment: the gate only approves it, because the control arm is
    # `@champion` and moving it would make both arms one model; `hllm ab promote` moves it
    # once the experiment's last stage is read out. A first model is promoted either way.
    promote: str = "on_pass"


@dataclass(frozen=True)
class ABConfig:
    name: str
    owner: str
    model: str  # registered model name both arms come from
    layer: Layer
    control: ModelRef
    treatment: ModelRef
    allocation: dict[str, float]  # control / treatment / holdout, percent, sum 100
    bucketing: Bucketing
    ramp: tuple[RampStage, ...]
    guardrails: tuple[Guardrail, ...]
    gate: GateConfig
    start: dt.date
    end: dt.date
    source: str = ""  # the file it came from, for messages

    def arm_ref(self, arm: str) -> ModelRef:
        return self.treatment if arm == "treatment" else self.control


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and leaves dates as text.

    PyYAML keeps the last of two equal keys (one rule silently replaces another) and
    builds dates itself, failing on 2026-02-30 with a bare ValueError; here `_date`
    checks them and names the field.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_ab_config(path: str | Path) -> ABConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such A/B config")
    raw = load_yaml(path, _StrictLoader)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of experiment fields")
    return parse_ab_config(raw, source=str(path))


def parse_ab_config(raw: dict[str, Any], source: str = "<dict>") -> ABConfig:
    """Build and check an ABConfig; every problem is reported, each with its field path."""
    errors: list[str] = []
    required = ("name", "owner", "model", "layer", "control", "treatment", "allocation",
                "bucketing", "start", "end")
    known = set(required) | {"ramp", "guardrails", "gate"}
    errors += [f"{k}: unknown field (known: {', '.join(sorted(known))})" for k in raw if k not in known]
    errors += [f"{k}: required" for k in required if k not in raw]
    if errors:
        raise ConfigError(_message(source, errors))

    def sub(key: str, cls, value: Any):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
            return None
        names = {f.name for f in fields(cls)}
        bad = [k for k in value if k not in names]
        errors.extend(f"{key}.{k}: unknown field (known: {', '.join(sorted(names))})" for k in bad)
        try:
            return cls(**{k: v for k, v in value.items() if k in names})
        except TypeError as exc:
            errors.append(f"{key}: {exc}")
            return None

    layer = sub("layer", Layer, raw["layer"])
    if layer is not None:
        layer = Layer(layer.name, _slice(layer.slice, errors))
    control, treatment = (_model_ref(k, raw[k], errors) for k in ("control", "treatment"))
    allocation = _allocation(raw["allocation"], errors)
    bucketing = sub("bucketing", Bucketing, raw["bucketing"])
    if bucketing is not None:
        if not bucketing.salt:
            errors.append("bucketing.salt: required (a new salt per experiment reshuffles users)")
        if not isinstance(bucketing.buckets, int) or bucketing.buckets < 100:
            errors.append(f"bucketing.buckets: at least 100, got {bucketing.buckets!r}")
    ramp = tuple(s for s in (sub(f"ramp[{i}]", RampStage, s) for i, s in enumerate(raw.get("ramp") or []))
                 if s is not None)
    _check_ramp(ramp, allocation, errors)
    guardrails = tuple(g for g in (sub(f"guardrails[{i}]", Guardrail, g)
                                   for i, g in enumerate(raw.get("guardrails") or [])) if g is not None)
    for i, g in enumerate(guardrails):
        if g.max is None and g.min is None:
            errors.append(f"guardrails[{i}] ({g.metric}): give a max or a min limit")
        if g.metric not in GUARDRAIL_METRICS:
            errors.append(f"guardrails[{i}].metric: {g.metric!r} is not one of "
                          f"{', '.join(GUARDRAIL_METRICS)}")
    gate = sub("gate", GateConfig, raw.get("gate") or {})
    if gate is not None:
        if gate.baseline_margin not in ("point", "interval"):
            errors.append(f"gate.baseline_margin: point or interval, got {gate.baseline_margin!r}")
        known = task_names()  # one entry-point scan, not one per use
        if gate.task not in known:
            errors.append(f"gate.task: one of {', '.join(known)}, got {gate.task!r}")
        if gate.primary_metric not in gate.min_uplift:
            errors.append(f"gate.min_uplift: no entry for the primary metric {gate.primary_metric!r}")
        if gate.promote not in PROMOTE_WHEN:
            errors.append(f"gate.promote: one of {', '.join(PROMOTE_WHEN)}, got {gate.promote!r} "
                          "(after_experiment: the gate approves, `hllm ab promote` promotes)")
        if not 0.5 < gate.confidence < 1:
            errors.append(f"gate.confidence: between 0.5 and 1, got {gate.confidence}")
        _check_segment_rules(gate, errors)
    start, end = _date("start", raw["start"], errors), _date("end", raw["end"], errors)
    if start and end and end <= start:
        errors.append(f"end: {end} is not after start {start}")
    if control and treatment and control == treatment:
        errors.append(f"treatment: same model as control ({control})")
    if errors:
        raise ConfigError(_message(source, errors))
    return ABConfig(str(raw["name"]), str(raw["owner"]), str(raw["model"]), layer, control, treatment,
                    allocation, bucketing, ramp, guardrails, gate, start, end, source)


def config_warnings(config: ABConfig) -> list[str]:
    """Legal but risky settings, for `hllm ab validate` to print without refusing.

    With `gate.promote: after_experiment` the treatment is the version the gate approved
    and `hllm ab promote` promotes; an alias there moves with the next `hllm register`,
    so the experiment would serve, and promote, a version the gate never judged.
    """
    if config.gate is None or config.gate.promote != "after_experiment" or not config.treatment.alias:
        return []
    return [f"{config.source}: treatment: {{alias: {config.treatment.alias}}} moves with every "
            "registration while gate.promote is after_experiment; pin the gated version "
            "(treatment: {version: N}) for the experiment's duration"]


def check_layer(config: ABConfig, others: list[ABConfig]) -> None:
    """Refuse two experiments of one layer that overlap in time and in traffic slice."""
    for other in others:
        if other.name == config.name or other.layer.name != config.layer.name:
            continue
        same_time = config.start < other.end and other.start < config.end
        lo, hi = config.layer.slice
        olo, ohi = other.layer.slice
        if same_time and lo < ohi and olo < hi:
            raise ConfigError(
                f"{config.source}: layer.slice {list(config.layer.slice)} of layer "
                f"{config.layer.name!r} overlaps experiment {other.name!r} ({other.source}, slice "
                f"{list(other.layer.slice)}, {other.start}..{other.end}); give them disjoint slices "
                "or non-overlapping dates")


def load_layer_peers(directory: str | Path, exclude: str | Path | None = None) -> list[ABConfig]:
    if not Path(directory).is_dir():
        raise ConfigError(f"--others {directory}: no such directory of A/B configs")
    skip = Path(exclude).resolve() if exclude else None
    return [load_ab_config(p) for p in sorted(Path(directory).glob("*.yaml"))
            if p.resolve() != skip]


SEGMENT_NAMES = ("overall", "warm", "long_tail", "cold")
SEGMENT_RULES = ("min_uplift", "tolerance")


def _check_segment_rules(gate: GateConfig, errors: list[str]) -> None:
    if not isinstance(gate.segments, dict):
        errors.append(f"gate.segments: a mapping of segment -> rules, got {gate.segments!r}")
        return
    if gate.segments and gate.task in task_names() and not get_task(gate.task).segments:
        errors.append(f"gate.segments: gate.task {gate.task} has no per-user segments (only "
                      f"ranking has; CTR is judged per scenario)")
    for name, rule in gate.segments.items():
        key = f"gate.segments.{name}"
        if name not in SEGMENT_NAMES:
            errors.append(f"{key}: unknown segment (known: {', '.join(SEGMENT_NAMES)})")
        elif not isinstance(rule, dict) or not rule:
            errors.append(f"{key}: give min_uplift and/or tolerance, got {rule!r}")
        else:
            for k, v in rule.items():
                if k not in SEGMENT_RULES:
                    errors.append(f"{key}.{k}: unknown rule (known: {', '.join(SEGMENT_RULES)})")
                elif not isinstance(v, (int, float)) or isinstance(v, bool):
                    errors.append(f"{key}.{k}: a number, got {v!r}")
                elif k == "tolerance" and v < 0:
                    errors.append(f"{key}.tolerance: >= 0, got {v}")


def _message(source: str, errors: list[str]) -> str:
    return f"{source}: invalid A/B config:\n" + "\n".join(f"  - {e}" for e in errors)


def _model_ref(key: str, value: Any, errors: list[str]) -> ModelRef | None:
    if not isinstance(value, dict) or len(value) != 1 or not ({"alias", "version"} & set(value)):
        errors.append(f"{key}: give exactly one of alias: NAME or version: N, got {value!r}")
        return None
    if "version" in value:
        v = value["version"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            errors.append(f"{key}.version: a positive integer, got {v!r}")
            return None
        return ModelRef(version=v)
    alias = str(value["alias"])
    if alias not in ALIASES:
        errors.append(f"{key}.alias: {alias!r} is not an alias the platform sets "
                      f"(known: {', '.join(ALIASES)}); pin a version with version: N instead")
        return None
    return ModelRef(alias=alias)


def _allocation(value: Any, errors: list[str]) -> dict[str, float]:
    if not isinstance(value, dict):
        errors.append(f"allocation: expected control/treatment/holdout percentages, got {value!r}")
        return {}
    out = {}
    for key, pct in value.items():
        if key not in ARMS:
            errors.append(f"allocation.{key}: unknown arm (known: {', '.join(ARMS)})")
        elif not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 <= pct <= 100:
            errors.append(f"allocation.{key}: a percentage in [0, 100], got {pct!r}")
        else:
            out[key] = float(pct)
    for arm in ("control", "treatment"):
        if arm not in value:
            errors.append(f"allocation.{arm}: required")
    out.setdefault("holdout", 0.0)
    total = sum(out.values())
    if out and abs(total - 100) > 1e-9 and not any(e.startswith("allocation.") for e in errors):
        errors.append(f"allocation: control + treatment + holdout must sum to 100, got {total:g} "
                      f"({', '.join(f'{k} {v:g}' for k, v in out.items())})")
    return out


def _check_ramp(ramp: tuple[RampStage, ...], allocation: dict[str, float], errors: list[str]) -> None:
    previous = 0.0
    for i, stage in enumerate(ramp):
        if not isinstance(stage.percent, (int, float)) or not 0 < stage.percent <= 100:
            errors.append(f"ramp[{i}].percent: in (0, 100], got {stage.percent!r}")
            continue
        if stage.percent <= previous:
            errors.append(f"ramp[{i}].percent: {stage.percent:g} does not increase on the previous "
                          f"stage ({previous:g}); a ramp only goes up (roll back instead)")
        if not isinstance(stage.days, int) or stage.days < 1:
            errors.append(f"ramp[{i}].days: a whole number of days >= 1, got {stage.days!r}")
        previous = max(previous, float(stage.percent))
    treatment = allocation.get("treatment")
    if ramp and treatment is not None and abs(previous - treatment) > 1e-9:
        errors.append(f"ramp[{len(ramp) - 1}].percent: the last stage must reach "
                      f"allocation.treatment ({treatment:g}), got {previous:g}")


def _slice(value: Any, errors: list[str]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        errors.append(f"layer.slice: [lo, hi] percentages, got {value!r}")
        return (0.0, 100.0)
    if not 0 <= lo < hi <= 100:
        errors.append(f"layer.slice: need 0 <= lo < hi <= 100, got [{lo:g}, {hi:g}]")
    return (lo, hi)


def _date(key: str, value: Any, errors: list[str]) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        errors.append(f"{key}: an ISO date (YYYY-MM-DD), got {value!r}")
        return None
