"""The Feast repo on a real SQLite online store and Parquet offline store, in a temp dir."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from helpers import write_recbole
from hllm.errors import DataError, SaveError
from hllm.features import add_items, build_features, user_histories_as_of

ITEMS = [(i, f"Movie {i}", "Drama") for i in range(1, 6)]
# user 1 watches 1, 2, 3 at T0 + 100, 200, 300; user 2 watches 4, 5, 1
T0 = 700_000_000
INTER = [(1, 1, 5, T0 + 100), (1, 2, 5, T0 + 200), (1, 3, 5, T0 + 300),
         (2, 4, 5, T0 + 150), (2, 5, 5, T0 + 250), (2, 1, 5, T0 + 350)]
VECTORS = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)


def build(tmp_path, inter=INTER, items=ITEMS, run="run", **kwargs):
    data = write_recbole(tmp_path / "d", inter, items)
    return build_features(str(data), tmp_path / run, embeddings=VECTORS, **kwargs)


def online(repo: Path) -> dict:
    store = FeatureStore(repo_path=str(repo))
    users = store.get_online_features(features=["user_history:item_ids", "user_history:timestamps"],
                                      entity_rows=[{"user_id": "1"}, {"user_id": "2"}]).to_dict()
    items = store.get_online_features(features=["item_embedding:embedding", "item_text:text"],
                                      entity_rows=[{"item_id": str(i)} for i in range(1, 6)]).to_dict()
    return {**users, **items}


def snapshot(repo: Path) -> dict[str, str]:
    """Every file of the repo (offline Parquet, online SQLite, registry) by content hash."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_apply_materialize_and_online_lookup(tmp_path):
    result = build(tmp_path)
    assert result.counts == {"item_text": 5, "item_embedding": 5, "user_history": 6, "users": 2}
    got = online(result.repo)
    assert got["item_ids"] == [["1", "2", "3"], ["4", "5", "1"]]  # latest history, oldest first
    assert got["timestamps"][0] == [T0 + 100, T0 + 200, T0 + 300]
    np.testing.assert_allclose(got["embedding"][1], [4, 5, 6, 7])
    assert got["text"][1] == "title: Movie 2 genre: Drama"


def test_the_servers_history_read_agrees_with_get_online_features(tmp_path):
    """hllm serve reads histories through the online store's online_read; Feast's public
    call must see the same rows, and an unknown user is an empty history in both."""
    from hllm.serving import OnlineHistory

    repo = build(tmp_path).repo
    feast_rows = FeatureStore(repo_path=str(repo)).get_online_features(
        features=["user_history:item_ids"],
        entity_rows=[{"user_id": u} for u in ("1", "2", "404")]).to_dict()["item_ids"]
    history = OnlineHistory(repo)
    assert [history(u) for u in ("1", "2", "404")] == [r or [] for r in feast_rows]
    assert history("1") == ["1", "2", "3"] and history("404") == []


def test_online_histories_equal_what_feast_materialize_writes(tmp_path):
    """The build writes each user's newest history row itself (materializing it through
    dask costs 20 s on ml-100k); Feast's own materialize must leave the same online rows."""
    from datetime import datetime, timezone

    # user 3: two events in one second, written newest first in the file
    inter = INTER + [(3, 2, 5, T0 + 500), (3, 5, 5, T0 + 600), (3, 4, 5, T0 + 600)]
    repo = build(tmp_path, inter=inter).repo
    features = ["user_history:item_ids", "user_history:timestamps", "user_history:length"]
    rows = [{"user_id": u} for u in ("1", "2", "3")]

    def histories() -> dict:
        store = FeatureStore(repo_path=str(repo))
        return store.get_online_features(features=features, entity_rows=rows).to_dict()

    written = histories()
    assert written["item_ids"] == [["1", "2", "3"], ["4", "5", "1"], ["2", "5", "4"]]
    FeatureStore(repo_path=str(repo)).materialize(
        start_date=datetime(1990, 1, 1, tzinfo=timezone.utc),
        end_date=datetime(2030, 1, 1, tzinfo=timezone.utc), feature_views=["user_history"])
    assert histories() == written


