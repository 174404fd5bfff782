"""Readers and the leave-one-out split, on hand-made tables whose answer is known."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from helpers import ML100K, synthetic_rows, write_recbole
from hllm.config import DataConfig
from hllm.data.readers import read_dataset
from hllm.data.split import build_split
from hllm.errors import DataError

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def test_leave_one_out_split_by_hand(tmp_path):
    # User 1: items 10, 11, 12, 13 at increasing times, but rows given out of order.
    # User 2: items 11 and 12 share the last timestamp -> file order decides (12 then 11).
    # User 3 has two interactions only -> cannot give train + valid + test, dropped.
    inter = [(1, 12, 5, 300), (1, 10, 5, 100), (1, 13, 5, 400), (1, 11, 5, 200),
             (2, 10, 5, 100), (2, 13, 5, 150), (2, 12, 5, 200), (2, 11, 5, 200),
             (3, 10, 5, 100), (3, 11, 5, 200)]
    items = [(i, f"title {i}", "g") for i in (10, 11, 12, 13)]
    split = build_split(read_dataset(str(write_recbole(tmp_path / "d", inter, items))), DataConfig())
    assert split.user_raw_ids == ["1", "2"]
    assert split.item_raw_ids == ["", "10", "11", "12", "13"]  # ids 1..4, 0 = padding
    # user 1: 10, 11, 12, 13 -> train [10, 11], valid 12, test 13
    assert split.train_items(0).tolist() == [1, 2]
    assert split.target(0, "valid") == 3 and split.target(0, "test") == 4
    assert split.history(0, "test").tolist() == [1, 2, 3]
    # user 2: 10, 13, 12, 11 (12 before 11: same timestamp, file order)
    assert split.sequences[1].tolist() == [1, 4, 3, 2]
    assert split.target(1, "test") == 2 and split.target(1, "valid") == 3
    assert split.item_text[1] == {"title": "title 10", "genre": "g"}


def test_dedupe_kcore_and_windows(tmp_path):
    inter = [(1, i, 5, 100 + i) for i in range(1, 8)] + [(1, 3, 5, 103)]  # exact duplicate row
    inter += [(2, i, 5, 100 + i) for i in range(1, 6)] + [(3, 1, 5, 1), (3, 2, 5, 2), (3, 9, 5, 3)]
    items = [(i, f"t{i}", "g") for i in range(1, 10)]
    root = str(write_recbole(tmp_path / "d", inter, items))
    split = build_split(read_dataset(root), DataConfig())
    assert len(split.sequences[0]) == 7  # duplicate (1, 3, 103) removed
    # Training windows of max_len + 1 = 3 items, cut from the most recent end:
    # user 1 train = [1..5] -> [3, 4, 5], [1, 2]; user 2 train = [1, 2, 3]; user 3 train = [1] -> none
    windows = [w.tolist() for w in split.train_windows(max_len=2)]
    assert windows == [[3, 4, 5], [1, 2], [1, 2, 3]]
    # 2-core: items 6, 7, 9 have one interaction each -> removed; user 3 is left with
    # items 1, 2, which passes 2-core but is too short to split -> dropped.
    split = build_split(read_dataset(root), DataConfig(k_core=2))
    assert split.item_raw_ids == ["", "1", "2", "3", "4", "5"] and split.user_raw_ids == ["1", "2"]


def test_formats_agree(tmp_path):
    """RecBole, the HLLM CSV layout and Parquet give the same split."""
    inter, items = synthetic_rows(n_users=10, n_items=20)
    recbole = write_recbole(tmp_path / "rb", inter, items)
    frame = pd.DataFrame(inter, columns=["user_id", "item_id", "rating", "timestamp"])
    item_frame = pd.DataFrame(items, columns=["item_id", "title", "genre"])
    hllm_dir = tmp_path / "hllm"
    (hllm_dir / "dataset").mkdir(parents=True)
    (hllm_dir / "information").mkdir()
    frame[["item_id", "user_id", "timestamp"]].to_csv(hllm_dir / "dataset" / "toy.csv", index=False)
    item_frame.to_csv(hllm_dir / "information" / "toy.csv", index=False)
    pq = tmp_path / "pq"
    pq.mkdir()
    frame.to_parquet(pq / "interactions.parquet")
    item_frame.astype(str).to_parquet(pq / "items.parquet")
    hashes = {build_split(read_dataset(str(p)), DataConfig()).fingerprint()
              for p in (recbole, hllm_dir, pq)}
    assert len(hashes) == 1


def test_ml100k_split_matches_the_protocol():
    split = build_split(read_dataset(str(ML100K)), DataConfig())
    assert split.num_users == 943 and split.num_items == 1682
    assert sum(len(s) for s in split.sequences) == 100_000
    assert split.text_fields == ("movie_title", "release_year", "class")


# ---------------------------------------------------------------- bad input

def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(str(tmp_path / "nope"))


def test_missing_column_is_named(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.inter: missing column\(s\) timestamp"):
        read_dataset(str(tmp_path / "d"))


def test_header_only_table(tmp_path):
    write_recbole(tmp_path / "d", [], None)
    with pytest.raises(DataError, match="header but no rows"):
        read_dataset(str(tmp_path / "d"))


def test_empty_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.inter").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        read_dataset(str(tmp_path / "d"))


def test_string_timestamp_names_the_row(tmp_path):
    write_recbole(tmp_path / "d", [(1, 1, 5, 100), (1, 2, 5, "2021-13-01")], None)
    with pytest.raises(DataError, match=r"column 'timestamp', data row 2 is '2021-13-01'"):
        read_dataset(str(tmp_path / "d"))


def test_non_utf8_is_named(tmp_path):
    root = write_recbole(tmp_path / "d", [(1, 1, 5, 100)], [(1, "ok", "g")])
    (root / "toy.item").write_bytes("item_id:token\ttitle:token_seq\n1\tCaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"toy\.item: not valid UTF-8"):
        read_dataset(str(root))


def test_only_single_interaction_users_is_an_error(tmp_path):
    root = write_recbole(tmp_path / "d", [(1, 1, 5, 100), (2, 2, 5, 100)], [(1, "a", "g"), (2, "b", "g")])
    with pytest.raises(DataError, match="no user has at least 3 interactions"):
        build_split(read_dataset(str(root)), DataConfig())


def test_short_users_are_dropped_with_a_warning(tmp_path, caplog):
    inter = [(1, i, 5, i) for i in range(1, 5)] + [(2, 1, 5, 1)]
    root = write_recbole(tmp_path / "d", inter, [(i, f"t{i}", "g") for i in range(1, 5)])
    with caplog.at_level(logging.WARNING):
        split = build_split(read_dataset(str(root)), DataConfig())
    assert split.user_raw_ids == ["1"]
    assert "dropping 1 user(s) with fewer than 3 interactions" in caplog.text


def test_items_without_text_get_an_empty_text(tmp_path, caplog):
    # Item 3 has no row in the item table, item 2 has empty fields: both encode from the prompt only.
    inter = [(1, 1, 5, 1), (1, 2, 5, 2), (1, 3, 5, 3)]
    root = write_recbole(tmp_path / "d", inter, [(1, "a", "g"), (2, "", "")])
    with caplog.at_level(logging.WARNING):
        split = build_split(read_dataset(str(root)), DataConfig())
    assert split.item_text[3] == {}
    assert split.item_text[2] == {"title": "", "genre": ""}
    assert "1 item(s) in the interactions have no row in the item table" in caplog.text


def test_unknown_text_field_is_named(tmp_path):
    root = write_recbole(tmp_path / "d", [(1, 1, 5, 1), (1, 2, 5, 2), (1, 3, 5, 3)], [(1, "a", "g")])
    with pytest.raises(DataError, match="text field.*'?description'? not in the item table"):
        build_split(read_dataset(str(root)), DataConfig(text_fields=("description",)))
