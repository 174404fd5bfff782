"""Log a finished run directory to MLflow, so every training run is findable and comparable.

    MLFLOW_TRACKING_URI=http://mlflow:5000 hllm train --preset cpu-tiny --data D --out RUN
    hllm train ... --tracking-uri http://mlflow:5000 --experiment hllm-ml100k

What goes in: the resolved config flattened to params (`item_llm.pooling`), per-epoch
metrics from RUN/log.jsonl (step = epoch), the final validation and test metrics,
system info (library versions, device, CPU count, git commit) as tags, and
config.yaml / metrics.json / log.jsonl as artifacts. The MLflow run id goes to
RUN/mlflow.json, so `hllm register` attaches the model to the run that trained it.
MLflow metric names cannot hold "@", so `recall@10` is logged as `recall_at_10`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import urllib.parse
import urllib.request
from functools import wraps
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from hllm.errors import ConfigError, HLLMError

DEFAULT_EXPERIMENT = "hllm"
ARTIFACTS = ("config.yaml", "metrics.json", "test_ranks.npy", "test_segments.npz", "log.jsonl",
             "validation.json")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class TrackingError(HLLMError):
    """The tracking server could not be reached or refused a write."""


def resolve_uri(explicit: str | None = None) -> str | None:
    """--tracking-uri, else MLFLOW_TRACKING_URI; None means tracking is off.

    A URI carrying a password is refused: it would travel into logs, run configs,
    pipeline parameters and MLflow tags. MLflow reads credentials from the environment.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri and "://" in uri:
        parts = urllib.parse.urlsplit(uri)
        if parts.password is not None:
            masked = parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                           + (f":{parts.port}" if parts.port else "")).geturl()
            raise ConfigError(f"tracking URI {masked}: holds a password; put the credentials in "
                              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or a "
                              "Kubernetes secret) and leave them out of the URI")
    return uri


def experiment_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail before hours of training, not after, when an http(s) server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
    except OSError as exc:
        raise TrackingError(f"MLflow tracking server {uri} does not answer ({exc}); start it, "
                            "fix --tracking-uri / MLFLOW_TRACKING_URI, or unset it") from exc


# MLflow's own defaults (7 retries, backoff factor 2, 120 s per request) make a registry
# read against a dead server take minutes. The registry commands ops run during an
# incident (gate, rollback, recommend) answer in seconds instead; the environment wins.
REGISTRY_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                          "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def registry_uri(explicit: str | None = None) -> str:
    """The tracking URI a registry command talks to, checked to answer, retries bounded."""
    uri = resolve_uri(explicit)
    if not uri:
        raise ConfigError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    for key, value in REGISTRY_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_server(uri)
    return uri


def registry_error(exc: Exception, uri: str, what: str) -> TrackingError:
    """A registry failure that is not "not found", with the URI and MLflow's first line."""
    message = getattr(exc, "message", None) or str(exc)
    return TrackingError(f"MLflow registry at {uri}: {what} failed: "
                         f"{message.strip().splitlines()[0][:300] if message.strip() else type(exc).__name__}")


def is_not_found(exc: Exception) -> bool:
    """True for MLflow's "no such model / version / alias" answers, False for outages."""
    code = str(getattr(exc, "error_code", ""))
    message = str(getattr(exc, "message", exc))
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in message


def metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"item_llm": {"pooling": "mean"}} -> {"item_llm.pooling": "mean"} (values as strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return out


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from ("+dirty" with local edits), if any."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    try:
        return version("hllm-platform")
    except PackageNotFoundError:
        return "unknown"


def code_version() -> str:
    """The git commit when running from a checkout, else the installed package version."""
    return git_commit() or f"hllm-platform=={package_version()}"


def system_info() -> dict[str, str]:
    import torch
    import transformers

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device,
            "cpu_count": str(os.cpu_count()), "platform": platform.platform(),
            "hllm_version": package_version()}
    commit = git_commit()
    if commit:
        info["git_commit"] = commit
    return info


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(config.yaml, metrics.json, log.jsonl records) of a finished run, or a clear error."""
    for name in ("config.yaml", "metrics.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir}: no {name}; pass a run directory finished by `hllm train`")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{run_dir / 'metrics.json'}: not valid JSON ({exc})") from exc
    records = []
    log_path = run_dir / "log.jsonl"
    if log_path.is_file():
        records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return config, metrics, records


def run_metrics(metrics: dict[str, Any], records: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """(name, value, step) triples: per-epoch and per-10-step curves, then final numbers."""
    out: list[tuple[str, float, int]] = []
    for rec in records:
        if "train_loss" in rec and "epoch" in rec:  # an end-of-epoch record
            for key, value in rec.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    out.append((metric_name(key), float(value), int(rec["epoch"])))
        elif "step" in rec and "loss" in rec:
            out.append(("step_loss", float(rec["loss"]), int(rec["step"])))
    final_step = int(metrics.get("epochs_run", 0))
    for key, value in metrics.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and ("@" in key or key == "mrr"):
            out.append((f"test_{metric_name(key)}", float(value), final_step))
    for segment, values in (metrics.get("segments") or {}).items():
        for key, value in values.items():
            if isinstance(value, (int, float)):  # an empty segment's metrics are null
                out.append((f"test_{segment}_{metric_name(key)}", float(value), final_step))
    for key, value in (metrics.get("valid") or {}).items():
        if isinstance(value, (int, float)):
            out.append((f"best_valid_{metric_name(key)}", float(value), final_step))
    for key in ("best_epoch", "epochs_run", "num_users", "num_items"):
        if isinstance(metrics.get(key), (int, float)):
            out.append((key, float(metrics[key]), final_step))
    for key, value in (metrics.get("timings") or {}).items():
        out.append((f"time_{metric_name(key)}", float(value), final_step))
    return out


F = TypeVar("F", bound=Callable[..., Any])


def keeps_tracking_uri(fn: F) -> F:
    """Put mlflow's tracking URI back as it was when `fn` returns or raises.

    `mlflow.set_tracking_uri` is process-wide and also writes MLFLOW_TRACKING_URI for child
    processes: a library call that sets it for its own server would leave the caller (a
    notebook, a test, a long-lived service) talking to that server afterwards, or to
    nothing once it is gone.
    """
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import mlflow

        was_set = mlflow.is_tracking_uri_set()
        before = mlflow.get_tracking_uri() if was_set else None
        env = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return fn(*args, **kwargs)
        finally:
            mlflow.set_tracking_uri(before)  # None: unset, as it was
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env

    return wrapper  # type: ignore[return-value]


@keeps_tracking_uri
def log_run(run_dir: str | Path, tracking_uri: str | None = None, experiment: str | None = None,
            run_name: str | None = None) -> str:
    """Log a finished run directory as one MLflow run; write RUN/mlflow.json; return the run id."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    config, metrics, records = read_run(run_dir)
    uri = resolve_uri(tracking_uri)
    if not uri:
        raise ConfigError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(experiment)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        run_info = config.get("run", {})
        tags = {"hllm.model": str(run_info.get("model", metrics.get("model", ""))),
                "hllm.preset": str(config.get("preset", metrics.get("preset", ""))),
                "hllm.dataset": str(run_info.get("dataset", "")),
                "hllm.run_dir": str(run_dir.resolve()),
                "hllm.split_sha256": str(metrics.get("split_sha256", "")),
                **{f"sys.{k}": v for k, v in system_info().items()}}
        run = client.create_run(exp_id, run_name=run_name or run_dir.name, tags=tags)
        run_id = run.info.run_id
        try:
            params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
            stamp = int(run.info.start_time)
            values = [Metric(n, v, stamp, s) for n, v, s in run_metrics(metrics, records)]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
            for i in range(0, len(values), 500):
                client.log_batch(run_id, metrics=values[i:i + 500])
            client.log_batch(run_id, tags=[RunTag("hllm.world_size", str(metrics.get("world_size", 1)))])
            for artifact in ARTIFACTS:
                if (run_dir / artifact).is_file():
                    client.log_artifact(run_id, str(run_dir / artifact))
            client.set_terminated(run_id, "FINISHED")
        except Exception:
            client.set_terminated(run_id, "FAILED")
            raise
    except HLLMError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow and boto raise many kinds
        raise TrackingError(f"{run_dir}: logging to MLflow at {uri} failed: {exc}") from exc
    record = {"tracking_uri": uri, "experiment_id": exp_id, "experiment_name": name, "run_id": run_id}
    tmp = run_dir / "mlflow.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(run_dir / "mlflow.json")
    return run_id


def recorded_run(run_dir: str | Path) -> dict[str, str] | None:
    """RUN/mlflow.json as written by `log_run`, or None when the run was not tracked."""
    path = Path(run_dir) / "mlflow.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); delete it to log the run again") from exc
