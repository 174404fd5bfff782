"""A validation pass is remembered for the same bytes, settings and code, and only a pass."""

from __future__ import annotations

import logging

import pytest

import hllm.validation as validation
from helpers import write_recbole
from hllm import storage
from hllm.errors import DataError
from hllm.validation import ValidationConfig, require_valid, validate_dataset

ITEMS = [(1, "Toy Story", "Comedy"), (2, "Heat", "Action"), (3, "Alien", "Horror")]
GOOD = [(u, i, 5, 1_000_000_000 + 10 * u + i) for u in (1, 2) for i in (1, 2, 3)]
pytestmark = pytest.mark.fast


def records():
    return sorted((storage.cache_root() / "validated").glob("*.json"))


@pytest.fixture
def suites_must_not_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the suites ran although this pass was remembered")
    return lambda: monkeypatch.setattr(validation, "run_suites", refuse)


def test_a_pass_is_reused_without_running_the_suites(tmp_path, suites_must_not_run, caplog):
    data = str(write_recbole(tmp_path / "d", GOOD, ITEMS))
    first = validate_dataset(data)
    assert first.success and len(records()) == 1
    suites_must_not_run()
    with caplog.at_level(logging.INFO, logger="hllm.validation"):
        again = validate_dataset(data, tmp_path / "out", reuse=True)
        require_valid(data)
    assert again.success and again.to_dict()["checks"] == first.to_dict()["checks"]
    assert again.rows == first.rows
    assert (tmp_path / "out" / "validation.json").is_file()  # the report is written as before
    assert "validation skipped" in caplog.text
    with pytest.raises(AssertionError, match="suites ran"):
        validate_dataset(data)  # without reuse (hllm validate, the pipeline's step) it runs


def test_changed_bytes_are_judged_again_and_a_bad_table_is_refused(tmp_path):
    data = tmp_path / "d"
    write_recbole(data, GOOD, ITEMS)
    require_valid(str(data))
    write_recbole(data, GOOD + [(2, 99, 5, 1_000_000_999)], ITEMS)  # an unknown item
    with pytest.raises(DataError, match="item_id"):
        require_valid(str(data))
    assert len(records()) == 1  # the failure was not remembered


def test_other_settings_are_another_verdict(tmp_path, suites_must_not_run):
    data = str(write_recbole(tmp_path / "d", GOOD, ITEMS))
    assert validate_dataset(data).success
    suites_must_not_run()
    with pytest.raises(AssertionError, match="suites ran"):
        validate_dataset(data, cfg=ValidationConfig(min_user_interactions=4), reuse=True)


def test_an_unreadable_record_means_validating_again(tmp_path, caplog):
    data = str(write_recbole(tmp_path / "d", GOOD, ITEMS))
    assert validate_dataset(data).success
    records()[0].write_text("{half a reco")
    with caplog.at_level(logging.WARNING, logger="hllm.validation_cache"):
        assert validate_dataset(data, reuse=True).success
    assert "unreadable validation record" in caplog.text
    assert records()[0].read_text().startswith("{\"success\": true")
