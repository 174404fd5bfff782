"""Register an MSR run (backbone or backbone + LLM4MSR) in MLflow as the new `challenger`.

    hllm msr register --run runs/msr --validation runs/msr/validation --name llm4msr

The CTR task's part of `hllm.registry.register` (the shared part creates the version,
sets `challenger` and undoes what it created on failure): every input is checked first
(the run rebuilds, its split matches the data as it is now, the validation report
passed), then one MLflow run gets params, per-scenario metrics, the evaluation artifacts
the gate reads (metrics.json, test_predictions.npz) and the pyfunc scorer.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

from hllm import lineage, tracking
from hllm.errors import ConfigError, DataError
from hllm.registry import Registration, code_dir, register
from hllm.tasks import ModelToRegister, RegistrationPlan

log = logging.getLogger(__name__)

EXPERIMENT = "llm4msr"
EVIDENCE = ("metrics.json", "test_predictions.npz", "config.yaml")


def _check(run_dir: Path, validation: str | Path | None):
    from hllm.msr.data import load_rows
    from hllm.msr.run import load_run, split_fingerprint

    run = load_run(run_dir)  # rebuilds the model: a broken run fails here, before MLflow
    if not (run_dir / "test_predictions.npz").is_file():
        raise ConfigError(f"{run_dir}: no test_predictions.npz; the gate needs it (rerun `hllm msr train`)")
    dataset = run.info.get("dataset", "")
    split = split_fingerprint(load_rows(dataset, run.config.data))
    if split != run.metrics["split_sha256"]:
        raise DataError(f"{dataset}: the split differs from the one {run_dir} was evaluated on "
                        f"(split_sha256 {split[:12]} != {run.metrics['split_sha256'][:12]}); "
                        "the data changed since training")
    vtags = None
    if validation is not None:
        path = Path(validation)
        path = path / "validation.json" if path.is_dir() else path
        vtags = lineage.validation_tags(path)
        if vtags["validation.success"] != "true":
            raise DataError(f"{path}: the data failed validation; nothing trained on it is registered")
    return run, vtags


def _metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for prefix, tree in (("test", metrics), ("valid", metrics.get("valid", {}))):
        for key, value in tree.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) \
                    and (key.startswith("auc") or key.startswith("logloss")):
                out[f"{prefix}_{key}"] = float(value)
    return out


def register_msr(run_dir: str | Path, name: str = "llm4msr", **options) -> Registration:
    """`hllm.registry.register` of a CTR run (options: validation, feature_repo,
    pipeline_run_id, tracking_uri, experiment)."""
    return register(run_dir, name, task="ctr", **options)


def plan(run_dir: Path, workdir: Path, *, name: str = "llm4msr",
         validation: str | Path | None = None, feature_repo: str | Path | None = None,
         pipeline_run_id: str | None = None) -> RegistrationPlan:
    """Every check of the run now; the MLflow run and the scorer in `log`."""
    from hllm.msr.pyfunc_model import MSRScorer, signature, write_artifacts
    from hllm.pyfunc_model import pip_requirements

    run, vtags = _check(run_dir, validation)
    features = lineage.feature_view_versions(Path(feature_repo)) if feature_repo else None
    m = run.metrics
    tags = lineage.lineage_tags(
        data_hash=m["data_sha256"], split_hash=m["split_sha256"], code=tracking.code_version(),
        preset=run.config.preset, model=m["model"], mlflow_run_id="", validation=vtags,
        features=features, pipeline_run=lineage.pipeline_run_id(pipeline_run_id),
        extra={"run_dir": run_dir.resolve(), "test_auc": f"{m['auc']:.6f}",
               "test_logloss": f"{m['logloss']:.6f}", "task": "ctr"})

    def log_models(client, uri: str, experiment: str | None) -> tuple[str, list[ModelToRegister]]:
        import mlflow

        exp_name = experiment or EXPERIMENT
        exp = client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
        artifacts = write_artifacts(run_dir, workdir / "run")
        with mlflow.start_run(experiment_id=exp_id, run_name=run_dir.name,
                              tags={"hllm.model": m["model"], "hllm.task": "ctr",
                                    "hllm.split_sha256": m["split_sha256"],
                                    "hllm.run_dir": str(run_dir.resolve())}) as active:
            params = tracking.flatten({**run.config.to_dict(), "run": run.info})
            mlflow.log_params({k: v[:6000] for k, v in params.items()})
            mlflow.log_metrics(_metrics(m))
            for record in m.get("history", []):
                mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"},
                                   step=int(record["epoch"]))
            for artifact in EVIDENCE:
                mlflow.log_artifact(str(run_dir / artifact))
            if validation is not None:
                vpath = Path(validation)
                for f in ([vpath / "validation.json", vpath / "validation.html"] if vpath.is_dir() else [vpath]):
                    if f.is_file():
                        mlflow.log_artifact(str(f), "validation")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                info = mlflow.pyfunc.log_model(
                    name="scorer", python_model=MSRScorer(), artifacts=artifacts,
                    signature=signature(), code_paths=[str(code_dir(workdir))],
                    pip_requirements=pip_requirements())
        return active.info.run_id, [ModelToRegister(
            name, info, f"{m['model']} from {run_dir.name}: test AUC {m['auc']:.4f}, "
                        f"logloss {m['logloss']:.4f}")]

    return RegistrationPlan(tags=tags, log=log_models)