def test_historical_retrieval_is_point_in_time_correct(tmp_path):
    result = build(tmp_path)
    entity_df = pd.DataFrame({
        "user_id": ["1", "1", "1"],
        # just after the 2nd event, exactly at the 3rd, before any event
        "event_timestamp": pd.to_datetime([T0 + 250, T0 + 300, T0 + 50], unit="s", utc=True)})
    frame = user_histories_as_of(result.repo.parent, entity_df)
    got = {int(ts.timestamp()): (list(v) if isinstance(v, (list, np.ndarray)) else None)
           for ts, v in zip(frame["event_timestamp"], frame["item_ids"])}
    # At T0+250 the history holds the first two events; the one at T0+300 must not leak.
    assert got[T0 + 250] == ["1", "2"]
    assert got[T0 + 300] == ["1", "2", "3"]
    # Before the user's first event there is no history (the row is empty or left out).
    assert got.get(T0 + 50) is None


def test_rebuild_on_the_same_data_gives_the_same_state(tmp_path):
    first = build(tmp_path)
    tables = {p.name: pd.read_parquet(p) for p in (first.repo / "data").glob("*.parquet")}
    values = online(first.repo)
    second = build(tmp_path)
    assert second.repo == first.repo
    listed = sorted(p.name for p in tmp_path.joinpath("run").iterdir())
    assert listed == [".features.lock", "feature_repo"]  # no staging left
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(second.repo / "data" / name), frame)
    assert online(second.repo) == values


def test_failure_part_way_keeps_the_previous_features(tmp_path, monkeypatch):
    first = build(tmp_path)
    before, values = snapshot(first.repo), online(first.repo)

    def broken(*args, **kwargs):
        raise RuntimeError("online store unreachable")

    monkeypatch.setattr(FeatureStore, "materialize", broken)
    with pytest.raises(SaveError, match="features not built .RuntimeError: online store "
                                        "unreachable.; the previous feature_repo/ is unchanged"):
        build(tmp_path, inter=INTER + [(1, 4, 5, T0 + 400)])
    assert snapshot(first.repo) == before
    assert online(first.repo) == values
    assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == [".features.lock",
                                                                        "feature_repo"]
    # A run directory made only for the failed build is not left behind, empty.
    with pytest.raises(SaveError, match="unreachable"):
        build(tmp_path, run="fresh-run")
    assert not (tmp_path / "fresh-run").exists()


def test_a_second_build_into_a_busy_run_directory_is_refused(tmp_path):
    from hllm.atomic import exclusive
    from hllm.errors import BusyError

    first = build(tmp_path)
    before = snapshot(first.repo)
    with exclusive(tmp_path / "run" / ".features.lock", "features build"):  # a build running
        with pytest.raises(BusyError, match=r"another features build is running there \(pid "):
            build(tmp_path, inter=INTER + [(1, 4, 5, T0 + 400)])
    assert snapshot(first.repo) == before
    build(tmp_path, inter=INTER + [(1, 4, 5, T0 + 400)])  # released: the next build runs
    assert snapshot(first.repo) != before


BAD = {
    "null item id": (INTER + [(2, "", 5, T0 + 500)], ITEMS,
                     ["interactions column 'item_id'", "expect_column_values_to_not_be_null", "rows 7"]),
    "unknown item": (INTER + [(2, 99, 5, T0 + 500)], ITEMS,
                     ["expect_column_values_to_be_in_set", "values ['99']"]),
    "duplicate rows": (INTER + [INTER[0]], ITEMS,
                       ["expect_compound_columns_to_be_unique", "user_id,item_id,timestamp", "rows 1, 7"]),
    "timestamps as strings": (INTER + [(2, 2, 5, "2024-05-01")], ITEMS,
                              ["column 'timestamp'", "match_regex", "2024-05-01"]),
}


@pytest.mark.parametrize("case", list(BAD) + ["non-UTF-8 text", "empty file", "missing column"])
def test_bad_input_is_named_and_leaves_the_store_unchanged(tmp_path, case):
    good = build(tmp_path)
    before, values = snapshot(good.repo), online(good.repo)
    bad_dir = tmp_path / "bad"
    if case in BAD:
        inter, items, phrases = BAD[case]
        write_recbole(bad_dir, inter, items)
    else:
        write_recbole(bad_dir, INTER, ITEMS)
        if case == "non-UTF-8 text":
            (bad_dir / "toy.item").write_bytes(
                "item_id:token\ttitle:token_seq\tgenre:token_seq\n1\tCaf\xe9\tDrama\n".encode("latin-1"))
            phrases = ["toy.item", "not valid UTF-8"]
        elif case == "empty file":
            (bad_dir / "toy.inter").write_text("")
            phrases = ["toy.inter", "the file is empty"]
        else:
            (bad_dir / "toy.inter").write_text("user_id:token\titem_id:token\n1\t1\n2\t2\n")
            phrases = ["column 'timestamp'", "column is missing"]
    with pytest.raises(DataError) as info:
        build_features(str(bad_dir), tmp_path / "run", embeddings=VECTORS)
    message = str(info.value)
    assert message.startswith("features not built (nothing written)")
    for phrase in phrases:
        assert phrase in message, message
    assert snapshot(good.repo) == before
    assert online(good.repo) == values


