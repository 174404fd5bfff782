"""Register a trained run in the MLflow Model Registry as the new `challenger`.

    hllm register --run runs/hllm --pipeline-run-id $KFP_RUN_ID
    hllm msr register --run runs/msr --validation runs/msr/validation

What a run of a task is registered as is the task's business (hllm.tasks): a ranking
run gives the recommender as a pyfunc and its Item LLM as ONNX
(hllm.ranking_registration), a CTR run its scorer (hllm.msr.registry). This module is
the part every task shares. Each version gets the task's lineage tags (hllm.lineage)
and the alias `challenger`; `champion` is never touched: the gate decides that.

All or nothing. The task checks every input first (the model rebuilds from the run,
its split matches metrics.json) before anything is written to MLflow; if a later step
fails, the versions created by this call are deleted, registered models it created are
removed and any alias it moved is put back. What the undo could not take back (the
server died) is named in the error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hllm import tracking
from hllm.errors import ConfigError, HLLMError, first_line
from hllm.tasks import get_task

log = logging.getLogger(__name__)

ALIAS = "challenger"


class RegistryError(HLLMError):
    """Registration failed after validation; what this call created was rolled back."""


@dataclass
class Registration:
    run_id: str
    tags: dict[str, str]
    versions: list[Any] = field(default_factory=list)  # mlflow ModelVersion, in creation order


# ---------------------------------------------------------------- MLflow writes

def run_tracking_uri(run_dir: Path, explicit: str | None) -> str:
    recorded = tracking.recorded_run(run_dir) or {}
    uri = tracking.resolve_uri(explicit) or recorded.get("tracking_uri")
    if not uri:
        raise ConfigError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return uri


def code_dir(workdir: Path) -> Path:
    """A clean copy of the hllm package, shipped with the model so serving needs no install."""
    target = workdir / "code" / "hllm"
    shutil.copytree(Path(__file__).resolve().parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


class Rollback:
    """Undo log of registry writes, replayed in reverse when a later step fails.

    As a context manager: an exception inside undoes every write made so far; an
    HLLMError passes through as it is, anything else becomes a RegistryError that says
    `what` failed and was rolled back.
    """

    def __init__(self, client, what: str = "registering"):
        self.client = client
        self.what = what
        self.steps: list[tuple[str, Any]] = []
        self.left: list[str] = []  # writes the undo could not take back (server gone)

    def __enter__(self) -> "Rollback":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        self.undo()
        if not isinstance(exc, Exception):
            return False
        if self.left:  # never claim a rollback that did not happen: say what is left
            raise RegistryError(
                f"{self.what} failed ({first_line(exc)}) and could not be fully rolled back; "
                f"still in the registry: {'; '.join(self.left)}. Delete them, or register "
                "again once the server answers") from exc
        if isinstance(exc, HLLMError):
            return False
        raise RegistryError(f"{self.what} failed and was rolled back: {exc}") from exc

    def ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description="registered by hllm")
            self.steps.append(("model", name))

    def create_version(self, name: str, info, run_id: str, tags: dict[str, str], description: str):
        version = self.client.create_model_version(
            name, source=info.model_uri, run_id=run_id, tags=tags, description=description,
            model_id=info.model_id)
        self.steps.append(("version", (name, version.version)))
        return version

    def set_alias(self, name: str, version: str) -> None:
        previous = self._alias_now(name)
        self.client.set_registered_model_alias(name, ALIAS, version)
        self.steps.append(("alias", (name, previous, str(version))))

    def _alias_now(self, name: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, ALIAS).version)
        except MlflowException:
            return None

    def undo(self) -> None:
        for kind, what in reversed(self.steps):
            try:
                if kind == "alias":
                    name, previous, mine = what
                    if self._alias_now(name) != mine:
                        # Another register moved it since: theirs stands, not our old value.
                        log.warning("%s@%s moved since this register set it; left as is",
                                    name, ALIAS)
                    elif previous is None:
                        self.client.delete_registered_model_alias(name, ALIAS)
                    else:
                        self.client.set_registered_model_alias(name, ALIAS, previous)
                elif kind == "version":
                    self.client.delete_model_version(*what)
                elif kind == "model":
                    others = self.client.search_model_versions(f"name = '{what}'")
                    if others:  # a concurrent register added versions: keep the model
                        log.warning("%s: kept, it holds %d version(s) of another register",
                                    what, len(others))
                    else:
                        self.client.delete_registered_model(what)
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                log.error("rollback step %s %s failed: %s", kind, what, exc)
                self.left.append(_describe_step(kind, what))


def _describe_step(kind: str, what: Any) -> str:
    if kind == "alias":
        name, previous, mine = what
        return (f"alias {name}@{ALIAS} -> version {mine} (was "
                f"{'unset' if previous is None else 'version ' + previous})")
    if kind == "version":
        return f"model version {what[0]} {what[1]}"
    return f"registered model {what}"


@tracking.keeps_tracking_uri
def register(run_dir: str | Path, name: str | None = None, *, task: str = "ranking",
             tracking_uri: str | None = None, experiment: str | None = None,
             **options: Any) -> Registration:
    """Register the run's models, each as a new version with alias `challenger`.

    name: the registered model (default: the task's); options: the task's own
    (for ranking: onnx_name, onnx, onnx_dir, validation, feature_repo, pipeline_run_id,
    exact_max_items, user_tower; see hllm.ranking_registration.plan).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    kind = get_task(task)
    uri = run_tracking_uri(run_dir, tracking_uri)
    for key, value in tracking.REGISTRY_HTTP_DEFAULTS.items():  # seconds, not minutes, of retries
        os.environ.setdefault(key, value)
    tracking.check_server(uri)
    with tempfile.TemporaryDirectory(prefix="hllm-register-") as tmp:
        plan = kind.plan_registration(run_dir, Path(tmp), name=name or kind.default_model, **options)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        with Rollback(client, f"{run_dir}: registering in MLflow at {uri}") as rollback:
            run_id, models = plan.log(client, uri, experiment)
            tags = {**plan.tags, "mlflow_run_id": run_id}
            versions = []
            for model in models:
                rollback.ensure_model(model.name)
                versions.append(rollback.create_version(model.name, model.info, run_id, tags,
                                                        model.description))
            for version in versions:  # aliases last: a failure above leaves them untouched
                rollback.set_alias(version.name, version.version)
    for version in versions:
        log.info("registered %s version %s as %s", version.name, version.version, ALIAS)
    return Registration(run_id=run_id, tags=tags, versions=versions)
