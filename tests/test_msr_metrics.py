"""AUC and logloss against cases small enough to check on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hllm.msr.evaluate import auc, logloss, msr_metrics

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def test_auc_perfect_reversed_and_constant():
    y = [1, 0, 1, 0]
    assert auc(y, [0.9, 0.1, 0.8, 0.2]) == 1.0  # every positive above every negative
    assert auc(y, [0.1, 0.9, 0.2, 0.8]) == 0.0
    assert auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: each of 4 pairs counts 1/2


def test_auc_ties_count_half():
    # pairs (pos, neg): (.5,.5) tie -> 1/2, (.5,.1) 1, (.9,.5) 1, (.9,.1) 1 -> 3.5 / 4
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(0.875)


def test_auc_order_of_rows_does_not_matter_and_matches_pair_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(brute)
    perm = rng.permutation(200)
    assert auc(y[perm], s[perm]) == pytest.approx(brute)


def test_auc_single_class_is_nan():
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_logloss_hand_computed():
    # -(ln 0.8 + ln 0.6) / 2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx((0.2231435513 + 0.5108256238) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not inf


def test_msr_metrics_per_scenario():
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.6])
    scen = np.array([0, 0, 1, 1, 2, 2])
    m = msr_metrics(y, p, scen, ["a", "b", "c"])
    assert (m["auc/a"], m["auc/b"], m["auc/c"]) == (1.0, 0.0, 0.5)
    assert m["logloss/c"] == pytest.approx(-(math.log(0.6) + math.log(0.4)) / 2)
    # overall: positives .9, .2, .6 vs negatives .1, .8, .6:
    # .9 beats all 3; .2 beats .1 only; .6 beats .1 and ties .6 -> (3 + 1 + 1.5) / 9
    assert m["auc"] == pytest.approx(5.5 / 9)


def _resorting_bootstrap(labels, pa, pb, samples, seed, level=0.95):
    """The CTR bootstrap as it was: every resample's rows sorted again by `auc`."""
    from hllm.msr.evaluate import auc

    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, len(labels), size=len(labels))
        diffs[i] = auc(labels[idx], pa[idx]) - auc(labels[idx], pb[idx])
    lo, hi = np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": auc(labels, pa) - auc(labels, pb), "low": float(lo), "high": float(hi)}


@pytest.mark.parametrize("rows", [6, 300, 5000])
def test_auc_bootstrap_from_sorted_runs_equals_resorting_every_resample_bit_for_bit(rows):
    """Sorting once and weighting each resample's rows gives the interval the per-resample
    sort gave, exactly, with many tied scores (rounded probabilities) and, at 6 rows,
    resamples with one class only (NaN, skipped by the quantile in both)."""
    from hllm.msr.evaluate import paired_auc_bootstrap

    rng = np.random.default_rng(rows)
    labels = (rng.random(rows) < 0.3).astype(float)
    labels[:2] = [0.0, 1.0]
    pa = np.round(rng.random(rows) * 0.5 + labels * 0.2, 2)
    pb = np.round(rng.random(rows), 1)
    got = paired_auc_bootstrap(labels, pa, pb, samples=200, seed=5)
    assert got == _resorting_bootstrap(labels, pa, pb, samples=200, seed=5)
