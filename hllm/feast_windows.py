"""Training windows read from the feature store by point-in-time retrieval.

    hllm train --feature-repo runs/r/features ...   (the pipeline's train steps do this)

The in-memory path cuts each user's training items into windows of max_history + 1
(SplitData.train_windows). Here each window is instead the `user_history` row Feast
returns as of the window's last event: the history known at that moment, never a later
event. Every event in the repo has a time of its own (the epoch second plus its place
among the user's events of that second, hllm.data.split.event_microseconds), so the row
as of an event holds exactly the events up to it, and the windows equal the in-memory
ones item for item when the repo was built from the same data settings
(`hllm features build --config`, the run's data section). The repo's manifest records
them, and a repo built otherwise is refused with the differing keys named, instead of
training on other histories.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from hllm.config import DataConfig
from hllm.data.split import SplitData
from hllm.errors import ConfigError, DataError
from hllm.features import ID_SEPARATOR, MANIFEST, feature_repo_dir

log = logging.getLogger(__name__)


def window_ends(split: SplitData, max_len: int) -> list[tuple[int, int]]:
    """(user, end) of every training window, in SplitData.train_windows' order."""
    ends = []
    for user in range(split.num_users):
        items = split.train_items(user)
        for end in range(len(items), 1, -(max_len + 1)):
            if min(end, max_len + 1) >= 2:
                ends.append((user, end))
    return ends


def check_repo(repo: Path, data_cfg: DataConfig, max_len: int) -> None:
    """Refuse a repo whose histories are not the ones this run's windows are cut from."""
    manifest = json.loads((repo / MANIFEST).read_text())
    built = manifest.get("history_data_config")
    if built is None:
        raise ConfigError(f"{repo}: its user histories were built from every interaction as "
                          "read, not from a training run's data settings; rebuild it with "
                          "`hllm features build --config` (the run's config) to train from it")
    wanted = asdict(data_cfg)
    differ = sorted(k for k in wanted.keys() | built.keys()
                    if json.dumps(wanted.get(k)) != json.dumps(built.get(k)))
    if differ:
        raise ConfigError(f"{repo}: histories built with other data settings than this run's: "
                          + "; ".join(f"data.{k} {built.get(k)!r} there, {wanted.get(k)!r} here"
                                      for k in differ))
    if manifest.get("max_history", 0) < max_len + 1:
        raise ConfigError(f"{repo}: histories of {manifest.get('max_history')} items; training "
                          f"windows need {max_len + 1} (data.max_history + 1): rebuild it with "
                          f"--max-history {max_len + 1}")


def training_histories_as_of(repo: Path, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time retrieval of user_history_training for (user_id, event_timestamp) rows."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    return store.get_historical_features(entity_df=entity_df,
                                         features=["user_history_training:item_ids"]).to_df()


def feature_store_windows(repo: str | Path, split: SplitData, data_cfg: DataConfig,
                          max_len: int) -> list[np.ndarray]:
    """SplitData.train_windows(max_len), read from the feature repo's offline store."""
    repo = feature_repo_dir(repo)
    check_repo(repo, data_cfg, max_len)
    if len(split.event_times) != split.num_users:
        raise ValueError("the split carries no event times (built by hllm.data.split.build_split?)")
    t0 = time.perf_counter()
    ends = window_ends(split, max_len)
    entity_df = pd.DataFrame({
        "user_id": [split.user_raw_ids[u] for u, _ in ends],
        "event_timestamp": pd.to_datetime(
            np.array([split.event_times[u][end - 1] for u, end in ends], dtype=np.int64),
            unit="us", utc=True),
        "window": np.arange(len(ends)),
    })
    frame = training_histories_as_of(repo, entity_df).sort_values("window")
    index = {raw: i for i, raw in enumerate(split.item_raw_ids) if i}
    windows = []
    for (user, end), item_ids in zip(ends, frame["item_ids"]):
        want = min(end, max_len + 1)
        got = [] if not isinstance(item_ids, str) else item_ids.split(ID_SEPARATOR)[-want:]
        try:
            window = np.array([index[i] for i in got], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{repo}: user {split.user_raw_ids[user]}'s history holds item "
                            f"{exc.args[0]!r}, which is not in this run's catalogue") from None
        if len(window) != want:
            raise DataError(f"{repo}: user {split.user_raw_ids[user]} has {len(window)} items "
                            f"in the store as of event {end}, {want} expected; the repo was "
                            "built from other data")
        windows.append(window)
    log.info("%d training windows read from the feature store in %.1f s", len(windows),
             time.perf_counter() - t0)
    return windows
