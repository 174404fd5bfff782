"""LLM4MSR on tables it was not built on: their own scenario column, labels spelled 0/1,
0.0/1.0 or true/false, genre vocabularies other than ml-100k's, and a scenario that cannot
give an AUC. Validation, `msr stats` and training must read every table the same way."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd
import pytest

from hllm.errors import ConfigError, DataError
from hllm.msr.config import load_msr_config
from hllm.msr.data import genre_scenario, load_rows, scenario_stats
from hllm.msr.validation import validate_msr
from hllm.validation import validate_dataset

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

SPELLINGS = {"ints": ("1", "0"), "floats": ("1.0", "0.0"), "words": ("true", "false"),
             "capitalised": ("TRUE", "False")}


def write_table(directory: Path, positive: str = "1", negative: str = "0",
                scenarios: tuple[str, ...] = ("mobile", "web"), only_positive: str | None = None,
                bad: dict[int, str] | None = None) -> Path:
    """interactions.csv with its own scenario and label columns, and items.csv with text.

    100 users x 20 events over interleaved time, so each scenario has both classes in the
    oldest 80%, the next 10% and the newest 10%. `only_positive`: that scenario's rows are
    all clicks. `bad`: data row (1-based) -> a label spelling that is not one."""
    rng = random.Random(0)
    rows = []
    for event in range(20):
        for user in range(1, 101):
            scenario = scenarios[(user + event) % len(scenarios)]
            click = scenario == only_positive or rng.random() < 0.5
            rows.append({"user_id": user, "item_id": rng.randint(1, 30),
                         "timestamp": 1_000_000_000 + event * 1000 + user, "scenario": scenario,
                         "label": positive if click else negative})
    for row, value in (bad or {}).items():
        rows[row - 1]["label"] = value
    directory.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(directory / "interactions.csv", index=False)
    pd.DataFrame({"item_id": range(1, 31), "title": [f"Item {i}" for i in range(1, 31)]}).to_csv(
        directory / "items.csv", index=False)
    return directory


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_label_spelling_reads_the_same_in_validation_stats_and_training(tmp_path, spelling):
    positive, negative = SPELLINGS[spelling]
    data = str(write_table(tmp_path / spelling, positive, negative))
    reference = load_rows(str(write_table(tmp_path / "reference")))

    assert validate_dataset(data).success
    assert validate_msr(data).success
    rows = load_rows(data)  # what `msr stats` and `msr train` read
    for split in ("train", "valid", "test"):
        assert rows.splits[split]["label"].tolist() == reference.splits[split]["label"].tolist()
    pd.testing.assert_frame_equal(scenario_stats(rows), scenario_stats(reference))


def test_a_label_that_is_no_spelling_is_named_by_every_step(tmp_path):
    data = str(write_table(tmp_path / "t", bad={7: "yes", 30: "2"}))

    report = validate_dataset(data)
    failed = [c for c in report.failures if c.column == "label"]
    assert len(failed) == 1 and failed[0].sample_rows == [7, 30]
    assert failed[0].sample_values == ["yes", "2"]
    assert not validate_msr(data).success
    with pytest.raises(DataError, match=r"interactions\.csv: column 'label' must be 0/1, 0\.0/1\.0 "
                                        r"or true/false; 2 row\(s\) are not, first at data row 7 "
                                        r"\('yes'\)"):
        load_rows(data)


def test_the_tables_own_scenario_column_is_used_without_a_flag(tmp_path):
    data = str(write_table(tmp_path / "t", scenarios=("mobile", "web", "tv")))
    rows = load_rows(data)
    assert rows.scenarios == ["mobile", "tv", "web"] and rows.scenario_rule == "column"
    stats = scenario_stats(rows)
    assert set(stats["scenario"]) == {"mobile", "tv", "web", "all"}
    # validation checks the rows against the table's own names, not ml-100k's genre groups
    report = validate_msr(data)
    assert report.success, report.summary()
    # an explicit genre-group rule on the same table is still the caller's choice: refused
    ruled = load_msr_config("cpu-tiny", overrides={"data.scenario_rule": "genre-group"}).data
    with pytest.raises(DataError, match="no genre field"):
        load_rows(data, ruled)


def test_genres_match_whatever_their_spelling_and_the_unmatched_are_reported(tmp_path, caplog):
    from helpers import write_recbole

    assert genre_scenario("Children") == genre_scenario("CHILDREN'S") == "family"
    assert genre_scenario("sci-fi Comedy") == genre_scenario("SciFi") == "action"
    assert genre_scenario("Film_Noir|Drama") == "thriller"
    inter = [(u, i, 4 if (u + i) % 2 else 2, 1_000_000 + 10 * u + i) for u in range(1, 9)
             for i in range(1, 5)]
    data = write_recbole(tmp_path / "d", inter, None)
    (data / "toy.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n"
                                   "1\tA\tChildren\n2\tB\tCooking Drama\n3\tC\tCooking\n"
                                   "4\tD\tsci-fi Gardening\n")
    with caplog.at_level(logging.WARNING, logger="hllm.msr.data"):
        rows = load_rows(str(data))
    scenario_of = dict(zip(rows.splits["train"]["item_id"], rows.splits["train"]["scenario"]))
    assert scenario_of == {"1": "family", "2": "drama_comedy", "3": "drama_comedy", "4": "action"}
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "'Cooking' (2 items), 'Gardening' (1 items)" in warning and "Children" not in warning


def test_a_scenario_without_both_classes_is_refused_before_training(tmp_path):
    from hllm.msr.run import train_run

    data = str(write_table(tmp_path / "t", only_positive="web"))
    cfg = load_msr_config("cpu-tiny", overrides={"train.epochs": 1})
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"no AUC possible in valid/web \(\d+ positive, 0 negative\), "
                                        r"test/web \(\d+ positive, 0 negative\)") as err:
        train_run(cfg, data, out, llm4msr=False, progress=False)
    assert "mobile" not in str(err.value) and not out.exists()
    assert not out.with_name("run.staged").exists()
    assert not validate_msr(data).success  # validation names the same cells


def test_metrics_files_are_strict_json_even_with_nan():
    from hllm import strict_json
    import numpy as np

    text = strict_json.dumps({"auc": float("nan"), "per": {"a": np.float32("inf"), "n": np.int64(3)},
                              "list": [np.float64(0.5), float("-inf")], "path": Path("/x")})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "auc": None, "per": {"a": None, "n": 3}, "list": [0.5, None], "path": "/x"}


def test_the_random_split_is_seeded_and_partitions_the_rows(tmp_path):
    data = str(write_table(tmp_path / "t"))

    def split(**overrides):
        return load_rows(data, load_msr_config("cpu-tiny", overrides=overrides).data).splits

    def keys(frame):
        return list(zip(frame["user_id"], frame["timestamp"]))

    by_time, first, again = split(), split(**{"data.split": "random"}), split(**{"data.split": "random"})
    other = split(**{"data.split": "random", "data.split_seed": 1})
    assert all(keys(first[s]) == keys(again[s]) for s in first)  # seeded: repeatable
    assert keys(first["test"]) != keys(other["test"])
    assert sorted(sum((keys(first[s]) for s in first), [])) == sorted(sum((keys(by_time[s]) for s in by_time), []))
    assert [len(first[s]) for s in ("train", "valid", "test")] == [1600, 200, 200]
    # time: every validation row is at least as new as every training row; random: not so
    assert by_time["valid"]["timestamp"].min() >= by_time["train"]["timestamp"].max()
    assert first["valid"]["timestamp"].min() < first["train"]["timestamp"].max()
    with pytest.raises(ConfigError, match="'data.split': 'users', must be one of time, random"):
        split(**{"data.split": "users"})  # refused with the config, before the data is read
