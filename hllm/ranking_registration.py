"""Registering a ranking run (HLLM or SASRec): the recommender and its Item LLM.

    hllm register --run runs/hllm --pipeline-run-id $KFP_RUN_ID

Two registered models come out of one run: NAME (default "hllm"), the recommender as
a pyfunc (see hllm.pyfunc_model), and ONNX_NAME (default "hllm-item-llm"), the Item
LLM exported to ONNX for batch item embedding. Both versions carry the same lineage
tags and are logged to the MLflow run that logged the training (or a new one).

A catalog of more than `exact_max_items` items (default 100,000; `--exact-max-items`)
also gets an approximate nearest-neighbour index over its item vectors, built here and
logged with the pyfunc (hllm.catalog_index); smaller catalogs are scored exactly.

`plan` checks everything that can fail on bad input (the model is rebuilt from the run
and its split verified against metrics.json) before hllm.registry writes anything.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hllm import lineage, tracking
from hllm.catalog_index import EXACT_MAX_ITEMS, INDEX_FILE
from hllm.config import config_from_dict
from hllm.errors import ConfigError, DataError
from hllm.registry import code_dir
from hllm.tasks import ModelToRegister, RegistrationPlan

log = logging.getLogger(__name__)

REQUIRED_METRICS = ("recall@10", "ndcg@10", "split_sha256")
ONNX_FILE = "item_llm.onnx"


@dataclass
class Prepared:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    model_name: str
    dataset: str
    artifacts: dict[str, str]
    onnx_dir: Path | None
    tags: dict[str, str] = field(default_factory=dict)


def check_run_dir(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.yaml with a run section, best weights, metrics.json with test metrics and split hash."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    config, metrics, _ = tracking.read_run(run_dir)
    if not (run_dir / "best" / "model.safetensors").is_file():
        raise ConfigError(f"{run_dir}: no best/model.safetensors; the run has not finished an "
                          "epoch, so there is no model to register")
    if not isinstance(config, dict) or "run" not in config:
        raise ConfigError(f"{run_dir / 'config.yaml'}: no `run:` section (model, dataset); "
                          "not written by `hllm train`")
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise ConfigError(f"{run_dir / 'metrics.json'}: missing {', '.join(missing)}; "
                          "re-run `hllm evaluate --run` to write complete metrics")
    return config, metrics


def resolve_onnx(run_dir: Path, model_name: str, onnx: bool | None,
                 onnx_dir: str | Path | None) -> Path | None:
    """The exported Item LLM directory, exporting it when possible; None to skip ONNX.

    onnx=None: register it when it exists or can be exported; True: required; False: skip.
    """
    if onnx is False:
        return None
    if model_name != "hllm":
        if onnx:
            raise ConfigError(f"{run_dir}: a {model_name} run has no Item LLM to export to ONNX")
        return None
    if onnx_dir is not None:
        directory = Path(onnx_dir)
    elif (run_dir / "onnx" / ONNX_FILE).is_file():
        directory = run_dir / "onnx"
    else:
        try:
            from hllm.onnx_export import export_item_llm
        except ImportError as exc:
            if onnx:
                raise ConfigError(f"{run_dir}: no onnx/{ONNX_FILE} and hllm.onnx_export cannot be "
                                  f"imported ({exc}); export first or pass --no-onnx") from exc
            log.warning("%s: no onnx/%s and no exporter; registering the recommender only",
                        run_dir, ONNX_FILE)
            return None
        directory = Path(export_item_llm(run_dir))
    if not (directory / ONNX_FILE).is_file():
        raise ConfigError(f"{directory}: no {ONNX_FILE}; pass the directory written by the ONNX export")
    return directory


def _validation_path(run_dir: Path, validation: str | Path | None) -> Path | None:
    if validation is not None:
        path = Path(validation)
        if path.is_dir():
            path = path / "validation.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no such validation report")
        return path
    default = run_dir / "validation.json"
    return default if default.is_file() else None


def rebuild_model_dir(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], out: Path,
                      exact_max_items: int = EXACT_MAX_ITEMS, user_tower: str = "onnx"):
    """Rebuild the run's model on CPU, check the split is the evaluated one, write artifacts
    (user_tower: "onnx" ships the user tower as an ONNX graph too, "eager" does not)."""
    import torch

    from hllm.distributed import Dist
    from hllm.item_cache import load_or_compute_item_cache
    from hllm.models.hllm import HLLM
    from hllm.pyfunc_model import write_artifacts
    from hllm.train import build_model, load_split, load_weights

    saved = dict(config)
    run = saved.pop("run")
    cfg = config_from_dict(saved)
    split = load_split(run["dataset"], cfg)
    if split.fingerprint() != metrics["split_sha256"]:
        raise DataError(f"{run['dataset']}: the split differs from the one {run_dir} was evaluated "
                        f"on (split_sha256 {split.fingerprint()[:12]} != "
                        f"{metrics['split_sha256'][:12]}); the data changed since training")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, run["model"], split)
    if isinstance(model, HLLM) and model.item_llm.frozen:
        load_or_compute_item_cache(model, cfg, torch.device("cpu"), Dist(), progress=False)
    load_weights(model, run_dir / "best" / "model.safetensors")
    return write_artifacts(run_dir, out, model, cfg, run["model"], split.item_raw_ids,
                           exact_max_items, user_tower)


def prepare(run_dir: Path, workdir: Path, *, onnx: bool | None, onnx_dir: str | Path | None,
            pipeline_run_id: str | None, validation: str | Path | None,
            feature_repo: str | Path | None, exact_max_items: int = EXACT_MAX_ITEMS,
            user_tower: str = "onnx") -> Prepared:
    """Everything that can fail on bad input, done before the registry is touched."""
    from hllm.pyfunc_model import USER_TOWERS

    if user_tower not in USER_TOWERS:  # before a slow Item LLM export, not after
        raise ConfigError(f"user_tower must be one of {', '.join(USER_TOWERS)}, got {user_tower!r}")
    if exact_max_items < 0:
        raise ConfigError(f"exact_max_items is {exact_max_items}; pass a number of items >= 0 "
                          "(0: always ship the index)")
    config, metrics = check_run_dir(run_dir)
    model_name, dataset = config["run"].get("model", "hllm"), config["run"].get("dataset", "")
    validation_file = _validation_path(run_dir, validation)
    validation_tags = lineage.validation_tags(validation_file) if validation_file else None
    features = lineage.feature_view_versions(Path(feature_repo)) if feature_repo else None
    onnx_path = resolve_onnx(run_dir, model_name, onnx, onnx_dir)
    artifacts = rebuild_model_dir(run_dir, config, metrics, workdir / "recommender",
                                  exact_max_items, user_tower)
    prepared = Prepared(run_dir, config, metrics, model_name, dataset, artifacts, onnx_path)
    prepared.tags = lineage.lineage_tags(
        data_hash=lineage.data_sha256(dataset), split_hash=metrics["split_sha256"],
        code=tracking.code_version(), preset=str(config.get("preset", metrics.get("preset", ""))),
        model=model_name, mlflow_run_id="", validation=validation_tags, features=features,
        pipeline_run=lineage.pipeline_run_id(pipeline_run_id),
        extra={"run_dir": run_dir.resolve(), "test_ndcg_at_10": metrics["ndcg@10"],
               "test_recall_at_10": metrics["recall@10"]})
    return prepared


def training_run(client, run_dir: Path, uri: str, experiment: str | None) -> str:
    """The MLflow run that logged this run dir, or a new one logged now."""
    recorded = tracking.recorded_run(run_dir) or {}
    if recorded.get("run_id") and recorded.get("tracking_uri") == uri:
        try:
            return client.get_run(recorded["run_id"]).info.run_id
        except Exception:  # noqa: BLE001 - not on this server (e.g. a fresh store)
            log.warning("%s: run %s not found on %s; logging the run again", run_dir,
                        recorded["run_id"], uri)
    return tracking.log_run(run_dir, uri, experiment)


def _log_recommender(prep: Prepared, workdir: Path):
    import mlflow

    from hllm.pyfunc_model import USER_TOWER_FILE, HLLMRecommender, pip_requirements, signature

    indexed = INDEX_FILE in prep.artifacts
    onnx_tower = USER_TOWER_FILE in prep.artifacts
    with warnings.catch_warnings():  # the signature is explicit; an example adds a model load
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        return mlflow.pyfunc.log_model(
            name="recommender", python_model=HLLMRecommender(), artifacts=prep.artifacts,
            signature=signature(), code_paths=[str(code_dir(workdir))],
            pip_requirements=pip_requirements(catalog_index=indexed, user_tower_onnx=onnx_tower),
            metadata={"hllm_run_dir": str(prep.run_dir.resolve()),
                      "hllm_scoring": "hnsw-index" if indexed else "exact",
                      "hllm_user_tower": "onnx" if onnx_tower else "eager"})


def _log_onnx(onnx_dir: Path):
    import mlflow.onnx
    import onnx

    from hllm.pyfunc_model import onnx_runtime_dist

    model_path = onnx_dir / ONNX_FILE
    proto = onnx.load(str(model_path), load_external_data=False)
    external = {entry.value for t in proto.graph.initializer  # weights kept beside the graph
                for entry in t.external_data if entry.key == "location"}
    onnx.load_external_data_for_model(proto, str(onnx_dir))
    extras = [str(p) for p in sorted(onnx_dir.iterdir())
              if p.name != ONNX_FILE and p.name not in external and not p.name.startswith(".")]
    meta: dict[str, Any] = {}
    if (onnx_dir / "export.json").is_file():
        meta["export"] = json.loads((onnx_dir / "export.json").read_text())
    runtime = onnx_runtime_dist()
    return mlflow.onnx.log_model(
        proto, name="item_llm_onnx", extra_files=extras or None, metadata=meta or None,
        pip_requirements=[f"onnx=={version('onnx')}", f"{runtime}=={version(runtime)}"])


def plan(run_dir: Path, workdir: Path, *, name: str = "hllm", onnx_name: str = "hllm-item-llm",
         onnx: bool | None = None, onnx_dir: str | Path | None = None,
         pipeline_run_id: str | None = None, validation: str | Path | None = None,
         feature_repo: str | Path | None = None, exact_max_items: int = EXACT_MAX_ITEMS,
         user_tower: str = "onnx") -> RegistrationPlan:
    """The ranking task's registration: every check now, the MLflow writes in `log`.

    onnx: None registers the Item LLM when it exists or can be exported, True requires
    it, False skips it. user_tower: "onnx" ships the user tower as an ONNX graph the
    server runs (about 10 s to export, once per weights); "eager" serves it through
    PyTorch.
    """
    prep = prepare(run_dir, workdir, onnx=onnx, onnx_dir=onnx_dir,
                   pipeline_run_id=pipeline_run_id, validation=validation,
                   feature_repo=feature_repo, exact_max_items=exact_max_items,
                   user_tower=user_tower)

    def log_models(client, uri: str, experiment: str | None) -> tuple[str, list[ModelToRegister]]:
        import mlflow

        run_id = training_run(client, run_dir, uri, experiment)
        with mlflow.start_run(run_id=run_id):
            models = [ModelToRegister(
                name, _log_recommender(prep, workdir),
                f"HLLM recommender (pyfunc) from {run_dir.name}: "
                f"test ndcg@10={prep.metrics['ndcg@10']:.4f}")]
            if prep.onnx_dir:
                models.append(ModelToRegister(
                    onnx_name, _log_onnx(prep.onnx_dir),
                    f"Item LLM (ONNX) from {run_dir.name}: "
                    f"test ndcg@10={prep.metrics['ndcg@10']:.4f}"))
        return run_id, models

    return RegistrationPlan(tags=prep.tags, log=log_models)
