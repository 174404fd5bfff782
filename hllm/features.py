"""Feature tables for the Feast repo in feature_repo/: write, apply, materialize, read.

    hllm features build --data ../shared/data/ml-100k --run runs/features --embed-preset cpu-default
    hllm features add-items new_items.csv --run runs/features

`build_features` validates the data first (bad data never reaches the online store),
then, in a staging directory, copies the repo definitions, writes the Parquet sources
(item text, item embeddings, each user's history as of every event), runs `feast apply`
and materializes to the SQLite online store; only a complete build replaces
RUN/feature_repo. `add_items` embeds cold-start items with the same Item LLM and pushes
them, online and offline. Training reads user histories through point-in-time-correct
historical retrieval (hllm.feast_windows, from a repo built with the run's data
settings; `user_histories_as_of` for any entity rows); serving reads the online store.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hllm.atomic import exclusive, swap_dir
from hllm.data.item_text import item_prompt
from hllm.data.readers import RawData, read_dataset, read_item_table
from hllm.config import Config, DataConfig, ItemLLMConfig, load_config, replace
from hllm.data.split import build_split, event_microseconds, prepared_interactions, time_ordered
from hllm.errors import ConfigError, DataError, HLLMError, SaveError, first_line
from hllm.progress import Progress
from hllm.validation import ValidationConfig, validate_dataset

log = logging.getLogger(__name__)

REPO_TEMPLATE = Path(__file__).resolve().parents[1] / "feature_repo"
REPO_FILES = ("feature_store.yaml", "features.py")
MANIFEST = "hllm_features.json"  # what the repo was built from, and with which Item LLM
ONLINE_WRITE_ROWS = 10_000  # user_history rows per online write (a progress line between)


def item_llm_embeddings(data: str, preset: str | Config,
                        raw: RawData | None = None) -> tuple[list[str], np.ndarray]:
    """Raw item ids and their frozen Item LLM embeddings (through the embedding cache).

    `preset`: a preset name, or a run's whole Config (its Item LLM as a config file or
    --set left it); the cache key is the one training uses, so either side reuses the
    other's pass. `raw`: the dataset already read (the feature build's), not read again.
    """
    import torch

    from hllm.distributed import Dist
    from hllm.item_cache import load_or_compute_item_cache
    from hllm.models.hllm import HLLM

    base = load_config(preset) if isinstance(preset, str) else preset
    cfg = replace(base, {"item_llm.trainable": "frozen", "item_llm.standardize": False})
    split = build_split(raw if raw is not None else read_dataset(data, cfg.data.format), cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = HLLM(cfg, split.item_text)
    load_or_compute_item_cache(model, cfg, torch.device("cpu"), Dist())
    return split.item_raw_ids[1:], model.item_cache[1:].numpy()


@dataclass
class FeatureBuild:
    repo: Path
    counts: dict[str, int]
    seconds: float


@dataclass
class AddedItems:
    item_ids: list[str]
    embedding_dim: int
    seconds: float


def _ts(seconds: np.ndarray | int) -> pd.Series:
    return pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s", utc=True)


def item_text_table(raw: RawData, as_of: int) -> pd.DataFrame:
    fields = [c for c in raw.items.columns if c != "item_id"]
    texts = [item_prompt({f: str(row[f]) for f in fields}, prompt="")
             for _, row in raw.items.iterrows()]
    return pd.DataFrame({"item_id": raw.items["item_id"].astype(str), "text": texts,
                         "event_timestamp": _ts(np.full(len(texts), as_of))})


def item_embedding_table(item_ids: list[str], embeddings: np.ndarray | None, as_of: int) -> pa.Table:
    """Arrow table with an explicit list<float32> type, so an empty table still has a schema."""
    ids = item_ids if embeddings is not None else []
    vectors = [] if embeddings is None else [row.astype(np.float32).tolist() for row in embeddings]
    return pa.table({"item_id": pa.array(ids, pa.string()),
                     "embedding": pa.array(vectors, pa.list_(pa.float32())),
                     "event_timestamp": pa.array(_ts(np.full(len(ids), as_of)), pa.timestamp("s", "UTC"))})


def knowledge_table(key: str, ids: list[str], vectors: np.ndarray | None, as_of: int,
                    texts: dict[str, str] | None = None) -> pa.Table:
    """LLM4MSR knowledge vectors (scenario or user), typed so an empty table has a schema."""
    vecs = [] if vectors is None else [row.astype(np.float32).tolist() for row in vectors]
    columns = {key: pa.array(ids, pa.string()), "vector": pa.array(vecs, pa.list_(pa.float32()))}
    if key == "user_id":
        columns["text"] = pa.array([(texts or {}).get(i, "") for i in ids], pa.string())
    columns["event_timestamp"] = pa.array(_ts(np.full(len(ids), as_of)), pa.timestamp("s", "UTC"))
    return pa.table(columns)


def push_knowledge(repo: str | Path, scenarios: tuple[list[str], np.ndarray],
                   users: tuple[list[str], np.ndarray],
                   user_texts: dict[str, str] | None = None) -> dict[str, int]:
    """Write LLM4MSR knowledge vectors online and offline; serving then never runs the LLM."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore
    from feast.data_source import PushMode

    repo = feature_repo_dir(repo)
    store = FeatureStore(repo_path=str(repo))
    now = int(time.time())
    for (ids, vectors), key, source in ((scenarios, "scenario", "scenario_knowledge_push"),
                                        (users, "user_id", "user_knowledge_push")):
        if len(ids) != len(vectors):
            raise DataError(f"{source}: {len(vectors)} vectors for {len(ids)} keys")
        table = knowledge_table(key, [str(i) for i in ids], np.asarray(vectors), now, user_texts)
        store.push(source, table.to_pandas(), to=PushMode.ONLINE_AND_OFFLINE)
    return {"scenario_knowledge": len(scenarios[0]), "user_knowledge": len(users[0])}


