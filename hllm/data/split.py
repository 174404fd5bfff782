"""Raw tables -> per-user, time-ordered item sequences and a leave-one-out split.

Order of operations: de-duplicate, k-core filter, drop users too short to split,
sort each user's events by (timestamp, order in the file), map ids to 1..N (0 is
padding), then per user: last item = test, second to last = validation, the rest =
training. The tie rule matters: on ml-100k 415 of 943 users have equal timestamps on
their last two interactions, and a stable sort keeps the file order for them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hllm.config import DataConfig
from hllm.data.readers import RawData
from hllm.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """Everything training and evaluation need, with items as contiguous ints 1..num_items."""

    item_raw_ids: list[str]  # index i -> raw item id; index 0 is padding ("")
    user_raw_ids: list[str]
    sequences: list[np.ndarray]  # per user: the full time-ordered item sequence
    item_text: list[dict[str, str]]  # index i -> {field: value}; index 0 empty
    text_fields: tuple[str, ...]
    # Items held out by data.cold_items: test targets only, never in training (not even as
    # sampled negatives: a model must not learn anything about them from interactions).
    cold_items: tuple[int, ...] = ()
    # Per user, each event's time in microseconds: the epoch second plus the event's place
    # among the user's events of that second (file order). Unique per user, so a
    # point-in-time lookup as of an event sees exactly the events up to it (hllm.feast_windows).
    event_times: list[np.ndarray] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.item_raw_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    def train_items(self, user: int) -> np.ndarray:
        return self.sequences[user][:-2]

    def history(self, user: int, stage: str) -> np.ndarray:
        """Every item before the target of `stage` ("valid" or "test"), oldest first."""
        return self.sequences[user][:-2] if stage == "valid" else self.sequences[user][:-1]

    def target(self, user: int, stage: str) -> int:
        return int(self.sequences[user][-2] if stage == "valid" else self.sequences[user][-1])

    def train_windows(self, max_len: int) -> list[np.ndarray]:
        """Training sequences: each user's training items cut into windows of max_len + 1.

        Windows are taken from the most recent end, so the oldest remainder is the one
        that may be short; windows with fewer than 2 items (nothing to predict) are dropped.
        """
        windows = []
        for user in range(self.num_users):
            items = self.train_items(user)
            for end in range(len(items), 1, -(max_len + 1)):
                window = items[max(0, end - max_len - 1):end]
                if len(window) >= 2:
                    windows.append(window)
        return windows

    def fingerprint(self) -> str:
        """sha256 of the split (item ids and every user's sequence): same hash, same split."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.item_raw_ids).encode())
        for user, seq in zip(self.user_raw_ids, self.sequences):
            h.update(user.encode())
            h.update(np.asarray(seq, dtype=np.int64).tobytes())
        return h.hexdigest()


def build_split(raw: RawData, cfg: DataConfig) -> SplitData:
    inter, cold = prepared_interactions(raw, cfg)
    # Cold items stay in the catalog even when no test target is one: ranking is over all items.
    item_raw = sorted(set(pd.unique(inter["item_id"])) | set(cold), key=_natural_key)
    item_index = {raw_id: i + 1 for i, raw_id in enumerate(item_raw)}
    inter["item"] = inter["item_id"].map(item_index).astype(np.int64)
    inter["event_time"] = event_microseconds(inter)
    users, sequences, times = [], [], []
    for user_id, group in inter.groupby("user_id", sort=False):
        users.append(str(user_id))
        sequences.append(group["item"].to_numpy())
        times.append(group["event_time"].to_numpy())
    order = sorted(range(len(users)), key=lambda i: _natural_key(users[i]))
    users = [users[i] for i in order]
    sequences = [sequences[i] for i in order]
    times = [times[i] for i in order]

    fields = cfg.text_fields or tuple(c for c in raw.items.columns if c != "item_id")
    unknown = [f for f in fields if f not in raw.items.columns]
    if unknown:
        raise DataError(f"{raw.files.get('items')}: text field(s) {', '.join(unknown)} not in the item "
                        f"table (columns: {', '.join(raw.items.columns)}); fix data.text_fields")
    table = raw.items.set_index("item_id")
    texts: list[dict[str, str]] = [{}]
    missing = 0
    for raw_id in item_raw:
        if raw_id in table.index:
            row = table.loc[raw_id]
            texts.append({f: str(row[f]) for f in fields})
        else:
            missing += 1
            texts.append({})
    if missing:
        # The reference code gives such items an empty text (BOS only); keep that, but say so.
        log.warning("%d item(s) in the interactions have no row in the item table; "
                    "they are encoded from an empty text", missing)
    cold_index = tuple(sorted(item_index[c] for c in cold))
    return SplitData(["", *map(str, item_raw)], users, sequences, texts, tuple(fields), cold_index,
                     times)


def prepared_interactions(raw: RawData, cfg: DataConfig) -> tuple[pd.DataFrame, list]:
    """The interactions a split is cut from, time-ordered, and the held-out cold item ids.

    Also what the feature build writes user histories from, so that the histories in the
    feature store are the ones training reads.
    """
    inter = raw.interactions[["user_id", "item_id", "timestamp"]].copy()
    if cfg.dedupe:
        before = len(inter)
        inter = inter.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
        if len(inter) < before:
            log.info("dropped %d exact duplicate (user, item, timestamp) rows", before - len(inter))
    if cfg.k_core > 0:
        inter = k_core(inter, cfg.k_core)
    cold: list = []
    if cfg.cold_items:
        inter, cold = hold_out_cold_items(inter, cfg.cold_items)
    counts = inter.groupby("user_id")["item_id"].transform("size")
    short = counts < cfg.min_user_interactions
    if short.any():
        # Leave-one-out needs a training item, a validation item and a test item.
        log.warning("dropping %d user(s) with fewer than %d interactions (cannot be split)",
                    inter.loc[short, "user_id"].nunique(), cfg.min_user_interactions)
        inter = inter[~short]
    if inter.empty:
        raise DataError(f"{raw.files.get('interactions')}: no user has at least "
                        f"{cfg.min_user_interactions} interactions after filtering "
                        f"(k_core={cfg.k_core}); nothing to train or evaluate on")
    return time_ordered(inter), cold


def event_microseconds(ordered: pd.DataFrame) -> np.ndarray:
    """Each event's time in microseconds, ties within a user's second in their given order.

    `ordered` is time_ordered. Events of one user in one second (common: ml-100k users
    rate several films per second) get +0, +1, +2 us, so each has a time of its own and
    the order training uses (file order) is the order of time.
    """
    rank = ordered.groupby(["user_id", "timestamp"], sort=False).cumcount().to_numpy()
    if len(rank) and rank.max() >= 1_000_000:
        raise DataError("a user has a million events in one second; event times cannot "
                        "keep them apart")
    return ordered["timestamp"].to_numpy(np.int64) * 1_000_000 + rank


def hold_out_cold_items(inter: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, list]:
    """Drop every interaction with the newest `fraction` of items except a user's last one.

    Items are ordered by first interaction (ties by id); the newest are "cold". A user whose
    last event is a cold item keeps it as the test target; every other cold interaction goes,
    so no cold item is in any training or validation sequence (nor in any history).
    Returns (filtered interactions, the cold item ids).
    """
    if not 0 < fraction < 1:
        raise DataError(f"data.cold_items={fraction}: a fraction of items in (0, 1)")
    first = inter.groupby("item_id")["timestamp"].min()
    by_id = {item: i for i, item in enumerate(sorted(first.index, key=_natural_key))}
    first = first.reset_index().assign(_key=lambda f: f["item_id"].map(by_id))
    newest = first.sort_values(["timestamp", "_key"], ascending=[False, False])
    cold = newest["item_id"].head(int(round(fraction * len(newest)))).tolist()
    ordered = time_ordered(inter)
    last = ordered.groupby("user_id", sort=False).cumcount(ascending=False) == 0
    is_cold = ordered["item_id"].isin(set(cold))
    kept = ordered[~is_cold | last]
    log.info("data.cold_items=%g: %d newest items held out of training and validation; "
             "%d interactions dropped, %d users have a cold test target", fraction, len(cold),
             int((is_cold & ~last).sum()), int((is_cold & last).sum()))
    return kept, cold


def time_ordered(inter: pd.DataFrame) -> pd.DataFrame:
    """Events grouped by user, by timestamp, ties kept in file order (explicit tie-break)."""
    rows = np.arange(len(inter))
    return (inter.assign(_row=rows).sort_values(["user_id", "timestamp", "_row"])
            .drop(columns="_row"))


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least k interactions each."""
    while True:
        user_n = inter.groupby("user_id")["item_id"].transform("size")
        item_n = inter.groupby("item_id")["user_id"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def _natural_key(value: str) -> tuple[int, int | str]:
    """Numeric ids sort as numbers ("2" < "10"), others as strings, numbers first."""
    return (0, int(value)) if str(value).isdigit() else (1, str(value))
