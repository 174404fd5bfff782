"""ml-100k -> multi-scenario CTR rows: the documented scenario counts, the time split, errors."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import ML100K
from hllm.errors import DataError
from hllm.msr.data import check_msr_rows, encode, genre_scenario, load_rows, scenario_stats

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast



@pytest.fixture(scope="module")
def rows():
    return load_rows(str(ML100K))


def test_genre_group_priority():
    assert genre_scenario("Animation Children's Comedy") == "family"  # most specific group wins
    assert genre_scenario("Action Comedy Drama") == "action"
    assert genre_scenario("Crime Drama Thriller") == "thriller"
    assert genre_scenario("Drama Romance") == "drama_comedy"
    assert genre_scenario("") == "drama_comedy"  # no genre -> the broad fallback


def test_ml100k_scenario_counts_match_the_module_docstring(rows):
    full = pd.concat(rows.splits.values())
    assert len(full) == 100_000
    counts = full["scenario"].value_counts().to_dict()
    assert counts == {"drama_comedy": 36_943, "action": 35_264, "thriller": 16_931, "family": 10_862}
    items = full.drop_duplicates("item_id")["scenario"].value_counts().to_dict()
    assert items == {"drama_comedy": 873, "action": 356, "thriller": 281, "family": 172}
    assert full["label"].mean() == pytest.approx(0.55375)  # rating >= 4
    assert rows.fields == ("age", "gender", "occupation", "release_year")


def test_time_split_is_global_and_80_10_10(rows):
    s = rows.splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [80_000, 10_000, 10_000]
    assert s["train"]["timestamp"].max() <= s["valid"]["timestamp"].min()
    assert s["valid"]["timestamp"].max() <= s["test"]["timestamp"].min()


def test_scenario_stats_and_encoding(rows):
    stats = scenario_stats(rows).set_index(["split", "scenario"])
    assert stats.loc[("train", "all"), "rows"] == 80_000
    assert stats.loc[("train", "family"), "rows"] == 8_729
    assert stats.loc[("test", "all"), "users"] == 166
    assert stats.xs("test", level="split").loc[rows.scenarios, "rows"].sum() == 10_000
    enc = encode(rows)
    assert enc.cardinalities["scenario"] == 4 and len(enc.knowledge_users) == 943
    # users first seen after the training period have no id embedding (index 0) ...
    assert (enc.tensors["test"].user == 0).float().mean() > 0.5
    # ... but every user has a knowledge row (profile-only prompt when no training history)
    assert enc.tensors["test"].user_k.max() < 943


def test_missing_columns_are_named():
    frame = pd.DataFrame({"user_id": ["1"], "item_id": ["2"], "timestamp": [3]})
    with pytest.raises(DataError, match=r"x\.inter: missing column\(s\) scenario, label"):
        check_msr_rows(frame, "x.inter")


def test_bad_labels_and_empty_scenarios_are_reported_together_with_rows():
    frame = pd.DataFrame({"user_id": ["1"] * 4, "item_id": ["2"] * 4, "timestamp": [1, 2, 3, 4],
                          "scenario": ["a", "", "b", "a"], "label": ["1", "0", "2", "yes"]})
    with pytest.raises(DataError) as err:
        check_msr_rows(frame, "t.inter")
    msg = str(err.value)
    assert "column 'scenario' is empty in 1 row(s), first at data row 2" in msg
    assert ("column 'label' must be 0/1, 0.0/1.0 or true/false; 2 row(s) are not, first at "
            "data row 3 ('2')") in msg


def test_non_numeric_rating_names_the_row(tmp_path):
    from helpers import write_recbole

    d = write_recbole(tmp_path / "bad", [(1, 1, 5, 100), (1, 2, "five", 101)],
                      [(1, "A", "Action"), (2, "B", "Drama")])
    (d / "toy.item").write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\n1\tA\tAction\n2\tB\tDrama\n")
    with pytest.raises(DataError, match=r"column 'rating', data row 2 is 'five'"):
        load_rows(str(d))
