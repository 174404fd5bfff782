"""Interactions -> multi-scenario CTR rows, a global time split, and model-ready tensors.

ml-100k has no scenarios, so we define them the way LLM4MSR's Amazon setting does
(scenario = product domain): an item's **genre group**. Each movie lists several
genres (alphabetically, so "the first genre" means nothing); it belongs to the first
group, in the priority order below, that contains any of its genres. The order goes
from the most specific audience to the broadest: a "Children's Comedy" is a family
film, an "Action Comedy" an action film, and Comedy/Drama/Romance is what remains.

    scenario      genres                                           items   rows   pos. rate
    family        Animation, Children's, Musical, Fantasy            172   10,862   0.493
    action        Action, Adventure, Sci-Fi, War, Western            356   35,264   0.562
    thriller      Thriller, Crime, Horror, Mystery, Film-Noir        281   16,931   0.574
    drama_comedy  Comedy, Drama, Romance, Documentary, unknown       873   36,943   0.555

Label: rating >= 4 is a click (1), ratings 1-3 are 0 (55.4% positives overall).
Split (data.split=time): one global time order (timestamp, then file order for ties);
the oldest 80% of rows train, the next 10% validate, the newest 10% test. Nothing from
a later period leaks into an earlier one, which also means later users/items can be
unseen in training (ids unseen in train map to index 0, "unknown"). data.split=random
shuffles the rows with data.split_seed first, as the multi-scenario benchmarks do.

Any other dataset can come as a table that already has `scenario` and `label`
columns: it is used as given, checked, and every problem named. `data.scenario_rule`
is `auto` by default: the table's own `scenario` column when it has one, genre groups
when it has none but its item table has a genre field (`class`, `genre` or `genres`).
Genres are matched ignoring case, punctuation and a plural or possessive "s" (so
"Children", "children's" and "CHILDRENS" are one genre), and every genre that matches
no group is reported. Labels are read by hllm.data.labels (0/1, 0.0/1.0, true/false).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hllm import storage
from hllm.data.labels import SPELLINGS, parse_labels
from hllm.data.readers import RawData, read_dataset, read_raw_table
from hllm.errors import DataError
from hllm.msr.config import MSRDataConfig

log = logging.getLogger(__name__)

GENRE_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("family", frozenset({"Animation", "Children's", "Musical", "Fantasy"})),
    ("action", frozenset({"Action", "Adventure", "Sci-Fi", "War", "Western"})),
    ("thriller", frozenset({"Thriller", "Crime", "Horror", "Mystery", "Film-Noir"})),
    ("drama_comedy", frozenset({"Comedy", "Drama", "Romance", "Documentary", "unknown"})),
)
FALLBACK_SCENARIO = "drama_comedy"  # items with no (known) genre
GENRE_FIELDS = ("class", "genre", "genres")  # ml-100k's RecBole file calls it `class`
SCENARIO_RULES = ("auto", "genre-group", "column")

# Shown to the LLM in the scenario-level prompt.
SCENARIO_DESCRIPTIONS: dict[str, str] = {
    "family": "family films: animation, children's films, musicals and fantasy",
    "action": "action films: action, adventure, science fiction, war and westerns",
    "thriller": "suspense films: thrillers, crime, horror, mystery and film noir",
    "drama_comedy": "drama and comedy films: dramas, comedies, romance and documentaries",
}

ROW_COLUMNS = ("user_id", "item_id", "scenario", "label", "timestamp")
SPLITS = ("train", "valid", "test")


@dataclass
class MSRRows:
    """CTR rows per split plus the side tables the prompts and feature fields need."""

    splits: dict[str, pd.DataFrame]  # train / valid / test, each with ROW_COLUMNS + fields
    scenarios: list[str]  # index = scenario id
    users: pd.DataFrame  # user_id + profile fields (may have only user_id)
    items: pd.DataFrame  # item_id + text fields (title, ...)
    fields: tuple[str, ...] = ()  # categorical feature columns present in the rows
    files: dict[str, str] = field(default_factory=dict)
    scenario_rule: str = "genre-group"  # the rule that made `scenario` (never "auto")


def genre_key(genre: str) -> str:
    """Case, punctuation and a final plural/possessive "s" removed: Children's == children."""
    key = re.sub(r"[^0-9a-z]", "", genre.lower())
    return key[:-1] if len(key) > 3 and key.endswith("s") else key


_GROUP_KEYS = tuple((name, frozenset(genre_key(g) for g in group)) for name, group in GENRE_GROUPS)


def split_genres(genres: str) -> list[str]:
    """RecBole's space-separated token_seq, or the `|` / `,` lists other exports use."""
    return [g for g in re.split(r"[\s|,]+", str(genres)) if g]


