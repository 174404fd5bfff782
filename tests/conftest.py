"""Shared fixtures: real servers, small synthetic datasets, an isolated cache (the
plain helpers they use are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import MLFLOW_BUCKET, ml100k_sample, synthetic_rows, write_recbole

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the two cores
    # One torch thread per worker and per process a test starts: two pools of two threads
    # on two cores oversubscribe them and every torch test slows down several times.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ml100k_300(tmp_path_factory) -> Path:
    """`ml100k_sample` with 300 users, written once per session (tests only read it)."""
    return ml100k_sample(tmp_path_factory.mktemp("ml100k-300") / "ml-100k", 300)


@pytest.fixture
def toy_data(tmp_path) -> Path:
    inter, items = synthetic_rows()
    return write_recbole(tmp_path / "toy", inter, items)


SERVER_FIXTURES = {"s3_endpoint", "s3_env", "mlflow_server_url", "mlflow_env"}


def pytest_addoption(parser):
    parser.addoption("--record-losses", action="store_true",
                     help="print the losses tests/test_recorded_loss.py pins instead of checking them")


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts a server (through these fixtures) `server`: the fast tier
    (`make test-fast`: -m "fast and not server") leaves it out whatever its module says."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that pins torch's thread count (process-wide) does not slow every later test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_item_cache(tmp_path, monkeypatch):
    """Item-embedding caches go to a temp dir; the converted SmolLM2 stays shared."""
    models = Path(os.environ.get("HLLM_CACHE", Path.home() / ".cache" / "hllm")) / "models"
    cache = tmp_path / "hllm-cache"
    cache.mkdir()
    models.mkdir(parents=True, exist_ok=True)  # a conversion made by one test serves all
    (cache / "models").symlink_to(models)
    monkeypatch.setenv("HLLM_CACHE", str(cache))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3-compatible endpoint on 127.0.0.1 for the whole session."""
    from servers import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as url:
        yield url


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    from servers import S3_TEST_CREDENTIALS

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for key, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


@pytest.fixture(scope="session")
def mlflow_server_url(s3_endpoint, tmp_path_factory):
    """A real `mlflow server` for the session: SQLite store, artifacts on the moto bucket."""
    from servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow"), s3_endpoint, MLFLOW_BUCKET) as url:
        yield url


@pytest.fixture
def mlflow_env(mlflow_server_url, s3_env, monkeypatch):
    """MLFLOW_TRACKING_URI (and the S3 env) set for one test; the server URL is returned."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_url)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return mlflow_server_url
