"""Shared fixtures: real data paths, small synthetic datasets, an isolated cache."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ML100K = (ROOT / ".." / "shared" / "data" / "ml-100k").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the two cores
    # One torch thread per worker and per process a test starts: two pools of two threads
    # on two cores oversubscribe them and every torch test slows down several times.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Western"]


def write_recbole(directory: Path, inter_rows: list[tuple], item_rows: list[tuple] | None,
                  name: str = "toy") -> Path:
    """Write a RecBole atomic dataset (typed headers, tab-separated)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += ["\t".join(map(str, r)) for r in inter_rows]
    (directory / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if item_rows is not None:
        lines = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
        lines += ["\t".join(map(str, r)) for r in item_rows]
        (directory / f"{name}.item").write_text("\n".join(lines) + "\n")
    return directory


def synthetic_rows(n_users: int = 40, n_items: int = 60, seed: int = 0,
                   min_len: int = 8, max_len: int = 20) -> tuple[list[tuple], list[tuple]]:
    """Users who mostly follow one genre, so a model has something real to learn."""
    rng = random.Random(seed)
    items = [(i, f"Movie {i}", GENRES[i % len(GENRES)]) for i in range(1, n_items + 1)]
    by_genre: dict[str, list[int]] = {}
    for i, _, g in items:
        by_genre.setdefault(g, []).append(i)
    inter = []
    for u in range(1, n_users + 1):
        genre = GENRES[u % len(GENRES)]
        t = 1_000_000_000 + u * 10_000  # epoch seconds in 2001
        chosen = rng.sample(range(1, n_items + 1), k=rng.randint(min_len, max_len))
        for i in chosen:
            if rng.random() < 0.7:
                i = rng.choice(by_genre[genre])
            t += rng.randint(1, 100)
            inter.append((u, i, 4, t))
    return inter, items


def ml100k_sample(directory: Path, max_user: int) -> Path:
    """ml-100k restricted to users 1..max_user (every item kept): real data, less compute.

    For tests that check wiring (a pipeline, a CLI), not model quality: 300 users keep
    all four LLM4MSR scenarios and about a third of the ratings.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for path in ML100K.iterdir():
        lines = path.read_text().splitlines()
        if path.suffix in (".inter", ".user"):
            lines = lines[:1] + [ln for ln in lines[1:] if int(ln.split("\t", 1)[0]) <= max_user]
        (directory / path.name).write_text("\n".join(lines) + "\n")
    return directory


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


MLFLOW_BUCKET = "mlflow"


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


def untrained_run(base: Path, model: str = "sasrec", n_users: int = 200,
                  n_items: int = 3_000) -> tuple[Path, int]:
    """A run directory as `hllm train` leaves it, for an untrained cpu-tiny `model` (no
    training: seconds). Returns it and its catalog size (200 users over 3,000 titles
    touch about 1,800 of them)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from hllm.config import load_config
    from hllm.train import build_model, load_split

    data = write_recbole(base / "toy", *synthetic_rows(n_users=n_users, n_items=n_items))
    cfg = load_config("cpu-tiny")
    split = load_split(str(data), cfg)
    torch.manual_seed(cfg.train.seed)
    built = build_model(cfg, model, split)
    run = base / f"run-{model}"
    (run / "best").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in built.state_dict().items()},
              str(run / "best" / "model.safetensors"))
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"run": {"model": model, "dataset": str(data)}, **cfg.to_dict()}, sort_keys=False))
    (run / "metrics.json").write_text(json.dumps(
        {"recall@10": 0.0, "ndcg@10": 0.0, "split_sha256": split.fingerprint()}))
    return run, split.num_items
