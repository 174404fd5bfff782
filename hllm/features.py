"""Feature tables for the Feast repo in feature_repo/: write, apply, materialize, read.

    hllm features build --data ../shared/data/ml-100k --run runs/features

`build_features` copies the repo definitions into RUN/feature_repo, writes the Parquet
sources there (item text, item embeddings when given, and each user's history as of
every event), runs `feast apply` and materializes everything to the SQLite online store.
Training reads user histories through point-in-time-correct historical retrieval;
serving reads the online store.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hllm.data.item_text import item_prompt
from hllm.data.readers import RawData, read_dataset
from hllm.data.split import time_ordered

log = logging.getLogger(__name__)

REPO_TEMPLATE = Path(__file__).resolve().parents[1] / "feature_repo"
REPO_FILES = ("feature_store.yaml", "features.py")


def item_llm_embeddings(data: str, preset: str) -> tuple[list[str], np.ndarray]:
    """Raw item ids and their frozen Item LLM embeddings (through the embedding cache)."""
    import torch

    from hllm.config import load_config, replace
    from hllm.distributed import Dist
    from hllm.item_cache import load_or_compute_item_cache
    from hllm.models.hllm import HLLM
    from hllm.train import load_split

    cfg = replace(load_config(preset), {"item_llm.trainable": "frozen",
                                        "item_llm.standardize": False})
    split = load_split(data, cfg)
    torch.manual_seed(cfg.train.seed)
    model = HLLM(cfg, split.item_text)
    load_or_compute_item_cache(model, cfg, torch.device("cpu"), Dist())
    return split.item_raw_ids[1:], model.item_cache[1:].numpy()


@dataclass
class FeatureBuild:
    repo: Path
    counts: dict[str, int]
    seconds: float


def _ts(seconds: np.ndarray | int) -> pd.Series:
    return pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s", utc=True)


def item_text_table(raw: RawData, as_of: int) -> pd.DataFrame:
    fields = [c for c in raw.items.columns if c != "item_id"]
    texts = [item_prompt({f: str(row[f]) for f in fields}, prompt="")
             for _, row in raw.items.iterrows()]
    return pd.DataFrame({"item_id": raw.items["item_id"].astype(str), "text": texts,
                         "event_timestamp": _ts(np.full(len(texts), as_of))})


def item_embedding_table(item_ids: list[str], embeddings: np.ndarray | None, as_of: int) -> pa.Table:
    """Arrow table with an explicit list<float32> type, so an empty table still has a schema."""
    ids = item_ids if embeddings is not None else []
    vectors = [] if embeddings is None else [row.astype(np.float32).tolist() for row in embeddings]
    return pa.table({"item_id": pa.array(ids, pa.string()),
                     "embedding": pa.array(vectors, pa.list_(pa.float32())),
                     "event_timestamp": pa.array(_ts(np.full(len(ids), as_of)), pa.timestamp("s", "UTC"))})


def user_history_table(raw: RawData, max_len: int) -> pd.DataFrame:
    """One row per event: the user's last `max_len` items up to and including that event."""
    inter = time_ordered(raw.interactions[["user_id", "item_id", "timestamp"]])
    rows = []
    for user, group in inter.groupby("user_id", sort=False):
        items, stamps = group["item_id"].astype(str).tolist(), group["timestamp"].tolist()
        for i in range(len(items)):
            lo = max(0, i + 1 - max_len)
            rows.append((str(user), items[lo: i + 1], stamps[lo: i + 1], i + 1 - lo, stamps[i]))
    frame = pd.DataFrame(rows, columns=["user_id", "item_ids", "timestamps", "length", "ts"])
    # Several events of one user can share a second; keep the last (it includes the others).
    frame = frame.drop_duplicates(["user_id", "ts"], keep="last")
    frame["event_timestamp"] = _ts(frame.pop("ts").to_numpy())
    return frame


def _apply(store, repo: Path) -> None:
    """`feast apply` in-process: Feast imports the repo's modules by name from the cwd."""
    import sys

    from feast.repo_operations import apply_total

    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    for name in REPO_FILES:  # a previous build's module must not shadow this repo's
        sys.modules.pop(Path(name).stem, None)
    try:
        os.chdir(repo)
        apply_total(store.config, repo, skip_source_validation=False)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))


def build_features(data: str, run_dir: str | Path, max_history: int = 50,
                   embeddings: np.ndarray | None = None,
                   embedding_ids: list[str] | None = None) -> FeatureBuild:
    """Write the sources, apply the repo and materialize the online store under RUN/feature_repo."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    t0 = time.perf_counter()
    raw = read_dataset(data)
    repo = Path(run_dir) / "feature_repo"
    (repo / "data").mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        shutil.copy(REPO_TEMPLATE / name, repo / name)
    first = int(raw.interactions["timestamp"].min()) - 1  # items exist before any event
    text = item_text_table(raw, first)
    text.to_parquet(repo / "data" / "item_text.parquet", index=False)
    emb = item_embedding_table(embedding_ids or text["item_id"].tolist(), embeddings, first)
    pq.write_table(emb, repo / "data" / "item_embedding.parquet")
    history = user_history_table(raw, max_history)
    history.to_parquet(repo / "data" / "user_history.parquet", index=False)
    store = FeatureStore(repo_path=str(repo))
    _apply(store, repo)
    end = datetime.fromtimestamp(int(raw.interactions["timestamp"].max()) + 1, tz=timezone.utc)
    store.materialize(start_date=datetime.fromtimestamp(first - 1, tz=timezone.utc) - timedelta(days=1),
                      end_date=end)
    counts = {"item_text": len(text), "item_embedding": emb.num_rows, "user_history": len(history),
              "users": int(history["user_id"].nunique())}
    seconds = time.perf_counter() - t0
    log.info("features built in %.1f s: %s", seconds, counts)
    return FeatureBuild(repo, counts, seconds)
