"""Great Expectations suites: real data passes; each kind of bad input is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ML100K, write_recbole
from hllm.validation import validate_dataset

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [(1, "Toy Story", "Comedy"), (2, "Heat", "Action"), (3, "Alien", "Horror")]
GOOD = [(u, i, 5, 1_000_000_000 + 10 * u + i) for u in (1, 2) for i in (1, 2, 3)]


def failed(report) -> dict[tuple[str, str], object]:
    return {(c.expectation, c.column): c for c in report.failures}


def test_ml100k_passes(tmp_path):
    report = validate_dataset(str(ML100K), tmp_path)
    assert report.success, report.summary()
    assert report.rows == {"interactions": 100_000, "users": 943, "items": 1682}
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["success"] is True and len(saved["checks"]) == len(report.checks)


def test_null_item_id(tmp_path):
    rows = GOOD + [(2, "", 5, 1_000_000_999)]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, ITEMS)))
    check = failed(report)[("expect_column_values_to_not_be_null", "item_id")]
    assert check.unexpected_count == 1 and check.sample_rows == [7]


def test_unknown_item(tmp_path):
    rows = GOOD + [(2, 99, 5, 1_000_000_999)]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, ITEMS)))
    check = failed(report)[("expect_column_values_to_be_in_set", "item_id")]
    assert check.sample_values == ["99"] and check.sample_rows == [7]
    assert check.expected == "one of {1, 2, 3}"  # what was expected, beside what came


def test_duplicate_rows(tmp_path):
    rows = GOOD + [GOOD[0]]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, ITEMS)))
    check = failed(report)[("expect_compound_columns_to_be_unique", "user_id,item_id,timestamp")]
    assert check.sample_rows == [1, 7]


def test_timestamps_as_strings(tmp_path):
    rows = GOOD[:-1] + [(2, 3, 5, "2021-13-01")]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, ITEMS)))
    check = failed(report)[("expect_column_values_to_match_regex", "timestamp")]
    assert check.sample_values == ["2021-13-01"] and check.sample_rows == [6]


def test_timestamps_in_milliseconds_are_out_of_range(tmp_path):
    rows = [(u, i, 5, ts * 1000) for u, i, _, ts in GOOD]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, ITEMS)))
    check = failed(report)[("expect_column_values_to_be_between", "timestamp")]
    assert check.expected.startswith("between 631152000 (1990-01-01) and ")


def test_missing_column(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    (d / "x.item").write_text("item_id:token\ttitle:token_seq\n1\tHeat\n")
    report = validate_dataset(str(d))
    assert failed(report)[("expect_column_to_exist", "timestamp")].detail == "column is missing"


def test_too_few_interactions_and_low_text_coverage(tmp_path):
    items = [(1, "Toy Story", ""), (2, "Heat", ""), (3, "Alien", "Horror")]
    rows = GOOD + [(3, 1, 5, 1_000_000_500)]
    report = validate_dataset(str(write_recbole(tmp_path / "d", rows, items)))
    fails = failed(report)
    short = fails[("expect_column_values_to_be_between", "interactions")]  # user 3: 1 event
    assert (short.sample_ids, short.sample_values, short.expected) == (["3"], [1], ">= 3")
    assert "users 3" in report.summary()
    coverage = fails[("expect_column_values_to_not_be_null", "genre")]  # 1 of 3 items has one
    assert coverage.expected == "a value in at least 90% of rows"


@pytest.mark.parametrize("case, message", [
    ("empty", "the file is empty"),
    ("latin1", "not valid UTF-8"),
])
def test_unreadable_files_are_a_failed_validation(tmp_path, case, message):
    d = write_recbole(tmp_path / "d", GOOD, ITEMS)
    if case == "empty":
        (d / "toy.inter").write_text("")
    else:
        (d / "toy.item").write_bytes("item_id:token\ttitle:token_seq\n1\tCaf\xe9\n".encode("latin-1"))
    report = validate_dataset(str(d), tmp_path / "out")
    assert not report.success
    assert message in report.failures[0].detail
    assert message in (tmp_path / "out" / "validation.html").read_text()


def test_cli_exit_code_and_readable_report(tmp_path):
    rows = GOOD + [(2, 99, 5, 1_000_000_999), (2, 1, 5, "yesterday")]
    data = write_recbole(tmp_path / "d", rows, ITEMS)
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "hllm.cli", "validate", "--data", str(data),
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "expect_column_values_to_be_in_set" in result.stderr and "'item_id'" in result.stderr
    assert "rows 7" in result.stderr
    page = (out / "validation.html").read_text()
    # A person sees the verdict, the failing columns, the sample rows and values.
    assert "Validation FAILED" in page
    assert '<td>item_id</td><td class="exp">expect_column_values_to_be_in_set</td>' in page
    assert '<td class="want">one of {1, 2, 3}</td>' in page  # what was expected, beside the values
    assert "rows 7" in page and "&#34;99&#34;" in page and "&#34;yesterday&#34;" in page


USERS_SPELLED_TWICE = GOOD + [("1.0", 1, 5, 1_000_000_900), ("1.0", 2, 5, 1_000_000_901),
                              ("1.0", 3, 5, 1_000_000_902)]
TRAIN_REFUSES = {
    "negative timestamps": ([(u, i, 5, -ts) for u, i, _, ts in GOOD], ITEMS,
                            "expect_column_values_to_be_between"),
    "millisecond timestamps": ([(u, i, 5, ts * 1000) for u, i, _, ts in GOOD], ITEMS,
                               "expect_column_values_to_be_between"),
    "timestamp past int64": (GOOD + [(2, 1, 5, 2**64)], ITEMS, "expect_column_values_to_be_between"),
    "user ids 1 and 1.0": (USERS_SPELLED_TWICE, ITEMS,
                           "column 'user_id_spellings': expect_column_values_to_not_match_regex"),
    "no items file": (GOOD, None, "no item table beside it"),
}


@pytest.mark.parametrize("case", list(TRAIN_REFUSES))
def test_training_refuses_what_validation_refuses_with_its_message(tmp_path, case):
    from hllm.config import load_config
    from hllm.errors import DataError
    from hllm.train import train

    rows, items, words = TRAIN_REFUSES[case]
    data = str(write_recbole(tmp_path / "d", rows, items))
    report = validate_dataset(data)
    assert not report.success and words in report.summary()
    with pytest.raises(DataError) as info:
        train(load_config("cpu-tiny"), "sasrec", data, tmp_path / "run", progress=False)
    assert str(info.value) == f"not trained (nothing written): {report.summary()}"
    assert not (tmp_path / "run").exists()


def test_ids_spelled_twice_are_named_with_their_rows(tmp_path):
    report = validate_dataset(str(write_recbole(tmp_path / "d", USERS_SPELLED_TWICE, ITEMS)))
    check = failed(report)[("expect_column_values_to_not_match_regex", "user_id_spellings")]
    assert check.sample_rows[:4] == [1, 2, 3, 7] and "1 | 1.0" in check.sample_values
    assert ("expect_column_values_to_not_match_regex", "item_id_spellings") not in failed(report)
