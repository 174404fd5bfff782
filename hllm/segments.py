"""Evaluation segments: where a text-based recommender should differ from an ID model.

An ID model (SASRec) learns one vector per item from interactions, so it can only be as
good as an item's interaction count allows; HLLM reads the item's text, so its claim is
to help where those counts are small. Every evaluation therefore reports its metrics on
three groups of users, by the item they are asked to predict (the target):

* ``warm``: the target was seen in training (any user's training items);
* ``long_tail``: the target is among the 80% least-popular items by training
  interactions (items ordered by count, most popular first, ties by item index; the
  first 20% are the head, the rest the tail, never-seen items included);
* ``cold``: the target was never seen in training. `data.cold_items` holds the newest
  items out of training and validation so that this segment is large enough to measure.

Segments overlap (a cold target is also long-tail) and are computed from the split
alone, so every model evaluated on one split has the same segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hllm.data.split import SplitData

SEGMENTS = ("warm", "long_tail", "cold")
HEAD_SHARE = 0.2  # the most popular items; the remaining 80% are the long tail


def train_counts(split: SplitData) -> np.ndarray:
    """(num_items + 1,) interactions per item in every user's training items."""
    counts = np.zeros(split.num_items + 1, dtype=np.int64)
    for user in range(split.num_users):
        np.add.at(counts, split.train_items(user), 1)
    return counts


def long_tail_items(counts: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
    """(num_items + 1,) bool: item is outside the `head_share` most popular (row 0 False)."""
    items = np.arange(1, len(counts))
    order = items[np.lexsort((items, -counts[1:]))]  # most popular first, ties by index
    head = order[: int(round(head_share * len(items)))]
    tail = np.ones(len(counts), dtype=bool)
    tail[0] = False
    tail[head] = False
    return tail


def segment_masks(split: SplitData, stage: str = "test") -> dict[str, np.ndarray]:
    """Per segment, a (num_users,) bool mask of the users whose `stage` target is in it."""
    counts = train_counts(split)
    tail = long_tail_items(counts)
    targets = np.array([split.target(u, stage) for u in range(split.num_users)], dtype=np.int64)
    seen = counts[targets] > 0
    return {"warm": seen, "long_tail": tail[targets], "cold": ~seen}


def segment_metrics(ranks: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{segment: {"users": n, metric: value, ...}}; an empty segment's metrics are null."""
    from hllm.evaluate import metrics_from_ranks

    ranks = np.asarray(ranks, dtype=np.float64)
    keys = metrics_from_ranks(np.ones(1)).keys()
    out: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        if len(mask) != len(ranks):
            raise ValueError(f"segment {name!r}: {len(mask)} users, but {len(ranks)} ranks")
        n = int(mask.sum())
        out[name] = {"users": n, **(metrics_from_ranks(ranks[mask]) if n else dict.fromkeys(keys))}
    return out


def save_masks(path, masks: dict[str, np.ndarray]) -> None:
    """Write masks as an .npz (test_segments.npz, beside test_ranks.npy), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v, dtype=bool) for k, v in masks.items()})
    tmp.replace(path)


def load_masks(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].astype(bool) for k in z.files}


def segment_bootstrap(ranks_a: np.ndarray, ranks_b: np.ndarray, masks: dict[str, np.ndarray],
                      metric: str = "ndcg@10", **bootstrap: Any) -> dict[str, dict[str, float] | None]:
    """Paired bootstrap of a - b over all users ("overall") and within each segment.

    None for an empty segment. Keyword arguments go to `hllm.evaluate.paired_bootstrap`.
    """
    from hllm.evaluate import paired_bootstrap

    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    out: dict[str, dict[str, float] | None] = {
        "overall": paired_bootstrap(ranks_a, ranks_b, metric, **bootstrap)}
    for name, mask in masks.items():
        out[name] = (paired_bootstrap(ranks_a[mask], ranks_b[mask], metric, **bootstrap)
                     | {"users": int(mask.sum())}) if mask.any() else None
    return out
