"""The user tower shipped as ONNX: it answers as the eager tower does, a graph that does not
is never shipped, the graph is exported once per weights, and where there is no graph (a
tower that does not export or match, or no onnxruntime) the eager tower serves.

Untrained cpu-tiny runs (no training: seconds); the artifacts are the ones `hllm register`
logs (hllm.registry.rebuild_model_dir), loaded as the server loads them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import untrained_run
from hllm import user_tower_onnx
from hllm.pyfunc_model import USER_TOWER_FILE, HLLMRecommender
from hllm.ranking_registration import rebuild_model_dir


def artifacts(run: Path, out: Path, user_tower: str = "onnx") -> dict[str, str]:
    config = yaml.safe_load((run / "config.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return rebuild_model_dir(run, config, metrics, out, user_tower=user_tower)


def load(arts: dict[str, str]) -> HLLMRecommender:
    class Context:
        artifacts = arts

    model = HLLMRecommender()
    model.load_context(Context())
    return model


@pytest.fixture(scope="module", params=["sasrec", "hllm"])
def shipped(request, tmp_path_factory):
    """(run, artifacts with user_tower.onnx, seconds the export took, cache) per model."""
    base = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HLLM_CACHE", str(base / "cache"))
        run, _ = untrained_run(base, request.param, n_users=60, n_items=400)
        started = time.perf_counter()
        arts = artifacts(run, base / "artifacts")
        seconds = time.perf_counter() - started
    return run, arts, seconds, base / "cache"


def test_the_graph_answers_as_the_eager_tower(shipped):
    _, arts, _, _ = shipped
    assert USER_TOWER_FILE in arts
    model = load(arts)
    assert model.onnx_tower is not None
    rng = np.random.default_rng(0)
    n = len(model.item_ids) - 1
    for batch, longest in ((1, 1), (1, model.max_history), (8, model.max_history), (5, 3)):
        hists = [list(rng.integers(1, n + 1, rng.integers(1, longest + 1))) for _ in range(batch)]
        got = model._user_vectors(hists).numpy()
        want = model._user_vectors(hists, eager=True).numpy()
        assert got.shape == want.shape == (batch, model.table.shape[1])
        assert np.abs(got - want).max() <= user_tower_onnx.TOLERANCE
    # Whole answers: the same items (up to near-ties) and scores, through the graph.
    raw = [[model.item_ids[i] for i in rng.integers(1, n + 1, 20)] for _ in range(32)]
    graph = model.recommend(raw, [10] * 32)
    model.onnx_tower = None
    eager = model.recommend(raw, [10] * 32)
    overlap = np.mean([len(set(a[0]) & set(b[0])) / 10 for a, b in zip(graph, eager)])
    assert overlap >= 0.95
    for (items, scores), (ref_items, ref_scores) in zip(graph, eager):
        ref = dict(zip(ref_items, ref_scores))
        assert all(abs(s - ref[i]) <= 1e-5 for i, s in zip(items, scores) if i in ref)


def test_the_same_weights_export_once(shipped, tmp_path, caplog, monkeypatch):
    run, first, seconds, cache = shipped
    monkeypatch.setenv("HLLM_CACHE", str(cache))
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="hllm.user_tower_onnx"):
        again = artifacts(run, tmp_path / "again")
    assert "from the cache" in caplog.text
    assert Path(again[USER_TOWER_FILE]).read_bytes() == Path(first[USER_TOWER_FILE]).read_bytes()
    assert time.perf_counter() - started < seconds


def test_a_graph_that_does_not_match_is_not_shipped(shipped, tmp_path, monkeypatch, caplog):
    """The run's weights change, the exporter hands back the old graph: parity catches it,
    and the version ships without a graph (the eager tower serves it)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run, arts, _, _ = shipped
    changed = tmp_path / "run"
    shutil.copytree(run, changed)
    weights = load_file(str(changed / "best" / "model.safetensors"))
    save_file({k: v + 0.05 if v.is_floating_point() else v for k, v in weights.items()},
              str(changed / "best" / "model.safetensors"))
    monkeypatch.setattr(torch.onnx, "export",
                        lambda model, args, f, **kw: shutil.copyfile(arts[USER_TOWER_FILE], f))
    with caplog.at_level(logging.WARNING, logger="hllm.pyfunc_model"):
        got = artifacts(changed, tmp_path / "out")
    assert re.search(r"the ONNX graph differs from the eager tower by \d\.\d\de-\d\d .*"
                     r"registering without user_tower.onnx", caplog.text), caplog.text
    assert USER_TOWER_FILE not in got and not (tmp_path / "out" / USER_TOWER_FILE).exists()
    cache = user_tower_onnx.storage.cache_root() / "user-towers"
    assert cache.is_dir() and not list(cache.iterdir())  # no graph, no temp file
    assert load(got).onnx_tower is None


def test_an_exporter_failure_ships_the_eager_tower(tmp_path, monkeypatch, caplog):
    import torch

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::made_up\nmore detail")

    run, _ = untrained_run(tmp_path, "sasrec", n_users=30, n_items=100)
    monkeypatch.setattr(torch.onnx, "export", fail)
    with caplog.at_level(logging.WARNING, logger="hllm.pyfunc_model"):
        got = artifacts(run, tmp_path / "out")
    assert ("user tower: the ONNX export failed (RuntimeError: Unsupported operator "
            "aten::made_up); registering without user_tower.onnx") in caplog.text
    assert USER_TOWER_FILE not in got


def test_eager_registration_and_serving_without_onnxruntime(shipped, tmp_path, monkeypatch, caplog):
    run, arts, _, _ = shipped
    eager = artifacts(run, tmp_path / "eager", user_tower="eager")
    assert USER_TOWER_FILE not in eager and load(eager).onnx_tower is None
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING, logger="hllm.pyfunc_model"):
        model = load(arts)
    assert model.onnx_tower is None
    assert "onnxruntime is not installed; serving the eager user tower" in caplog.text
    assert model.recommend([[model.item_ids[1], model.item_ids[2]]], [5])[0][0]


def test_an_unknown_user_tower_is_refused_before_anything_is_read(tmp_path):
    from hllm.errors import ConfigError
    from hllm.ranking_registration import prepare

    with pytest.raises(ConfigError, match="user_tower must be one of onnx, eager, got 'gpu'"):
        prepare(tmp_path / "no-such-run", tmp_path, onnx=False, onnx_dir=None,
                pipeline_run_id=None, validation=None, feature_repo=None, user_tower="gpu")
