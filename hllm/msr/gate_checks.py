"""The promotion gate's rules for CTR models (gate.task: ctr), judged per scenario.

Used by hllm.gate.decide, which applies them in the shared order; everything else (registry reads, aliases, the decision run,
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
from hllm.gate_rules import Check, Evidence, TaskRules
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


def ctr_rules(cfg: ABConfig) -> TaskRules:
    g = cfg.gate

    def bootstrap(a: Evidence, b: Evidence) -> dict[str, float]:
        pa, pb = a.predictions or {}, b.predictions or {}
        if not (pa and pb) or len(pa["label"]) != len(pb["label"]) or \
                not (pa["label"] == pb["label"]).all():
            raise ValueError("test predictions are not over the same rows")
        return paired_auc_bootstrap(pa["label"], pa["probability"], pb["probability"],
                                    samples=g.bootstrap_samples, seed=g.seed, level=g.confidence)

    def vs_champion(chal: Evidence, champ: Evidence) -> list[Check]:
        diff = float(chal.metrics["logloss"]) - float(champ.metrics["logloss"])
        return _per_scenario(chal, champ, "champion", g.tolerance) + [
            Check("no regression logloss", diff <= g.tolerance,
                  f"logloss diff {diff:+.4f} (must be <= {g.tolerance:+.4f})",
                  {"diff": diff, "bar": g.tolerance})]

    return TaskRules("backbone baseline", bootstrap, vs_champion,
                     lambda chal, base: _per_scenario(chal, base, "baseline", g.tolerance))
