"""The ranking task: full-ranking recommenders (HLLM, SASRec), judged per user.

Evidence is the test split's metrics.json plus, per test user, the rank of the held-out
item (test_ranks.npy, written by `hllm train` / `hllm evaluate`) and, when evaluated
with segments, which segments the user's target falls in (test_segments.npz). The
gate's rules for it:

* against the champion: the lower end of a paired bootstrap interval over users of the
  primary metric's difference must clear min_uplift; every other metric must stay
  above its own bar (default: -tolerance);
* against the ID baseline: gate.segments rules, each on that segment's users only.

Registration is hllm.ranking_registration; this module assembles the Task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hllm.gate_rules import Check, Evidence, TaskRules, read_metrics
from hllm.ranking_registration import plan
from hllm.segments import load_masks
from hllm.tasks import Task

METRICS = ("recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")
RANKS_FILE = "test_ranks.npy"
SEGMENTS_FILE = "test_segments.npz"
WRITER = "per-user test_ranks.npy (written by `hllm train`/`hllm evaluate`)"


def read_evidence(directory: Path, label: str) -> Evidence:
    """metrics.json, test_ranks.npy and, when present, test_segments.npz."""
    metrics = read_metrics(directory, RANKS_FILE, WRITER)
    seg_file = directory / SEGMENTS_FILE
    return Evidence(label, metrics, ranks=np.load(directory / RANKS_FILE, allow_pickle=False),
                    segments=load_masks(seg_file) if seg_file.is_file() else None)


def ranking_rules(cfg) -> TaskRules:
    """Full-ranking evidence: paired bootstrap over users; other metrics within tolerance."""
    # hllm.evaluate imports torch; validating an A/B config loads this task (gate.segments)
    # and must not pay for it, so the statistics are imported when the gate judges.
    from hllm.evaluate import paired_bootstrap

    g = cfg.gate

    def bootstrap(a: Evidence, b: Evidence) -> dict[str, float]:
        return paired_bootstrap(a.ranks, b.ranks, g.primary_metric, samples=g.bootstrap_samples,
                                seed=g.seed, level=g.confidence)

    def vs_champion(chal: Evidence, champ: Evidence) -> list[Check]:
        checks = []
        for metric in METRICS:
            if metric == g.primary_metric or metric not in chal.metrics or metric not in champ.metrics:
                continue
            diff = float(chal.metrics[metric]) - float(champ.metrics[metric])
            floor = g.min_uplift.get(metric, -g.tolerance)
            checks.append(Check(f"no regression {metric}", diff >= floor,
                                f"{metric} diff {diff:+.4f} (must be >= {floor:+.4f})",
                                {"diff": diff, "bar": floor}))
        return checks

    def vs_baseline(chal: Evidence, base: Evidence) -> list[Check]:
        return [segment_check(name, rule, chal, base, g, "ID baseline")
                for name, rule in g.segments.items()]

    return TaskRules("ID baseline", bootstrap, vs_champion, vs_baseline)


def segment_check(segment: str, rule: dict[str, float], chal: Evidence, other: Evidence,
                  g, who: str) -> Check:
    """gate.segments[segment] on the primary metric, over that segment's users only.

    `min_uplift`: the lower end of the paired bootstrap interval must exceed it (a win
    beyond the noise); `tolerance`: the difference may not be below -tolerance (no loss
    beyond it). "overall" is every user. Refuses, naming the segment, when the evidence
    has no per-user segments or the segment has no users on this split.
    """
    from hllm.evaluate import paired_bootstrap, per_user_metric  # torch: see ranking_rules

    metric, name = g.primary_metric, f"segment {segment} vs {who}"
    if segment == "overall":
        mask = np.ones(len(chal.ranks), dtype=bool)
    elif chal.segments is None:
        return Check(name, False, f"segment {segment}: {chal.label} has no per-user segments "
                                  "(test_segments.npz); evaluate it again with `hllm evaluate`")
    else:
        mask = chal.segments.get(segment)
        if mask is None:
            return Check(name, False, f"segment {segment}: not in {chal.label}'s evaluation")
    n = int(mask.sum())
    if n == 0:
        return Check(name, False, f"segment {segment}: no users on this split (for a cold segment, "
                                  "hold items out with data.cold_items)", {"users": 0})
    ci = paired_bootstrap(chal.ranks[mask], other.ranks[mask], metric,
                          samples=g.bootstrap_samples, seed=g.seed, level=g.confidence)
    rules, passed = [], True
    if "min_uplift" in rule:
        passed &= ci["low"] > rule["min_uplift"]
        rules.append(f"CI lower end must exceed {rule['min_uplift']:+.4f}")
    if "tolerance" in rule:
        passed &= ci["diff"] >= -rule["tolerance"]
        rules.append(f"diff must be >= {-rule['tolerance']:+.4f}")
    a = float(per_user_metric(chal.ranks[mask], metric).mean())
    b = float(per_user_metric(other.ranks[mask], metric).mean())
    return Check(name, bool(passed),
                 f"segment {segment} ({n} users): {metric} {a:.4f} vs {who} {b:.4f}, diff "
                 f"{ci['diff']:+.4f}, {g.confidence:.0%} CI {ci['low']:+.4f}..{ci['high']:+.4f}; "
                 + " and ".join(rules), {**ci, "users": n, **rule})


TASK = Task(name="ranking", default_model="hllm", evidence=RANKS_FILE, evidence_writer=WRITER,
            read_evidence=read_evidence, gate_rules=ranking_rules,
            plan_registration=plan, optional_evidence=(SEGMENTS_FILE,),
            segments=True, endpoint="hllm.online.endpoints:RecommendEndpoint")
