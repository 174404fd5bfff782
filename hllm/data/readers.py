"""Read interaction and item tables from the layouts recommender datasets come in.

Supported, from a local path or an s3:// URI:

* RecBole atomic files: a directory with `<name>.inter` and `<name>.item` (tab-separated,
  typed headers such as `item_id:token`), or the `.inter` file itself.
* The public HLLM code's layout: `dataset/<name>.csv` (item_id,user_id,timestamp) and
  `information/<name>.csv` (item_id + text columns such as title, tag, description).
* Plain tables: `interactions.{csv,parquet}` and `items.{csv,parquet}` in one directory.

Every reader returns the same two frames: interactions (user_id, item_id, timestamp
as int64 epoch seconds, plus any extra columns) and items (item_id + text columns).
Ids are kept as strings; hllm.data.split maps them to contiguous integers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hllm import storage
from hllm.errors import DataError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass
class RawData:
    interactions: pd.DataFrame
    items: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)  # role -> path, for error messages and lineage


def read_dataset(uri: str, fmt: str = "auto") -> RawData:
    """Read interactions + items from `uri` (a directory, a file, or an s3:// prefix)."""
    root = storage.local_path(uri)
    inter_path, item_path, fmt = locate_tables(root, fmt)
    inter = read_raw_table(inter_path, fmt)
    items = read_raw_table(item_path, fmt) if item_path is not None else None
    inter = _check_interactions(inter, inter_path)
    if items is None:
        log.warning("%s: no item table found; every item gets an empty text", root)
        items = pd.DataFrame({"item_id": pd.unique(inter["item_id"])})
    items = _check_items(items, item_path or root)
    return RawData(inter, items, {"interactions": str(inter_path), "items": str(item_path)})


def read_item_table(uri: str) -> pd.DataFrame:
    """One item table on its own (a RecBole .item, CSV or Parquet file): new catalogue items."""
    path = storage.local_path(uri)
    if not path.is_file():
        raise DataError(f"{path}: no such item file (a .item, .csv or .parquet table)")
    fmt = "recbole" if path.suffix == ".item" else path.suffix.lstrip(".")
    items = read_raw_table(path, fmt)
    if items.empty:
        raise DataError(f"{path}: the item table has a header but no rows")
    if "item_id" in items.columns:
        ids = items["item_id"].astype("string").str.strip()
        empty = (ids.isna() | (ids == "")).to_numpy().nonzero()[0]
        if len(empty):
            raise DataError(f"{path}: column 'item_id' is empty in {len(empty)} row(s), first at "
                            f"data row {empty[0] + 1}; every new item needs an id")
    return _check_items(items, path)


def locate_tables(root: Path, fmt: str) -> tuple[Path, Path | None, str]:
    if fmt not in ("auto", "recbole", "csv", "parquet"):
        raise DataError(f"unknown data format {fmt!r} (auto | recbole | csv | parquet)")
    if root.is_file():
        if root.suffix == ".inter":
            item = root.with_suffix(".item")
            return root, item if item.is_file() else None, "recbole"
        raise DataError(f"{root}: pass the dataset directory, or a RecBole .inter file")
    inters = sorted(root.glob("*.inter"))
    if inters and fmt in ("auto", "recbole"):
        if len(inters) > 1:
            raise DataError(f"{root}: several .inter files ({', '.join(p.name for p in inters)}); "
                            "pass the one to use")
        item = inters[0].with_suffix(".item")
        return inters[0], item if item.is_file() else None, "recbole"
    for ext in ("parquet", "csv"):
        if fmt not in ("auto", ext):
            continue
        inter, item = root / f"interactions.{ext}", root / f"items.{ext}"
        if inter.is_file():
            return inter, item if item.is_file() else None, ext
    hllm_csvs = sorted((root / "dataset").glob("*.csv"))
    if hllm_csvs and fmt in ("auto", "csv"):
        inter = hllm_csvs[0]
        item = root / "information" / inter.name
        return inter, item if item.is_file() else None, "csv"
    raise DataError(
        f"{root}: no interaction table found. Expected one of: <name>.inter (+ <name>.item), "
        "interactions.parquet / interactions.csv (+ items.*), or dataset/<name>.csv "
        "(+ information/<name>.csv).")


def read_raw_table(path: Path, fmt: str) -> pd.DataFrame:
    """Read one table with every column as text; typing happens in the checks below."""
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            return frame.astype({c: "string" for c in frame.columns if c != "timestamp"})
        sep = "\t" if fmt == "recbole" or path.suffix in (".inter", ".item", ".tsv") else ","
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            encoding="utf-8", quoting=3 if sep == "\t" else 0)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be parsed: {exc}") from exc
    # RecBole headers carry a type: `item_id:token` -> `item_id`.
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    return frame


def _check_interactions(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, frame.columns)) or 'none'}. The interaction table "
                        "needs user_id, item_id and timestamp.")
    if frame.empty:
        raise DataError(f"{path}: the interaction table has a header but no rows")
    for col in ("user_id", "item_id"):
        ids = frame[col].astype("string").str.strip()
        bad = ids.isna() | (ids == "")
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(f"{path}: column '{col}' is empty in {int(bad.sum())} row(s), first at "
                            f"data row {row + 1}; drop those rows or fill the id")
        frame[col] = ids
    frame["timestamp"] = _parse_timestamps(frame["timestamp"], path)
    return frame.reset_index(drop=True)


def _parse_timestamps(column: pd.Series, path: Path) -> pd.Series:
    numeric = pd.to_numeric(column, errors="coerce")
    bad = numeric.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: column 'timestamp', data row {row + 1} is {column.iloc[row]!r}; "
                        "expected epoch seconds (a number). Convert the column to Unix time.")
    return numeric.astype("float64").round().astype("int64")


def _check_items(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "item_id" not in frame.columns:
        raise DataError(f"{path}: missing column 'item_id'; found {', '.join(map(str, frame.columns))}")
    frame["item_id"] = frame["item_id"].astype("string").str.strip()
    frame = frame[frame["item_id"].notna() & (frame["item_id"] != "")]
    dupes = frame["item_id"].duplicated()
    if dupes.any():
        first = frame.loc[dupes, "item_id"].iloc[0]
        raise DataError(f"{path}: item_id {first!r} appears more than once in the item table; "
                        "each item needs exactly one row")
    text_cols = [c for c in frame.columns if c != "item_id"]
    frame[text_cols] = frame[text_cols].astype("string").fillna("")
    return frame.reset_index(drop=True)
