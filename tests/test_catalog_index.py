"""Catalog scale: the HNSW index against exact cosine, its exclusions, its file, the threshold.

The recall test uses bench/catalog_scale.py's clustered vectors (the bench's reasons for
them are in its docstring), small enough to build in about a second. The threshold test
registers an untrained SASRec (random id embeddings: no structure, the index's hard case)
into a SQLite-backed MLflow store (no server) three times: far below the threshold, at it
and one item above it, and compares the exact and the indexed pyfunc's answers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import untrained_run
from hllm.catalog_index import (EXACT_MAX_ITEMS, INDEX_FILE, IndexParams, build_index,
                                load_index, save_index, search)
from hllm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
RECALL_BAR = 0.95  # the bench's bar at 10^6 items; small catalogs should clear it easily

_spec = importlib.util.spec_from_file_location("bench_catalog_scale",
                                               ROOT / "bench" / "catalog_scale.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_catalog_scale"] = bench  # dataclasses look their module up while it runs
_spec.loader.exec_module(bench)


def exact_top(table: np.ndarray, query: np.ndarray, k: int, exclude=()) -> list[int]:
    """Reference: cosine to every row, padding and `exclude` masked, top k."""
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    scores = unit @ (query / np.linalg.norm(query))
    scores[[0, *exclude]] = -np.inf
    return np.argsort(-scores, kind="stable")[:k].tolist()


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_recall_at_10_against_exact_on_clustered_vectors():
    # 20,000 items in 128-d with the bench's topic structure: a 64-d latent part, noise,
    # a shared offset; queries are items plus a within-topic step, as user vectors are.
    cat = bench.clustered(20_000, 128, 200, np.random.default_rng(0))
    index = build_index(cat.table, progress=False)
    found = [ids for ids, _ in search(index, cat.queries, [10] * 200, [()] * 200)]
    truth = [exact_top(cat.table, q, 10) for q in cat.queries]
    # 0.998 with the shipped efSearch=256; efSearch=16 on the same graph gives 0.93.
    assert recall(found, truth) >= RECALL_BAR


def test_history_and_padding_are_never_returned():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((500, 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    table[0] = 5 * query  # padding is the best match of all: it must still never come back
    history = exact_top(table, query, 5)  # the five best real items: all excluded
    index = build_index(table, progress=False)
    (ids, scores), = search(index, query[None] / np.linalg.norm(query), [10], [history])
    # 500 rows, HNSW with efSearch 128 >= the 16 fetched: this search is exact.
    assert ids == exact_top(table, query, 10, exclude=history)
    assert 0 not in ids and not set(ids) & set(history) and len(ids) == 10
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    assert scores == pytest.approx((unit[ids] @ (query / np.linalg.norm(query))).tolist(),
                                   abs=1e-5)  # cosines, not distances
    # Without a history the best items come back first, padding still left out.
    (ids, _), = search(index, query[None] / np.linalg.norm(query), [5], [()])
    assert ids == history


def test_save_load_round_trip_and_a_file_for_another_table(tmp_path):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((1_000, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = build_index(table, IndexParams(ef_search=77), progress=False)
    path = save_index(index, tmp_path / INDEX_FILE)
    assert path.read_bytes()[:4] == b"IHNf"  # FAISS's own HNSW-flat record, not a pickle
    loaded = load_index(path, width=32, rows=1_000)
    assert loaded.hnsw.efSearch == 77  # the search setting travels with the file
    exclude = [[1, 2, 3]] * 20
    assert search(loaded, queries, [10] * 20, exclude) == search(index, queries, [10] * 20, exclude)
    with pytest.raises(DataError, match="indexes 32-d vectors but the item table is 576-d"):
        load_index(path, width=576, rows=1_000)
    with pytest.raises(DataError, match="holds 1,000 vectors but the item table has 1,683 rows"):
        load_index(path, width=32, rows=1_683)
    (tmp_path / "junk.faiss").write_bytes(b"not an index at all")
    with pytest.raises(DataError, match="junk.faiss: not a FAISS index") as err:
        load_index(tmp_path / "junk.faiss", width=32, rows=1_000)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="do not fit a 32-d index"):
        search(loaded, np.zeros((1, 16), np.float32), [10], [()])


@pytest.fixture
def own_tracking_uri(monkeypatch):
    """This test points mlflow's process-wide URI at its own store: put it back after, or
    later tests in the process (an in-process `hllm train`) log there."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    yield
    mlflow.set_tracking_uri(before)


def test_index_ships_only_above_the_threshold_and_agrees_with_exact(tmp_path, monkeypatch,
                                                                    own_tracking_uri):
    import mlflow

    from hllm.registry import register

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run, num_items = untrained_run(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # artifacts: ./mlruns under tmp_path
    kw = {"onnx": False, "tracking_uri": uri, "user_tower": "eager"}  # the index is the subject
    exact = register(run, "catalog", **kw)  # ~1,800 items: far below
    at = register(run, "catalog", exact_max_items=num_items, **kw)
    above = register(run, "catalog", exact_max_items=num_items - 1, **kw)
    models = {}
    for label, reg in (("exact", exact), ("at", at), ("above", above)):
        version = reg.versions[0].version
        models[label] = _pyfunc(uri, "catalog", version)
        shipped = Path(mlflow.artifacts.download_artifacts(f"models:/catalog/{version}",
                                                           dst_path=str(tmp_path / label)))
        requirements = (shipped / "requirements.txt").read_text()
        indexed = label == "above"  # at the threshold the catalog is still scored exactly
        assert (shipped / "artifacts" / INDEX_FILE).is_file() is indexed, label
        assert ("faiss-cpu==" in requirements) is indexed, (label, requirements)
        assert (models[label].catalog is not None) is indexed, label
    # The same users through both pyfuncs: 200 histories of 20 items from the catalog.
    rng = np.random.default_rng(3)
    ids = models["exact"].item_ids[1:]
    assert len(ids) == num_items
    histories = [[ids[i] for i in rng.choice(len(ids), 20, replace=False)] for _ in range(200)]
    frame = pd.DataFrame({"history": histories})
    want = models["exact"].predict(None, frame, {"k": 10})
    got = models["above"].predict(None, frame, {"k": 10})
    assert recall(list(got["item_ids"]), list(want["item_ids"])) >= RECALL_BAR
    for hist, items, scores, ref_items, ref_scores in zip(
            histories, got["item_ids"], got["scores"], want["item_ids"], want["scores"]):
        assert len(items) == 10 and not set(items) & set(hist)
        assert scores == sorted(scores, reverse=True)
        common = {i: s for i, s in zip(ref_items, ref_scores)}
        for item, score in zip(items, scores):  # the index reports the exact cosine
            if item in common:
                assert score == pytest.approx(common[item], abs=1e-5)


def _pyfunc(uri: str, name: str, version: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()


def test_threshold_is_checked_and_the_cli_default_is_the_library_default(tmp_path):
    from hllm.cli import build_parser
    from hllm.ranking_registration import prepare

    args = build_parser().parse_args(["register", "--run", "runs/x"])
    assert args.exact_max_items == EXACT_MAX_ITEMS == 100_000
    with pytest.raises(ConfigError, match="exact_max_items is -1"):
        prepare(tmp_path, tmp_path, onnx=False, onnx_dir=None, pipeline_run_id=None,
                validation=None, feature_repo=None, exact_max_items=-1)