def user_history_table(inter: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """One row per event: the user's last `max_len` items up to and including that event.

    `inter` is time-ordered (hllm.data.split.time_ordered). Each row's event_timestamp is
    its event's time to the microsecond, the events of one second in file order
    (split.event_microseconds), so a point-in-time lookup as of an event returns exactly
    the history up to it, even when the user rated several items in that second.
    """
    times = event_microseconds(inter)
    rows = []
    for user, group in inter.assign(_us=times).groupby("user_id", sort=False):
        items, stamps = group["item_id"].astype(str).tolist(), group["timestamp"].tolist()
        micros = group["_us"].tolist()
        for i in range(len(items)):
            lo = max(0, i + 1 - max_len)
            rows.append((str(user), items[lo: i + 1], stamps[lo: i + 1], i + 1 - lo, micros[i]))
    frame = pd.DataFrame(rows, columns=["user_id", "item_ids", "timestamps", "length", "us"])
    frame["event_timestamp"] = pd.to_datetime(frame.pop("us").to_numpy(np.int64), unit="us",
                                              utc=True)
    return frame


ID_SEPARATOR = "\x1f"  # joins item ids in user_history_training (feature_repo/features.py)


def training_history_table(history: pd.DataFrame) -> pd.DataFrame:
    """`user_history_table` with each row's item ids joined into one string (offline only)."""
    joined = [ID_SEPARATOR.join(ids) for ids in history["item_ids"]]
    for ids, text in zip(history["item_ids"], joined):
        if len(ids) and text.count(ID_SEPARATOR) != len(ids) - 1:
            bad = next(i for i in ids if ID_SEPARATOR in i)
            raise DataError(f"item id {bad!r} contains the character \\x1f, which separates "
                            "ids in the user_history_training view")
    return pd.DataFrame({"user_id": history["user_id"], "item_ids": joined,
                         "event_timestamp": history["event_timestamp"]})


def write_newest_histories(store, history: pd.DataFrame, progress: bool | None = None) -> None:
    """Put each user's newest `user_history` row in the online store, as materialize would.

    The offline table keeps one row per event (100k on ml-100k) for point-in-time joins,
    and Feast's dask offline store pickles and hashes every one of those lists while
    materializing: 20 s of a 29 s build. The online store keeps only the newest row per
    user, and each row of `user_history_table` has a time of its own, so writing those
    943 rows through Feast's online write path gives the same online state.
    """
    newest = history.loc[history.groupby("user_id", sort=False)["event_timestamp"].idxmax()]
    newest = newest.reset_index(drop=True)
    with Progress(len(newest), "online user_history", "row", bar=progress) as shown:
        for lo in range(0, len(newest), ONLINE_WRITE_ROWS):
            chunk = newest.iloc[lo: lo + ONLINE_WRITE_ROWS]
            store.write_to_online_store("user_history", chunk)
            shown.update(len(chunk))


@contextlib.contextmanager
def feast_output(what: str) -> Iterator[None]:
    """Feast prints coloured lines per view to stdout: on a terminal let it; in a log
    (pipelines, pods, CI) keep them as one debug line without the ANSI codes."""
    if sys.stdout.isatty():
        yield
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        text = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())
        log.debug("%s: %s", what, " ".join(text.split()))


