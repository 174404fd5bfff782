"""The statistics an A/B readout needs: ratio metrics over users, and the sample-ratio test.

Why per user: the unit of randomisation is the user (hllm.assignment hashes the user id),
so one user's exposures are not independent draws. A click-through rate is a ratio of two
per-user sums (clicked exposures / exposures); its variance comes from the delta method
over users (Deng, Lu & Litz 2018, "Applying the Delta Method in Metric Analytics"), which
is what a per-user bootstrap would approximate, in closed form. With one exposure per user
it reduces to the usual binomial interval.

The sample-ratio-mismatch (SRM) test is Pearson's chi-square of the users seen per arm
against the configured allocation: a mismatch means assignment or logging is broken, and
no metric of that experiment can be trusted (Fabijan et al. 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

SRM_ALPHA = 0.001  # the conventional threshold: false alarms once in a thousand readouts


@dataclass(frozen=True)
class Ratio:
    """sum(numerator) / sum(denominator) over users, with its delta-method variance."""

    value: float
    variance: float
    users: int
    numerator: float
    denominator: float

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        half = z_score(confidence) * math.sqrt(self.variance)
        return self.value - half, self.value + half


@dataclass(frozen=True)
class Change:
    """Treatment against control: a difference or a relative change, with its interval."""

    value: float
    low: float
    high: float


def z_score(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
    """Per-user sums in, the pooled ratio and its variance out (nan when no denominator)."""
    x = np.asarray(numerator, dtype=np.float64)
    n = np.asarray(denominator, dtype=np.float64)
    users = len(n)
    if users == 0 or n.sum() == 0:
        return Ratio(math.nan, math.nan, users, float(x.sum()), float(n.sum()))
    value = x.sum() / n.sum()
    if users < 2:
        return Ratio(value, math.nan, users, float(x.sum()), float(n.sum()))
    mean_n = n.mean()
    cov = np.cov(np.vstack([x, n]), ddof=1)
    variance = (cov[0, 0] - 2 * value * cov[0, 1] + value ** 2 * cov[1, 1]) / (users * mean_n ** 2)
    return Ratio(float(value), float(max(variance, 0.0)), users, float(x.sum()), float(n.sum()))


def difference(treatment: Ratio, control: Ratio, confidence: float = 0.95) -> Change:
    """treatment - control; the arms are independent samples of users."""
    value = treatment.value - control.value
    half = z_score(confidence) * math.sqrt(treatment.variance + control.variance)
    return Change(value, value - half, value + half)


def relative_change(treatment: Ratio, control: Ratio, confidence: float = 0.95) -> Change:
    """treatment / control - 1, by the delta method on the quotient of two independent ratios."""
    if not control.value or math.isnan(control.value):
        return Change(math.nan, math.nan, math.nan)
    value = treatment.value / control.value - 1
    variance = (treatment.variance / control.value ** 2
                + treatment.value ** 2 * control.variance / control.value ** 4)
    half = z_score(confidence) * math.sqrt(variance)
    return Change(value, value - half, value + half)


@dataclass(frozen=True)
class SampleRatio:
    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio(observed: dict[str, int], allocation: dict[str, float]) -> SampleRatio:
    """Chi-square of users per arm against the allocation (arms with a zero share left out)."""
    arms = [a for a, share in allocation.items() if share > 0]
    total_share = sum(allocation[a] for a in arms)
    counts = np.array([observed.get(a, 0) for a in arms], dtype=np.float64)
    shares = {a: allocation[a] / total_share for a in arms}
    if counts.sum() == 0:
        return SampleRatio({a: 0 for a in arms}, shares, math.nan, math.nan)
    expected = counts.sum() * np.array([shares[a] for a in arms])
    chi2, p = stats.chisquare(counts, expected)
    return SampleRatio({a: int(c) for a, c in zip(arms, counts)}, shares, float(chi2), float(p))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan
