"""Full-ranking evaluation: every user's target is ranked against ALL items.

Protocol (as the public HLLM evaluator and RecBole): item vectors are computed once
per evaluation and cached; a user's vector is the user tower's output at the last
position of their history (the most recent `max_history` items); scores are cosine
similarities; item 0 (padding) and every item already in the user's full history are
masked out, because a next-item recommender is not asked to re-recommend what the
user has seen, and because the published numbers we compare with do the same. The
target itself is never masked, so a repeat consumption still counts if ranked.
Rank = 1 + (items scoring higher) + (other items scoring exactly the same) / 2: the
expected rank under random tie-breaking, so a collapsed model that scores every item
alike ranks the target mid-table instead of first.
Recall@K is the hit rate (one target per user), NDCG@K = 1 / log2(rank + 1).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hllm.data.split import SplitData
from hllm.models.base import SequentialRecommender

KS = (10, 50, 200)


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor,
                    histories: Sequence[Iterable[int]]) -> torch.Tensor:
    """(B, N) scores, (B,) targets, per-row history ids -> (B,) 1-based (expected) ranks."""
    scores = scores.clone()
    scores[:, 0] = -math.inf  # padding item
    rows = [torch.full((len(h),), b, dtype=torch.long) for b, h in enumerate(histories)]
    if rows:
        cols = torch.as_tensor(np.concatenate([np.asarray(list(h), dtype=np.int64) for h in histories]))
        rows_t = torch.cat(rows).to(scores.device)
        target_scores = scores.gather(1, targets[:, None]).clone()
        scores[rows_t, cols.to(scores.device)] = -math.inf
        scores.scatter_(1, targets[:, None], target_scores)  # never mask the target itself
    target_scores = scores.gather(1, targets[:, None])
    higher = (scores > target_scores).sum(1)
    ties = (scores == target_scores).sum(1) - 1  # the target ties with itself
    return 1 + higher + ties / 2


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks + 1), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def _history_batch(split: SplitData, users: Sequence[int], stage: str, max_len: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) item ids of each user's most recent `max_len` history items."""
    hists = [split.history(u, stage)[-max_len:] for u in users]
    width = max(len(h) for h in hists)
    ids = torch.zeros(len(hists), width, dtype=torch.long)
    for b, h in enumerate(hists):
        ids[b, : len(h)] = torch.tensor(h)
    return ids.to(device), (ids > 0).to(device)


@torch.no_grad()
def user_ranks(model: SequentialRecommender, split: SplitData, stage: str, *, max_len: int,
               device: torch.device, batch_size: int = 256, users: Sequence[int] | None = None,
               progress: bool = True) -> np.ndarray:
    """1-based rank of each user's `stage` target ("valid" or "test") among all items."""
    was_training = model.training
    model.eval()
    table = model.all_item_vectors(split.num_items, device)  # (N+1, D), computed once
    items = F.normalize(table.float(), dim=-1)
    users = list(range(split.num_users)) if users is None else list(users)
    ranks = np.empty(len(users), dtype=np.float64)
    bar = tqdm(total=len(users), desc=f"evaluate {stage}", unit="user", disable=not progress,
               mininterval=2.0)
    for start in range(0, len(users), batch_size):
        chunk = users[start: start + batch_size]
        ids, mask = _history_batch(split, chunk, stage, max_len, device)
        states = model.user_states(table[ids], mask)  # (B, L, D)
        last = mask.sum(1) - 1
        user_vec = F.normalize(states[torch.arange(len(chunk), device=device), last].float(), dim=-1)
        scores = user_vec @ items.T  # (B, N+1)
        targets = torch.as_tensor([split.target(u, stage) for u in chunk], device=device)
        ranks[start: start + len(chunk)] = rank_of_targets(
            scores, targets, [split.history(u, stage) for u in chunk]).cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return ranks


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's contribution to `metric` ("ndcg@10", "recall@50", "mrr")."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if metric == "mrr":
        return 1.0 / ranks
    name, _, k = metric.partition("@")
    hit = ranks <= int(k)
    if name == "recall":
        return hit.astype(np.float64)
    if name == "ndcg":
        return np.where(hit, 1.0 / np.log2(ranks + 1), 0.0)
    raise ValueError(f"unknown metric {metric!r}")


BOOTSTRAP_CHUNK = 1 << 22  # resampled indices held at once: 32 MB of int64, plus their values


def paired_bootstrap(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str = "ndcg@10",
                     samples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Difference a - b of a metric over the same users, with a paired bootstrap interval.

    Users are resampled with replacement and both models are scored on the same resample,
    so the interval reflects how much the difference depends on which users were drawn.

    The resamples are drawn a few at a time (at most BOOTSTRAP_CHUNK indices at once):
    all of them together are samples x users integers, 16 GB at 1M users and 2,000
    samples. Drawn in row blocks from one generator they are the same numbers, and each
    resample's mean is computed alone either way, so the interval is bit for bit the one
    the all-at-once draw gives (tested).
    """
    a, b = per_user_metric(ranks_a, metric), per_user_metric(ranks_b, metric)
    if a.shape != b.shape:
        raise ValueError("rank arrays differ in length: not the same evaluation users")
    per_user = a - b  # (a - b)[idx] equals a[idx] - b[idx] exactly
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    rows = max(1, BOOTSTRAP_CHUNK // max(1, len(a)))
    for start in range(0, samples, rows):
        stop = min(samples, start + rows)
        idx = rng.integers(0, len(a), size=(stop - start, len(a)))
        diffs[start:stop] = per_user[idx].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi)}