def repo_objects(repo: Path) -> list:
    """The Feast objects `repo/features.py` defines, imported from its path.

    Loaded under a name of its own, so a previous build's module is never reused and
    neither sys.path nor the working directory changes (the `feast apply` CLI imports
    repo modules by name from the working directory).
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    path = repo / "features.py"
    spec = importlib.util.spec_from_file_location("hllm_feature_repo", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not a Python module Feast definitions can be read from")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FeatureView, FeatureService, DataSource)
    found: dict[int, object] = {id(v): v for v in vars(module).values() if isinstance(v, kinds)}
    return list(found.values())


def _apply(store, repo: Path) -> None:
    """`feast apply` through the public FeatureStore.apply: the repo's project and objects.

    Each view's batch source is checked first, as `feast apply` does (Feast logs a
    warning for a path it cannot read).
    """
    from feast import FeatureView, Project

    objects = [Project(name=store.config.project), *repo_objects(repo)]
    for view in objects:
        if isinstance(view, FeatureView) and view.batch_source is not None:
            view.batch_source.validate(store.config)
    with feast_output("feast apply"):
        store.apply(objects)


def build_features(data: str, run_dir: str | Path, max_history: int = 50,
                   embed_preset: str | Config | None = None,
                   embeddings: np.ndarray | None = None,
                   embedding_ids: list[str] | None = None,
                   validation: ValidationConfig | None = ValidationConfig(),
                   data_config: DataConfig | None = None) -> FeatureBuild:
    """Validate `data`, then build RUN/feature_repo aside and swap it in.

    `data_config`: write user histories from the interactions a training run with these
    data settings is cut from (its de-duplication, k-core, held-out cold items, dropped
    short users), so training can read its windows from this repo
    (hllm.feast_windows); default: every interaction as read.

    `embed_preset`: fill item_embedding with this preset's (or run Config's) frozen Item
    LLM; the manifest records that Item LLM, so `add_items` embeds new items in the same
    space.

    Nothing is written unless the data passed validation, and the previous repo (its
    offline files and online store) stays in place until the new one is complete: a
    failure part-way leaves the features that were being served. Re-running on the same
    data writes the same tables and online values.
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    t0 = time.perf_counter()
    if validation is not None:
        report = validate_dataset(data, cfg=validation, reuse=True)
        if not report.success:
            raise DataError(f"features not built (nothing written): {report.summary()}")
    raw = read_dataset(data)
    if embed_preset is not None:
        embedding_ids, embeddings = item_llm_embeddings(data, embed_preset, raw)
    # Absolute from here on: the repo records its sources relative to its own path.
    run_dir = Path(run_dir).resolve()
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    staged = run_dir / ".feature_repo.staged"
    # Two builds into one run directory would share the staged repo: the second waits for
    # nothing and fails at once, naming the first.
    with exclusive(run_dir / ".features.lock", "features build"):
        shutil.rmtree(staged, ignore_errors=True)
        try:
            inter = (prepared_interactions(raw, data_config)[0] if data_config is not None
                     else time_ordered(raw.interactions[["user_id", "item_id", "timestamp"]]))
            counts = _write_repo(raw, staged, max_history, embeddings, embedding_ids, inter)
            manifest = {"data": str(data), "files": raw.files, "max_history": max_history,
                        "history_data_config": (asdict(data_config) if data_config is not None
                                                else None),
                        "embedding": _embedding_record(embed_preset),
                        "embedding_dim": int(embeddings.shape[1]) if embeddings is not None else 0,
                        "counts": counts}
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            final = run_dir / "feature_repo"
            swap_dir(staged, final)
        except BaseException as exc:
            if created:  # a run directory made only for this build is not left behind empty
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, HLLMError):
                raise SaveError(f"{run_dir}: features not built ({first_line(exc)}); the "
                                "previous feature_repo/ is unchanged") from exc
            raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    seconds = time.perf_counter() - t0
    log.info("features built in %.1f s: %s", seconds, counts)
    return FeatureBuild(final, counts, seconds)


