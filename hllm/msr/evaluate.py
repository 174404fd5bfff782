"""AUC and logloss, per scenario and overall: the metrics LLM4MSR reports (MODELS.md B.4).

AUC is the Mann-Whitney statistic: the probability that a random positive scores above
a random negative, ties counting one half. It is computed from average ranks, so tied
scores get the mean of the ranks they span (a model that scores everything alike
gets exactly 0.5). A split with only one class has no AUC (nan).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hllm.msr.data import MSRTensors

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int((labels == 1).sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank (1-based) over each run of equal scores, vectorised (the gate's
    # bootstrap calls this thousands of times).
    new_run = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2)[np.cumsum(new_run) - 1]
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Mean binary cross-entropy; probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def msr_metrics(labels: np.ndarray, probs: np.ndarray, scenarios: np.ndarray,
                names: list[str]) -> dict[str, float]:
    """{"auc": overall, "logloss": overall, "auc/<scenario>": ..., "logloss/<scenario>": ...}."""
    labels, probs, scenarios = map(np.asarray, (labels, probs, scenarios))
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}
    for i, name in enumerate(names):
        mask = scenarios == i
        out[f"auc/{name}"] = auc(labels[mask], probs[mask]) if mask.any() else math.nan
        out[f"logloss/{name}"] = logloss(labels[mask], probs[mask]) if mask.any() else math.nan
    return out


@torch.no_grad()
def predict(model: nn.Module, data: MSRTensors, device: torch.device | str = "cpu",
            batch_size: int = 4096) -> np.ndarray:
    """Click probabilities for every row of `data`, in order."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        out.append(torch.sigmoid(model(batch)[1]).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate_msr(model: nn.Module, data: MSRTensors, names: list[str],
                 device: torch.device | str = "cpu", batch_size: int = 4096) -> dict[str, float]:
    probs = predict(model, data, device, batch_size)
    return msr_metrics(data.label.numpy(), probs, data.scenario.numpy(), names)


class _SortedScores:
    """One model's scores sorted once, with their runs of equal scores, so that the AUC of
    any bootstrap resample is a weighted sum over the runs: O(rows), no sort per resample."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        ordered = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = labels[self.order] == 1

    def auc(self, weights: np.ndarray) -> float:
        """AUC of the rows repeated `weights` times; NaN with one class (as `auc`).

        Each positive outranks the negatives of lower runs and ties half of its own run's:
        integers and halves throughout, exact in float64 below 2**53, so it equals `auc`
        of the repeated rows bit for bit (tested).
        """
        w = weights[self.order].astype(np.float64)
        pos = np.add.reduceat(np.where(self.positive, w, 0.0), self.starts)
        neg = np.add.reduceat(np.where(self.positive, 0.0, w), self.starts)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float((pos * (below + neg / 2)).sum() / (n_pos * n_neg))


def paired_auc_bootstrap(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *,
                         samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same rows, with a paired bootstrap interval over rows.

    A resample is drawn as row indices (the same draws as ever) and scored as row counts
    on each model's scores sorted once, instead of sorting every resample again.
    """
    labels, probs_a, probs_b = (np.asarray(x, dtype=np.float64).ravel() for x in (labels, probs_a, probs_b))
    if not (len(labels) == len(probs_a) == len(probs_b)):
        raise ValueError("prediction arrays differ in length: not the same evaluation rows")
    rng = np.random.default_rng(seed)
    a, b = _SortedScores(labels, probs_a), _SortedScores(labels, probs_b)
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, len(labels), size=len(labels))
        counts = np.bincount(idx, minlength=len(labels))
        diffs[i] = a.auc(counts) - b.auc(counts)
    lo, hi = np.nanquantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": auc(labels, probs_a) - auc(labels, probs_b), "low": float(lo), "high": float(hi)}