def genre_scenario(genres: str) -> str:
    """Scenario of one item from its genre list (see the module docstring)."""
    present = {genre_key(g) for g in split_genres(genres)}
    for name, group in _GROUP_KEYS:
        if present & group:
            return name
    return FALLBACK_SCENARIO


def unmatched_genres(genres: pd.Series) -> dict[str, int]:
    """Genre spelling -> number of items listing it, for genres in no group."""
    known = set().union(*(group for _, group in _GROUP_KEYS))
    counts: dict[str, int] = {}
    for value in genres.dropna():
        for genre in split_genres(value):
            if genre_key(genre) not in known:
                counts[genre] = counts.get(genre, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def genre_field(items: pd.DataFrame) -> str | None:
    return next((f for f in GENRE_FIELDS if f in items.columns), None)


def scenario_rule_for(raw: RawData, cfg: MSRDataConfig) -> str:
    """The rule `auto` stands for on this table; an explicit rule is kept."""
    if cfg.scenario_rule not in SCENARIO_RULES:
        raise DataError(f"data.scenario_rule must be one of {', '.join(SCENARIO_RULES)}, "
                        f"got {cfg.scenario_rule!r}")
    if cfg.scenario_rule != "auto":
        return cfg.scenario_rule
    if "scenario" in raw.interactions.columns:
        return "column"
    if genre_field(raw.items) is not None:
        return "genre-group"
    raise DataError(f"{raw.files.get('interactions', '?')}: no 'scenario' column, and the item "
                    f"table {raw.files.get('items', '?')} has no genre field "
                    f"({', '.join(GENRE_FIELDS)}) to group items into scenarios")


def adapt_movielens(raw: RawData, cfg: MSRDataConfig = MSRDataConfig()) -> MSRRows:
    """Genre groups as scenarios (ml-100k style); label from `label`, else rating >= threshold."""
    inter, items = raw.interactions, raw.items
    inter_path = raw.files["interactions"]
    genres = genre_field(items)
    if genres is None:
        raise DataError(f"{raw.files['items']}: no genre field ({', '.join(GENRE_FIELDS)}); the "
                        "genre-group scenario rule needs one")
    if "label" in inter.columns:
        label = _checked_labels(inter["label"], inter_path)
    elif "rating" in inter.columns:
        rating = pd.to_numeric(inter["rating"], errors="coerce")
        if rating.isna().any():
            row = int(rating.isna().to_numpy().nonzero()[0][0])
            raise DataError(f"{inter_path}: column 'rating', data row {row + 1} is "
                            f"{inter['rating'].iloc[row]!r}; expected a number")
        label = (rating >= cfg.label_threshold).astype(np.int64)
    else:
        raise DataError(f"{inter_path}: no 'label' or 'rating' column; the CTR label is `label` "
                        f"({SPELLINGS}) or rating >= {cfg.label_threshold:g}")
    unmatched = unmatched_genres(items[genres])
    if unmatched:
        listed = ", ".join(f"{g!r} ({n} items)" for g, n in unmatched.items())
        log.warning("%s: genre(s) in no scenario group: %s; an item with no other genre goes "
                    "to %s", raw.files["items"], listed, FALLBACK_SCENARIO)
    scenario_of = dict(zip(items["item_id"], items[genres].map(genre_scenario)))
    rows = pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        "scenario": inter["item_id"].map(scenario_of).fillna(FALLBACK_SCENARIO),
        "label": label,
        "timestamp": inter["timestamp"],
    })
    users = _read_users(Path(inter_path))
    scenarios = [name for name, _ in GENRE_GROUPS]
    return _finish(rows, users, items, scenarios, cfg, {"interactions": inter_path, **raw.files},
                   "genre-group")


def read_msr_table(raw: RawData, cfg: MSRDataConfig = MSRDataConfig()) -> MSRRows:
    """A dataset that already carries `scenario` and `label` columns (any reader layout)."""
    rows = check_msr_rows(raw.interactions, raw.files["interactions"])
    users = _read_users(Path(raw.files["interactions"]))
    scenarios = sorted(rows["scenario"].unique())
    return _finish(rows, users, raw.items, scenarios, cfg, raw.files, "column")


def _label_problem(values: pd.Series) -> tuple[pd.Series, str | None]:
    """(labels as read, NaN where unreadable; the problem naming the first bad row, if any)."""
    labels = parse_labels(values)
    bad = labels.isna().to_numpy().nonzero()[0]
    if not len(bad):
        return labels, None
    return labels, (f"column 'label' must be {SPELLINGS}; {len(bad)} row(s) are not, first at "
                    f"data row {bad[0] + 1} ({values.iloc[bad[0]]!r})")


def _checked_labels(values: pd.Series, path: str) -> pd.Series:
    labels, problem = _label_problem(values)
    if problem:
        raise DataError(f"{path}: {problem}")
    return labels.astype(np.int64)