def _embedding_record(embed_preset: str | Config | None) -> dict[str, Any] | None:
    """Which Item LLM filled item_embedding, enough to build it again for new items."""
    if embed_preset is None:
        return None
    if isinstance(embed_preset, str):
        return {"preset": embed_preset}
    return {"preset": embed_preset.preset, "item_llm": asdict(embed_preset.item_llm),
            "seed": embed_preset.train.seed}


def build_for_training(data: str, run_dir: str | Path, cfg: Config, max_history: int = 50,
                       validation: ValidationConfig | None = ValidationConfig()) -> FeatureBuild:
    """The training pipeline's feature step: the feature repo a run with `cfg` trains from.

    User histories are cut from the run's data settings, rows of at least
    data.max_history + 1 items (the training window, hllm.feast_windows). When the run's
    Item LLM is frozen, item_embedding holds that Item LLM's vectors: the very ones
    training reads from the same embedding cache, so the pass moves here from the train
    step rather than adding one. A fine-tuned Item LLM exists only after training, so for
    those runs item_embedding stays empty (`hllm features add-items --model-run RUN`
    embeds with a trained one).
    """
    frozen = cfg.item_llm.trainable == "frozen"
    return build_features(data, run_dir, max_history=max(max_history, cfg.data.max_history + 1),
                          embed_preset=cfg if frozen else None, validation=validation,
                          data_config=cfg.data)


def _write_repo(raw: RawData, repo: Path, max_history: int, embeddings: np.ndarray | None,
                embedding_ids: list[str] | None, inter: pd.DataFrame) -> dict[str, int]:
    """Copy the definitions, write the Parquet sources, apply, materialize; return row counts."""
    from feast import FeatureStore

    (repo / "data").mkdir(parents=True)
    for name in REPO_FILES:
        shutil.copy(REPO_TEMPLATE / name, repo / name)
    first = int(raw.interactions["timestamp"].min()) - 1  # items exist before any event
    text = item_text_table(raw, first)
    text.to_parquet(repo / "data" / "item_text.parquet", index=False)
    if embeddings is not None and len(embedding_ids or text["item_id"]) != len(embeddings):
        raise DataError(f"{len(embeddings)} item embeddings for "
                        f"{len(embedding_ids or text['item_id'])} item ids")
    emb = item_embedding_table(embedding_ids or text["item_id"].tolist(), embeddings, first)
    pq.write_table(emb, repo / "data" / "item_embedding.parquet")
    history = user_history_table(inter, max_history)
    history.to_parquet(repo / "data" / "user_history.parquet", index=False)
    training_history_table(history).to_parquet(repo / "data" / "user_history_training.parquet",
                                               index=False)
    for key, name in (("scenario", "scenario_knowledge"), ("user_id", "user_knowledge")):
        pq.write_table(knowledge_table(key, [], None, first), repo / "data" / f"{name}.parquet")
    store = FeatureStore(repo_path=str(repo))
    _apply(store, repo)
    end = datetime.fromtimestamp(int(raw.interactions["timestamp"].max()) + 1, tz=timezone.utc)
    others = [v.name for v in store.list_feature_views() if v.name != "user_history" and v.online]
    start = datetime.fromtimestamp(first - 1, tz=timezone.utc) - timedelta(days=1)
    with Progress(len(others), "materialize", "view") as shown, feast_output("feast materialize"):
        for view in others:  # one at a time, so long work says how far it is
            store.materialize(start_date=start, end_date=end, feature_views=[view])
            shown.update(1)
    write_newest_histories(store, history)
    return {"item_text": len(text), "item_embedding": emb.num_rows, "user_history": len(history),
            "users": int(history["user_id"].nunique())}


