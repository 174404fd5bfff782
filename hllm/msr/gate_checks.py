"""The promotion gate's checks for CTR models (gate.task: ctr), judged per scenario.

Called by hllm.gate.decide; everything else (registry reads, aliases, the decision run,
the rollout plan) is the shared gate. Evidence is the test split's per-row label,
probability and scenario (RUN/test_predictions.npz), so the checks are:

* first model ever: `absolute` floors (e.g. auc, or auc/<scenario>);
* against the champion, on the same split: the lower end of a paired bootstrap interval
  (over test rows) of the overall AUC difference must exceed min_uplift[auc]; no
  scenario's AUC may drop by more than `tolerance`, nor logloss rise by more;
* against the baseline (the backbone without LLM4MSR, trained on the same split): the
  overall AUC must be higher (gate.baseline_margin: point) or its bootstrap interval
  clear of zero (interval), and no scenario's AUC more than `tolerance` lower.
"""

from __future__ import annotations

import math

from hllm.experiment import ABConfig
from hllm.gate import Check, Evidence, baseline_rule
from hllm.msr.evaluate import paired_auc_bootstrap


def _scenarios(ev: Evidence) -> list[str]:
    return list(ev.metrics.get("scenarios") or
                sorted(k.split("/", 1)[1] for k in ev.metrics if k.startswith("auc/")))


def _per_scenario(chal: Evidence, other: Evidence, who: str, tolerance: float) -> list[Check]:
    checks = []
    for name in _scenarios(chal):
        a, b = chal.metrics.get(f"auc/{name}"), other.metrics.get(f"auc/{name}")
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            checks.append(Check(f"auc/{name} vs {who}", False,
                                f"scenario {name}: no AUC to compare ({a} vs {b})"))
            continue
        diff = float(a) - float(b)
        checks.append(Check(f"auc/{name} vs {who}", diff >= -tolerance,
                            f"scenario {name}: AUC {a:.4f} vs {who} {b:.4f}, diff {diff:+.4f} "
                            f"(must be >= {-tolerance:+.4f})", {"diff": diff, "bar": -tolerance}))
    return checks


def decide_ctr(cfg: ABConfig, chal: Evidence, champ: Evidence | None,
               base: Evidence | None) -> list[Check]:
    g = cfg.gate
    primary = g.primary_metric
    checks: list[Check] = []

    def bootstrap(a: Evidence, b: Evidence) -> dict[str, float]:
        pa, pb = a.predictions or {}, b.predictions or {}
        if not (pa and pb) or len(pa["label"]) != len(pb["label"]) or \
                not (pa["label"] == pb["label"]).all():
            raise ValueError("test predictions are not over the same rows")
        return paired_auc_bootstrap(pa["label"], pa["probability"], pb["probability"],
                                    samples=g.bootstrap_samples, seed=g.seed, level=g.confidence)

    if champ is None:
        for metric, floor in g.absolute.items():
            value = float(chal.metrics.get(metric, math.nan))
            checks.append(Check(f"absolute {metric}", value >= floor,
                                f"first model: {metric} {value:.4f} vs floor {floor:.4f}",
                                {"value": value, "floor": floor}))
    elif chal.split != champ.split:
        checks.append(Check("same split", False,
                            f"evaluated on a different split than the champion "
                            f"({chal.split[:12]} vs {champ.split[:12]}); re-evaluate both on one split"))
    else:
        bar = g.min_uplift[primary]
        ci = bootstrap(chal, champ)
        checks.append(Check(
            f"uplift {primary}", ci["low"] > bar,
            f"AUC {chal.metrics['auc']:.4f} vs champion {champ.metrics['auc']:.4f}: diff "
            f"{ci['diff']:+.4f}, {g.confidence:.0%} CI {ci['low']:+.4f}..{ci['high']:+.4f}, lower "
            f"end must exceed {bar:+.4f}", {**ci, "bar": bar}))
        checks += _per_scenario(chal, champ, "champion", g.tolerance)
        diff = float(chal.metrics["logloss"]) - float(champ.metrics["logloss"])
        checks.append(Check("no regression logloss", diff <= g.tolerance,
                            f"logloss diff {diff:+.4f} (must be <= {g.tolerance:+.4f})",
                            {"diff": diff, "bar": g.tolerance}))
    if g.beat_baseline:
        if base is None:
            checks.append(Check("ahead of backbone baseline", False,
                                "no baseline evaluation given (--baseline: the backbone trained "
                                "without LLM4MSR); the gate requires one"))
        elif base.split != chal.split:
            checks.append(Check("ahead of backbone baseline", False,
                                f"the baseline was evaluated on a different split "
                                f"({base.split[:12]} vs {chal.split[:12]})"))
        else:
            ci = bootstrap(chal, base)
            ahead, rule = baseline_rule(g.baseline_margin, ci)
            checks.append(Check(
                "ahead of backbone baseline", ahead,
                f"AUC {chal.metrics['auc']:.4f} vs {base.metrics.get('model', 'baseline')} "
                f"{base.metrics['auc']:.4f}: diff {ci['diff']:+.4f} (CI {ci['low']:+.4f}.."
                f"{ci['high']:+.4f}), {rule}", ci))
            checks += _per_scenario(chal, base, "baseline", g.tolerance)
    return checks