def check_msr_rows(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    """Validate scenario/label columns; collect every problem, raise once naming rows."""
    problems: list[str] = []
    missing = [c for c in ("scenario", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, frame.columns))}. A multi-scenario table needs "
                        "user_id, item_id, timestamp, scenario and label (0/1).")
    scen = frame["scenario"].astype("string").str.strip()
    empty = (scen.isna() | (scen == "")).to_numpy().nonzero()[0]
    if len(empty):
        problems.append(f"column 'scenario' is empty in {len(empty)} row(s), first at data row "
                        f"{empty[0] + 1}")
    label, problem = _label_problem(frame["label"])
    if problem:
        problems.append(problem)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    out = frame.copy()
    out["scenario"] = scen.astype(str)
    out["label"] = label.astype(np.int64)
    return out


def _read_users(inter_path: Path) -> pd.DataFrame | None:
    user_path = inter_path.with_suffix(".user")
    if not user_path.is_file():
        return None
    users = read_raw_table(user_path, "recbole")
    if "user_id" not in users.columns:
        raise DataError(f"{user_path}: missing column 'user_id'; found {', '.join(users.columns)}")
    users["user_id"] = users["user_id"].astype(str).str.strip()
    if users["user_id"].duplicated().any():
        dup = users.loc[users["user_id"].duplicated(), "user_id"].iloc[0]
        raise DataError(f"{user_path}: user_id {dup!r} appears more than once")
    if "age" in users.columns:  # decade buckets: 7 -> "0s", 24 -> "20s"; few values per bucket
        age = pd.to_numeric(users["age"], errors="coerce")
        users["age"] = np.where(age.isna(), "", (age // 10 * 10).astype("Int64").astype(str) + "s")
    return users


def _finish(rows: pd.DataFrame, users: pd.DataFrame | None, items: pd.DataFrame,
            scenarios: list[str], cfg: MSRDataConfig, files: dict[str, str],
            rule: str) -> MSRRows:
    users = users if users is not None else pd.DataFrame({"user_id": pd.unique(rows["user_id"])})
    fields: list[str] = []
    for name in cfg.user_fields:
        if name in users.columns:
            rows[name] = rows["user_id"].map(dict(zip(users["user_id"], users[name]))).fillna("")
            fields.append(name)
    for name in cfg.item_fields:
        if name in items.columns:
            rows[name] = rows["item_id"].map(dict(zip(items["item_id"], items[name]))).fillna("")
            fields.append(name)
    rows = rows.assign(_row=np.arange(len(rows))).sort_values(["timestamp", "_row"], kind="stable")
    rows = rows.drop(columns="_row").reset_index(drop=True)
    if cfg.split == "random":  # the benchmarks' protocol; later rows can then train
        order = np.random.default_rng(cfg.split_seed).permutation(len(rows))
        rows = rows.iloc[order].reset_index(drop=True)
    elif cfg.split != "time":
        raise DataError(f"data.split must be time or random, got {cfg.split!r}")
    splits = time_split(rows, cfg.train_frac, cfg.valid_frac, files.get("interactions", "?"))
    return MSRRows(splits, scenarios, users, items, tuple(fields), files, rule)


def time_split(rows: pd.DataFrame, train_frac: float, valid_frac: float,
               source: str = "?") -> dict[str, pd.DataFrame]:
    """Ordered rows -> the first train_frac, next valid_frac, the rest (oldest first under
    data.split=time; shuffled under random)."""
    if not (0 < train_frac < 1 and 0 < valid_frac < 1 and train_frac + valid_frac < 1):
        raise DataError(f"train_frac={train_frac} and valid_frac={valid_frac} must be in (0, 1) "
                        "and leave rows for the test split")
    n = len(rows)
    a, b = int(round(n * train_frac)), int(round(n * (train_frac + valid_frac)))
    if a == 0 or b == a or b == n:
        raise DataError(f"{source}: {n} rows are too few for a {train_frac:g}/{valid_frac:g} time split")
    return {"train": rows.iloc[:a].reset_index(drop=True),
            "valid": rows.iloc[a:b].reset_index(drop=True),
            "test": rows.iloc[b:].reset_index(drop=True)}


def require_auc_cells(rows: MSRRows) -> None:
    """Refuse, before any training, a scenario whose AUC cannot exist on validation or test.

    Model selection reads per-scenario validation AUC and the gate reads test AUC: a
    scenario with one class there would train for minutes and then report NaN.
    """
    cells = []
    for split in ("valid", "test"):
        frame = rows.splits[split]
        for name in rows.scenarios:
            labels = frame.loc[frame["scenario"] == name, "label"]
            pos = int(labels.sum())
            if pos == 0 or pos == len(labels):
                cells.append(f"{split}/{name} ({pos} positive, {len(labels) - pos} negative)")
    if cells:
        raise DataError(f"{rows.files.get('interactions', '?')}: no AUC possible in "
                        f"{', '.join(cells)}: every scenario needs both classes in the validation "
                        "and test splits; nothing trained")


def scenario_stats(data: MSRRows) -> pd.DataFrame:
    """Rows, users, items and positive rate per (split, scenario), plus an 'all' line per split."""
    records = []
    for split in SPLITS:
        frame = data.splits[split]
        for name in [*data.scenarios, "all"]:
            part = frame if name == "all" else frame[frame["scenario"] == name]
            records.append({"split": split, "scenario": name, "rows": len(part),
                            "users": part["user_id"].nunique(), "items": part["item_id"].nunique(),
                            "pos_rate": float(part["label"].mean()) if len(part) else float("nan")})
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------- tensors

@dataclass
class MSRTensors:
    """One split as aligned int64 tensors; label float32."""

    user: torch.Tensor  # (N,) id-embedding index; 0 = unseen in train
    item: torch.Tensor  # (N,)
    scenario: torch.Tensor  # (N,)
    fields: torch.Tensor  # (N, F) categorical field indices; 0 = unseen
    user_k: torch.Tensor  # (N,) row of the user-knowledge table (every user has one)
    label: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k)[index] for k in ("user", "item", "scenario", "fields", "user_k",
                                                    "label")}


