"""Training windows read from Feast by point-in-time retrieval equal the in-memory ones."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from helpers import ml100k_sample
from hllm.config import load_config, replace
from hllm.errors import ConfigError
from hllm.feast_windows import check_repo, feature_store_windows, window_ends
from hllm.features import MANIFEST, build_features
from hllm.train import load_split, train

MAX_LEN = 20


def run_config():
    # Held-out cold items and a k-core change the sequences: the store must hold the same.
    return replace(load_config("cpu-tiny"), {"data.cold_items": 0.2, "data.k_core": 5,
                                             "data.max_history": MAX_LEN, "train.epochs": 2})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feast-windows")
    data = ml100k_sample(tmp / "data", 120)
    cfg = run_config()
    build_features(str(data), tmp / "features", max_history=MAX_LEN + 1, data_config=cfg.data)
    return data, tmp / "features", cfg


def test_windows_from_the_store_equal_the_in_memory_windows(built):
    data, repo, cfg = built
    split = load_split(str(data), cfg)
    expected = split.train_windows(MAX_LEN)
    got = feature_store_windows(repo, split, cfg.data, MAX_LEN)
    assert len(got) == len(expected) > 100
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    # The case that needs the per-event times: windows whose last event shares its second
    # with the user's next event (a lookup by the second alone would return that one too).
    seconds = [split.event_times[u] // 1_000_000 for u in range(split.num_users)]
    inside_a_second = sum(seconds[u][end - 1] == seconds[u][end] for u, end in window_ends(split, MAX_LEN))
    assert inside_a_second > 10


def test_training_from_the_store_equals_training_in_memory(built, tmp_path):
    data, repo, cfg = built
    in_memory = train(cfg, "sasrec", str(data), tmp_path / "memory", validate=False)
    from_store = train(cfg, "sasrec", str(data), tmp_path / "store", validate=False,
                       feature_repo=repo)
    keys = ("recall@10", "ndcg@10", "recall@200", "mrr", "best_epoch", "split_sha256")
    assert {k: from_store[k] for k in keys} == {k: in_memory[k] for k in keys}
    assert from_store["history"] == in_memory["history"]  # every epoch's loss and validation
    assert from_store["timings"]["feature_store_windows_s"] > 0


def manifest(tmp_path, **fields):
    (tmp_path / MANIFEST).write_text(json.dumps(fields))
    return tmp_path


def test_a_repo_built_for_other_histories_is_refused_with_the_keys_named(tmp_path):
    data_cfg = run_config().data
    with pytest.raises(ConfigError, match="every interaction as read.*--config"):
        check_repo(manifest(tmp_path, max_history=50, history_data_config=None), data_cfg, MAX_LEN)
    other = {**asdict(data_cfg), "cold_items": 0.0}
    with pytest.raises(ConfigError, match=r"data.cold_items 0.0 there, 0.2 here"):
        check_repo(manifest(tmp_path, max_history=50, history_data_config=other), data_cfg, MAX_LEN)
    with pytest.raises(ConfigError, match=r"histories of 20 items; training windows need 21"):
        check_repo(manifest(tmp_path, max_history=MAX_LEN, history_data_config=asdict(data_cfg)),
                   data_cfg, MAX_LEN)
    check_repo(manifest(tmp_path, max_history=MAX_LEN + 1, history_data_config=asdict(data_cfg)),
               data_cfg, MAX_LEN)


def test_the_cli_builds_for_a_run_config_and_trains_from_it(built, tmp_path, capsys):
    from hllm.cli import main

    data, _, _ = built
    sets = ["--preset", "cpu-tiny", "--set", f"data.max_history={MAX_LEN}",
            "--set", "train.epochs=1"]
    assert main(["features", "build", "--data", str(data), "--run", str(tmp_path / "f"),
                 *sets]) == 0
    written = json.loads((tmp_path / "f" / "feature_repo" / MANIFEST).read_text())
    assert written["max_history"] == MAX_LEN + 1  # the training window, by default
    assert written["history_data_config"]["max_history"] == MAX_LEN
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
                 "sasrec", "--feature-repo", str(tmp_path / "f"), *sets]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "feature_store_windows_s" in metrics["timings"]
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "other"), "--model",
                 "sasrec", "--feature-repo", str(tmp_path / "f"), *sets,
                 "--set", "data.k_core=5"]) == 2
    assert "data.k_core 0 there, 5 here" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_an_item_id_holding_the_separator_is_refused_by_name():
    import pandas as pd

    from hllm.errors import DataError
    from hllm.features import training_history_table

    history = pd.DataFrame({"user_id": ["1", "1"], "item_ids": [["a"], ["a", "b\x1fc"]],
                            "event_timestamp": pd.to_datetime([1, 2], unit="s", utc=True)})
    with pytest.raises(DataError, match=r"item id 'b\\x1fc' contains the character \\x1f"):
        training_history_table(history)
    assert training_history_table(history.iloc[:1])["item_ids"].tolist() == ["a"]