def feature_repo_dir(path: str | Path) -> Path:
    """Accept RUN or RUN/feature_repo; fail clearly when no built repo is there."""
    path = Path(path)
    repo = path if (path / "feature_store.yaml").is_file() else path / "feature_repo"
    if not (repo / MANIFEST).is_file():
        raise ConfigError(f"{path}: no feature repo built by `hllm features build` "
                          f"(looked for {repo / MANIFEST})")
    return repo


def load_item_llm(preset: str | None = None, model_run: str | Path | None = None,
                  recorded: dict[str, Any] | None = None):
    """The Item LLM of a trained run (its best weights), of a preset (frozen/pretrained), or
    as a feature repo's manifest `recorded` it (its config and seed)."""
    import torch

    from hllm.models.item_llm import ItemLLM
    from hllm.onnx_export import load_run_item_llm

    if model_run is not None:
        return load_run_item_llm(model_run)[1]
    if preset is None and recorded and "item_llm" in recorded:
        torch.manual_seed(recorded["seed"])  # the same random init as the run's HLLM
        return ItemLLM(ItemLLMConfig(**recorded["item_llm"])).eval()
    if preset is None:
        raise ConfigError("name the Item LLM: a preset (--embed-preset) or a trained run (--model-run)")
    cfg = load_config(preset)
    torch.manual_seed(cfg.train.seed)  # the same random init as the HLLM built from this config
    return ItemLLM(cfg.item_llm).eval()


def add_items(items_file: str, repo: str | Path, embed_preset: str | None = None,
              model_run: str | Path | None = None) -> AddedItems:
    """Cold start: embed new items' text and push text + embedding, servable at once.

    The Item LLM defaults to the one the repo was built with, so new vectors live in the
    same space as the catalogue's. Everything is computed before the first push.
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    import torch
    from feast import FeatureStore
    from feast.data_source import PushMode

    t0 = time.perf_counter()
    repo = feature_repo_dir(repo)
    manifest = json.loads((repo / MANIFEST).read_text())
    items = read_item_table(items_file)
    fields = [c for c in items.columns if c != "item_id"]
    blank = items[fields].apply(lambda col: col.str.strip() == "").all(axis=1) if fields else None
    if not fields or blank.any():
        row = int(blank.to_numpy().nonzero()[0][0]) + 1 if fields else 1
        raise DataError(f"{items_file}: data row {row} has no text in any of "
                        f"{fields or 'its columns'}; the Item LLM needs text to embed")
    recorded = manifest.get("embedding") or {}
    if embed_preset is None and model_run is None and "item_llm" not in recorded:
        embed_preset = recorded.get("preset")
    item_llm = load_item_llm(embed_preset, model_run, recorded)
    texts = [{f: str(row[f]) for f in fields} for _, row in items.iterrows()]
    vectors = item_llm.encode_all(item_llm.tokenize(texts), device=torch.device("cpu")).numpy()
    dim = manifest.get("embedding_dim") or 0
    if dim and vectors.shape[1] != dim:
        raise ConfigError(f"the Item LLM gives {vectors.shape[1]}-d vectors but {repo} holds "
                          f"{dim}-d embeddings; use the Item LLM the repo was built with")
    now = int(time.time())
    ids = items["item_id"].astype(str).tolist()
    text = pd.DataFrame({"item_id": ids,
                         "text": [item_prompt(t, prompt="") for t in texts],
                         "event_timestamp": _ts(np.full(len(ids), now))})
    emb = item_embedding_table(ids, vectors, now).to_pandas()
    store = FeatureStore(repo_path=str(repo))
    store.push("item_text_push", text, to=PushMode.ONLINE_AND_OFFLINE)
    store.push("item_embedding_push", emb, to=PushMode.ONLINE_AND_OFFLINE)
    seconds = time.perf_counter() - t0
    log.info("pushed %d new items in %.1f s", len(ids), seconds)
    return AddedItems(ids, int(vectors.shape[1]), seconds)


def user_histories_as_of(repo: str | Path, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Training-side read: each (user_id, event_timestamp) row joined with the history known then.

    Point-in-time correct: an event after a row's timestamp never appears in its history.
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(feature_repo_dir(repo)))
    return store.get_historical_features(
        entity_df=entity_df, features=[f"user_history:{f}" for f in ("item_ids", "timestamps", "length")],
    ).to_df()
