"""The Feast repo on a real SQLite online store and Parquet offline store, in a temp dir."""

from __future__ import annotations

import numpy as np
import pandas as pd
from feast import FeatureStore

from conftest import write_recbole
from hllm.features import build_features

ITEMS = [(i, f"Movie {i}", "Drama") for i in range(1, 6)]
# user 1 watches 1, 2, 3 at t = 100, 200, 300 (plus 1990 offset); user 2 watches 4, 5
T0 = 700_000_000
INTER = [(1, 1, 5, T0 + 100), (1, 2, 5, T0 + 200), (1, 3, 5, T0 + 300),
         (2, 4, 5, T0 + 150), (2, 5, 5, T0 + 250)]


def build(tmp_path):
    data = write_recbole(tmp_path / "d", INTER, ITEMS)
    vectors = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    return build_features(str(data), tmp_path / "run", embeddings=vectors)


def test_apply_materialize_and_online_lookup(tmp_path):
    result = build(tmp_path)
    assert result.counts == {"item_text": 5, "item_embedding": 5, "user_history": 5, "users": 2}
    store = FeatureStore(repo_path=str(result.repo))
    online = store.get_online_features(
        features=["user_history:item_ids", "user_history:timestamps", "user_history:length"],
        entity_rows=[{"user_id": "1"}, {"user_id": "2"}]).to_dict()
    assert online["item_ids"] == [["1", "2", "3"], ["4", "5"]]  # latest history, oldest first
    assert online["timestamps"][0] == [T0 + 100, T0 + 200, T0 + 300]
    items = store.get_online_features(features=["item_embedding:embedding", "item_text:text"],
                                      entity_rows=[{"item_id": "2"}]).to_dict()
    np.testing.assert_allclose(items["embedding"][0], [4, 5, 6, 7])
    assert items["text"] == ["title: Movie 2 genre: Drama"]


def test_historical_retrieval_is_point_in_time_correct(tmp_path):
    result = build(tmp_path)
    store = FeatureStore(repo_path=str(result.repo))
    entity_df = pd.DataFrame({
        "user_id": ["1", "1", "1"],
        # just after the 2nd event, exactly at the 3rd, before any event
        "event_timestamp": pd.to_datetime([T0 + 250, T0 + 300, T0 + 50], unit="s", utc=True)})
    frame = store.get_historical_features(entity_df=entity_df,
                                          features=["user_history:item_ids"]).to_df()
    got = {int(ts.timestamp()): (list(v) if isinstance(v, (list, np.ndarray)) else None)
           for ts, v in zip(frame["event_timestamp"], frame["item_ids"])}
    # At T0+250 the history holds the first two events; the one at T0+300 must not leak.
    assert got[T0 + 250] == ["1", "2"]
    assert got[T0 + 300] == ["1", "2", "3"]
    # Before the user's first event there is no history (the row is empty or left out).
    assert got.get(T0 + 50) is None


def test_item_embeddings_come_from_the_item_llm(tmp_path, toy_data):
    from hllm.features import item_llm_embeddings

    ids, vectors = item_llm_embeddings(str(toy_data), "cpu-tiny")
    assert vectors.shape == (len(ids), 32)
    result = build_features(str(toy_data), tmp_path / "run", embeddings=vectors, embedding_ids=ids)
    store = FeatureStore(repo_path=str(result.repo))
    got = store.get_online_features(features=["item_embedding:embedding"],
                                    entity_rows=[{"item_id": ids[3]}]).to_dict()
    np.testing.assert_allclose(got["embedding"][0], vectors[3], rtol=1e-6)