def test_item_embeddings_come_from_the_item_llm(tmp_path, toy_data, monkeypatch):
    result = build_features(str(toy_data), tmp_path / "run", embed_preset="cpu-tiny")
    from hllm.features import item_llm_embeddings

    # Recomputed from scratch (an empty cache), not read back from the build's own cache.
    monkeypatch.setenv("HLLM_CACHE", str(tmp_path / "fresh-cache"))
    ids, vectors = item_llm_embeddings(str(toy_data), "cpu-tiny")
    assert any((tmp_path / "fresh-cache").rglob("*.safetensors"))  # it did compute
    assert vectors.shape == (len(ids), 32)
    store = FeatureStore(repo_path=str(result.repo))
    got = store.get_online_features(features=["item_embedding:embedding"],
                                    entity_rows=[{"item_id": ids[3]}]).to_dict()
    np.testing.assert_allclose(got["embedding"][0], vectors[3], rtol=1e-6)


def test_add_items_are_servable_at_once(tmp_path, toy_data):
    result = build_features(str(toy_data), tmp_path / "run", embed_preset="cpu-tiny")
    store = FeatureStore(repo_path=str(result.repo))
    known = store.get_online_features(features=["item_embedding:embedding", "item_text:text"],
                                      entity_rows=[{"item_id": "3"}]).to_dict()
    new = tmp_path / "new.csv"
    # n1 repeats item 3's text: the same Item LLM must give the same vector.
    new.write_text("item_id,title,genre\nn1,Movie 3,Horror\nn2,A brand new film,Western\n")
    added = add_items(str(new), tmp_path / "run")
    assert added.item_ids == ["n1", "n2"] and added.embedding_dim == 32
    got = FeatureStore(repo_path=str(result.repo)).get_online_features(
        features=["item_embedding:embedding", "item_text:text"],
        entity_rows=[{"item_id": "n1"}, {"item_id": "n2"}]).to_dict()
    assert got["text"] == [known["text"][0], "title: A brand new film genre: Western"]
    np.testing.assert_allclose(got["embedding"][0], known["embedding"][0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["embedding"][1], known["embedding"][0])
    offline = pd.read_parquet(result.repo / "data" / "item_embedding.parquet")
    assert {"n1", "n2"} <= set(offline["item_id"])  # pushed to the offline store too


def test_the_training_feature_step_embeds_with_the_runs_frozen_item_llm(tmp_path, toy_data,
                                                                         monkeypatch):
    """The pipeline's feature step (build_for_training) fills item_embedding with the run's
    own frozen Item LLM (its config, not its preset's), through the cache training reads,
    and add-items embeds new items with that same Item LLM; a fine-tuned one is left out."""
    import torch

    from hllm.config import load_config
    from hllm.distributed import Dist
    from hllm.features import build_for_training, item_llm_embeddings
    from hllm.train import load_split, model_on_device

    monkeypatch.setenv("HLLM_CACHE", str(tmp_path / "cache"))
    # A random-init Item LLM: its vectors depend on the seed, which the preset does not set.
    cfg = load_config("cpu-tiny", overrides={"item_llm.trainable": "frozen", "train.seed": 7})
    result = build_for_training(str(toy_data), tmp_path / "run", cfg)
    ids, vectors = item_llm_embeddings(str(toy_data), cfg)
    _, preset_vectors = item_llm_embeddings(str(toy_data), "cpu-tiny")
    assert not np.allclose(vectors, preset_vectors)  # the config's seed made a difference
    store = FeatureStore(repo_path=str(result.repo))
    got = store.get_online_features(features=["item_embedding:embedding"],
                                    entity_rows=[{"item_id": i} for i in ids]).to_dict()
    np.testing.assert_allclose(np.array(got["embedding"]), vectors, rtol=1e-6)

    cached = sorted((tmp_path / "cache" / "item-embeddings").glob("*.safetensors"))
    model_on_device(cfg, "hllm", load_split(str(toy_data), cfg), torch.device("cpu"),
                    Dist(), False, {})
    assert sorted((tmp_path / "cache" / "item-embeddings").glob("*.safetensors")) == cached

    new = tmp_path / "new.csv"
    new.write_text("item_id,title,genre\nn1,Movie 3,Horror\n")  # item 3's text again
    add_items(str(new), tmp_path / "run")
    got = FeatureStore(repo_path=str(result.repo)).get_online_features(
        features=["item_embedding:embedding"], entity_rows=[{"item_id": "n1"}]).to_dict()
    np.testing.assert_allclose(got["embedding"][0], vectors[ids.index("3")], rtol=1e-4, atol=1e-5)

    tuned = build_for_training(str(toy_data), tmp_path / "tuned", load_config("cpu-tiny"))
    assert tuned.counts["item_embedding"] == 0  # cpu-tiny trains its Item LLM: not known yet


def test_add_items_rejects_items_without_text(tmp_path, toy_data):
    result = build_features(str(toy_data), tmp_path / "run", embed_preset="cpu-tiny")
    before = snapshot(result.repo)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,genre\nn1,Fine,Drama\nn2, ,\n")
    with pytest.raises(DataError, match=r"new.csv: data row 2 has no text"):
        add_items(str(new), tmp_path / "run")
    assert snapshot(result.repo) == before


def test_llm4msr_knowledge_vectors_are_served_from_the_online_store(tmp_path):
    from hllm.features import push_knowledge

    result = build(tmp_path)
    scen = (["family", "action"], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    users = (["1", "2"], np.array([[0.5, 0.25, 0], [1, 1, 1]], dtype=np.float32))
    counts = push_knowledge(tmp_path / "run", scen, users, user_texts={"1": "likes family films"})
    assert counts == {"scenario_knowledge": 2, "user_knowledge": 2}
    store = FeatureStore(repo_path=str(result.repo))
    got = store.get_online_features(features=["scenario_knowledge:vector"],
                                    entity_rows=[{"scenario": "action"}]).to_dict()
    np.testing.assert_allclose(got["vector"][0], [4, 5, 6])
    got = store.get_online_features(features=["user_knowledge:vector", "user_knowledge:text"],
                                    entity_rows=[{"user_id": "1"}, {"user_id": "2"}]).to_dict()
    np.testing.assert_allclose(got["vector"][0], [0.5, 0.25, 0])
    assert got["text"] == ["likes family films", ""]
    offline = pd.read_parquet(result.repo / "data" / "user_knowledge.parquet")
    assert sorted(offline["user_id"]) == ["1", "2"]
    with pytest.raises(DataError, match="1 vectors for 2 keys"):
        push_knowledge(tmp_path / "run", (["a", "b"], np.ones((1, 3))), users)


def test_llm4msr_training_reads_the_knowledge_back_from_the_feature_views(tmp_path):
    """The knowledge step saves the vectors and pushes them; training reads the views,
    and gets the saved float32 values exactly, in the data's order."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from hllm.features import push_knowledge
    from hllm.msr.features import FILE, load_knowledge

    build(tmp_path)
    rng = np.random.default_rng(0)
    scen_keys, user_keys = ["family", "action", "drama"], ["2", "1", "10"]
    scen = rng.normal(size=(3, 8)).astype(np.float32)
    user = rng.normal(size=(3, 8)).astype(np.float32)
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    save_file({"scenario": torch.from_numpy(scen), "user": torch.from_numpy(user)},
              str(knowledge / FILE), metadata={"scenarios": json.dumps(scen_keys),
                                               "users": json.dumps(user_keys)})
    enc = SimpleNamespace(scenarios=scen_keys, knowledge_users=user_keys)
    saved = load_knowledge(knowledge, enc)[:2]
    shutil.copytree(tmp_path / "run" / "feature_repo", knowledge / "feature_repo")
    push_knowledge(knowledge, (scen_keys[::-1], scen[::-1]), (user_keys, user))
    from_views = load_knowledge(knowledge, enc)[:2]
    assert all(torch.equal(a, b) for a, b in zip(from_views, saved))
    enc.knowledge_users = [*user_keys, "77"]
    with pytest.raises(DataError, match="user_knowledge has no vector for user_id 77; push"):
        load_knowledge(knowledge, enc)


def test_feast_prints_nothing_into_logs_and_keeps_its_lines_at_debug(tmp_path, capfd, caplog):
    """Off a terminal (pipelines, CI) Feast's coloured per-view lines are not printed."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="hllm.features"):
        build(tmp_path)
    out = capfd.readouterr().out
    assert "\x1b[" not in out and "Materializing" not in out
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feast ")]
    # one view per materialize call (progress between views), kept as one debug line
    assert sum(m.count("Materializing 1 feature views") for m in kept) == 4, kept
    assert not any("\x1b" in m for m in kept)