@dataclass
class Encoded:
    tensors: dict[str, MSRTensors]
    cardinalities: dict[str, int]  # feature name -> embedding rows (index 0 = unknown)
    field_names: tuple[str, ...]
    scenarios: list[str]
    knowledge_users: list[str]  # user_k index -> raw user id
    vocab: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> raw value -> index


def encode(data: MSRRows) -> Encoded:
    """Map ids and fields to indices learned from the training split only (0 = unseen)."""
    train = data.splits["train"]
    vocab = {col: _vocab(train[col]) for col in ("user_id", "item_id", *data.fields)}
    scen_index = {s: i for i, s in enumerate(data.scenarios)}
    all_users = sorted(set(data.users["user_id"]).union(*(set(f["user_id"]) for f in data.splits.values())),
                       key=_natural_key)
    user_k_index = {u: i for i, u in enumerate(all_users)}
    tensors = {}
    for split, frame in data.splits.items():
        unknown = set(frame["scenario"]) - set(scen_index)
        if unknown:
            raise DataError(f"{data.files.get('interactions', '?')}: scenario(s) {sorted(unknown)} in "
                            f"the {split} split are not among {data.scenarios}")
        tensors[split] = MSRTensors(**index_rows(frame, vocab, data.fields, scen_index, user_k_index),
                                    label=torch.as_tensor(frame["label"].to_numpy(np.float32)))
    cards = {"user": len(vocab["user_id"]) + 1, "item": len(vocab["item_id"]) + 1,
             "scenario": len(data.scenarios), **{f: len(vocab[f]) + 1 for f in data.fields}}
    return Encoded(tensors, cards, data.fields, list(data.scenarios), all_users, vocab)


def index_rows(frame: pd.DataFrame, vocab: dict[str, dict[str, int]], fields: tuple[str, ...] | list[str],
               scen_index: dict[str, int], user_k_index: dict[str, int]) -> dict[str, torch.Tensor]:
    """Raw rows -> model indices: the one mapping training and serving share.

    Ids and field values unseen in training map to 0 ("unknown"); a user without a
    knowledge row reads row 0. `scenario` must already be checked against `scen_index`.
    """
    def index(values: pd.Series, table: dict[str, int]) -> torch.Tensor:
        return torch.as_tensor(values.astype(str).map(table).fillna(0).to_numpy(np.int64))

    cols = [index(frame[f], vocab[f]) for f in fields]
    return {"user": index(frame["user_id"], vocab["user_id"]),
            "item": index(frame["item_id"], vocab["item_id"]),
            "scenario": index(frame["scenario"], scen_index),
            "fields": torch.stack(cols, 1) if cols else torch.zeros(len(frame), 0, dtype=torch.long),
            "user_k": index(frame["user_id"], user_k_index)}


def _vocab(column: pd.Series) -> dict[str, int]:
    values = sorted(pd.unique(column.astype(str)), key=_natural_key)
    return {v: i + 1 for i, v in enumerate(values)}


def _natural_key(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if str(value).isdigit() else (1, str(value))


def load_rows(uri: str, cfg: MSRDataConfig = MSRDataConfig()) -> MSRRows:
    """Read `uri` and apply the scenario rule (`auto`: the table's column, else genre groups)."""
    storage.local_path(uri)  # fail early on a bad path with storage's message
    raw = read_dataset(uri)
    if scenario_rule_for(raw, cfg) == "column":
        return read_msr_table(raw, cfg)
    return adapt_movielens(raw, cfg)
