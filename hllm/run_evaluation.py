"""Scoring a model on its split's validation and test users, and writing what the gate reads.

Training ends with it (after reloading the best weights) and `hllm evaluate` runs it on
a saved run: one object for both, so the two write the same numbers. Under DDP or FSDP
each rank scores a slice of the users and the slices are joined.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hllm.config import Config
from hllm.data.split import SplitData
from hllm.distributed import Dist
from hllm.evaluate import metrics_from_ranks, user_ranks
from hllm.models.base import SequentialRecommender
from hllm.precision import autocast_context
from hllm.segments import save_masks, segment_masks, segment_metrics


@dataclass
class Scores:
    """Test and validation metrics (each with its segments) and the per-user evidence."""

    test: dict[str, Any]
    valid: dict[str, Any]
    test_ranks: np.ndarray
    test_segments: dict[str, np.ndarray]
    split_sha256: str
    num_users: int
    num_items: int

    def result(self, *, model: str, preset: str, best_epoch: int, epochs_run: int,
               world_size: int, deterministic: bool | None, timings: dict[str, float],
               history: list[dict[str, Any]]) -> dict[str, Any]:
        """metrics.json: the test metrics at the top level, then the run's record."""
        return {**self.test, "valid": self.valid, "model": model, "preset": preset,
                "best_epoch": best_epoch, "epochs_run": epochs_run,
                "num_users": self.num_users, "num_items": self.num_items,
                "split_sha256": self.split_sha256, "world_size": world_size,
                "deterministic": deterministic, "timings": timings, "history": history}


@dataclass
class Evaluation:
    """Full-ranking scores of `model` on `split`'s users, in the run's precision."""

    model: SequentialRecommender
    split: SplitData
    cfg: Config
    device: torch.device
    dist: Dist
    progress: bool = False
    fsdp: bool = False  # sharded parameters: every rank must run the same number of batches

    def ranks(self, stage: str) -> np.ndarray:
        """Rank of each user's held-out `stage` item among all items."""
        users = list(range(self.split.num_users))[self.dist.rank::self.dist.world_size]
        real = len(users)
        if self.fsdp:
            # Every forward all-gathers parameters, so all ranks must run the same number of
            # batches: pad the shorter slices with user 0 and drop those ranks afterwards.
            users += [0] * (math.ceil(self.split.num_users / self.dist.world_size) - real)
        with autocast_context(self.cfg, self.device):
            mine = user_ranks(self.model, self.split, stage, max_len=self.cfg.data.max_history,
                              device=self.device, batch_size=self.cfg.train.eval_batch_size,
                              users=users, progress=self.progress)[:real]
        if not self.dist.enabled:
            return mine
        import torch.distributed as dist  # only under torchrun

        parts: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(parts, mine)
        return np.concatenate(parts)

    def metrics(self, stage: str) -> dict[str, float]:
        return metrics_from_ranks(self.ranks(stage))

    def score(self) -> Scores:
        """Test, then validation: every metric and every segment."""
        test_ranks, valid_ranks = self.ranks("test"), self.ranks("valid")
        test_segments = segment_masks(self.split, "test")
        test = {**metrics_from_ranks(test_ranks),
                "segments": segment_metrics(test_ranks, test_segments)}
        valid = {**metrics_from_ranks(valid_ranks),
                 "segments": segment_metrics(valid_ranks, segment_masks(self.split, "valid"))}
        return Scores(test, valid, test_ranks, test_segments, self.split.fingerprint(),
                      self.split.num_users, self.split.num_items)


def write_evidence(out: Path, result: dict[str, Any], scores: Scores) -> None:
    """metrics.json, test_ranks.npy and test_segments.npz: what the gate and reports read."""
    write_json(out / "metrics.json", result)
    np.save(out / "test_ranks.npy", scores.test_ranks)
    save_masks(out / "test_segments.npz", scores.test_segments)


def write_json(path: Path, obj: Any) -> None:
    """JSON written beside and renamed in: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value)}")
