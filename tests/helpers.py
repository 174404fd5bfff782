"""Helpers tests import: paths, small datasets written on the fly, a run without training.

Fixtures live in conftest.py (pytest finds them there); plain functions and constants
live here, so a test module imports what it uses by name from a module meant for it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = (ROOT / ".." / "shared" / "data" / "ml-100k").resolve()
MLFLOW_BUCKET = "mlflow"  # the bucket the session's MLflow server keeps artifacts in

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
