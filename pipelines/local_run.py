"""`make run`: the whole training pipeline on this machine with kfp.local.

    python -m pipelines.local_run --data ../shared/data/ml-100k --preset cpu-default
    hllm pipeline run --local --pipeline llm4msr --preset cpu-default   # the LLM4MSR pipeline

Starts the embedded services (moto S3 + MLflow, hllm.services) unless a tracking URI
is given, runs the pipeline with kfp.local's SubprocessRunner in the current
environment (hllm installed, no per-task venv), then writes runs/<run-id>/summary.json
and report.html, links each step's artifact in as runs/<run-id>/<step>, and points
runs/latest at the run. kfp.local's task cache lives in runs/.kfp-cache and is shared
by all runs, so a re-run on unchanged data and code reuses validate, features, train,
evaluate and export (their steps show `cached: true` in summary.json). The terminal
shows a line as each step starts and ends (pipelines.step_log); each step's full log is
in runs/<run-id>/logs/<step>.log (`-v`: on the terminal as well).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from hllm.errors import ConfigError
from pipelines import containers
from pipelines.catalog import DEFAULT, PIPELINES, choices_help, get_pipeline
from pipelines.step_log import routed

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ".kfp-cache"
CACHE_DIRS = {"subprocess": CACHE_DIR, "docker": ".kfp-cache-docker"}
RUNNERS = tuple(CACHE_DIRS)
CONTAINER_CACHE = ".container-cache"  # HLLM_CACHE of the steps run in containers


@dataclass
class LocalRun:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        return self.summary["status"]


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set env vars for the duration (kfp.local's subprocess tasks inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def data_version(data: str, config_file: str = "") -> str:
    """Content hash of the data and of the config file, plus the code version.

    kfp.local keys its cache on parameter values: the config file's path alone would let
    an edited YAML reuse the models trained under the old one.
    """
    from hllm.lineage import data_sha256
    from hllm.tracking import code_version

    key = f"{data_sha256(data)}+{code_version()}"
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{config_file}: no such config file")
        key += f"+config-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return key


def _find_summary(pipeline_root: Path) -> Path | None:
    """The `summary` artifact of this run's last step (report-run or data-rejected)."""
    found = sorted(pipeline_root.glob("*/*/summary"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _assemble(run_dir: Path, pipeline_root: Path, summary: dict[str, Any]) -> dict[str, dict]:
    """Link every step's artifact into run_dir/<step>; mark steps served from the cache."""
    steps = {}
    for name, step in summary.get("steps", {}).items():
        path = Path(step["path"])
        link = run_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(path, run_dir) if path.is_absolute() else path)
        cached = pipeline_root.resolve() not in path.resolve().parents
        steps[name] = {**step, "cached": cached}
    return steps


def run_local(data: str | Path, *, preset: str = "cpu-default", runs_dir: str | Path = "runs",
              run_id: str | None = None, tracking_uri: str | None = None,
              ab_config: str | Path | None = None, registered_name: str | None = None,
              onnx_name: str = "hllm-item-llm", config_file: str = "",
              max_history: int = 50, min_user_interactions: int = 3,
              caching: bool = True, platform=None, pipeline: str = DEFAULT,
              verbose: bool = False, runner: str = "subprocess",
              image: str | None = None) -> LocalRun:
    """Run a training pipeline (hllm or llm4msr) locally end to end; returns the run and its summary.

    The terminal gets a line per step (pipelines.step_log); each step's full log goes to
    RUN/logs/<step>.log. verbose: the full logs on the terminal as well.
    runner: subprocess (steps in this environment) | docker (steps in `image`, see
    pipelines.containers; run `make image` first).
    """
    from kfp import local

    from hllm.errors import HLLMError
    from hllm.services import embedded_services
    from pipelines.platform import Platform

    import time

    spec = get_pipeline(pipeline)
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r} (known: {', '.join(RUNNERS)})")
    ab_config = ab_config or spec.ab_config
    registered_name = registered_name or spec.registered_name

    t0 = time.perf_counter()
    if tracking_uri:
        from hllm.tracking import resolve_uri

        resolve_uri(tracking_uri)  # refuses a URI holding a password before anything starts
    data = data if str(data).startswith("s3://") else str(Path(data).resolve())
    # Steps in containers see the host's paths only where they are mounted, at the same place.
    config_file = str(Path(config_file).resolve()) if config_file else ""
    runs = Path(runs_dir).resolve()
    run_id, run_dir = new_run_dir(runs, run_id, Path(data).name)
    pipeline_root = run_dir / "kfp"
    pipeline_root.mkdir()
    # Retries stay on (an MLflow hiccup is as transient here), with a short backoff.
    platform = platform or replace(Platform.from_env(), retries=1, retry_backoff="2s")
    if runner == "docker":
        platform = replace(platform, image=image or containers.DEFAULT_IMAGE)
    services = (nullcontext(None) if tracking_uri
                else embedded_services(runs / ".services" / run_id))
    engine = containers.container_engine() if runner == "docker" else nullcontext(None)
    with services as svc, engine as docker_host:
        uri = tracking_uri or svc.tracking_uri
        # Unbuffered: a step's log lines reach RUN/logs and the progress lines as they are
        # written, not in one block when the step's process exits.
        env = {"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", **(svc.env if svc else {})}
        if docker_host:
            containers.check_image(platform.image, docker_host)
            cache = runs / CONTAINER_CACHE
            user = containers.owned_by_image_user(pipeline_root, cache)
            mounted = [Path(ab_config).resolve(), *([Path(config_file)] if config_file else []),
                       *([] if data.startswith("s3://") else [Path(data)])]
            task_runner = containers.docker_runner(
                env=env, read_only=mounted, cache_dir=cache, user=user)
        else:
            task_runner = local.SubprocessRunner(use_venv=False)
        in_containers = (containers.steps_in_containers(docker_host) if docker_host
                         else nullcontext())
        with _environ(env), in_containers, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Resources, GPUs and secrets are cluster settings; kfp.local says so per task.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            # One task cache per runner: a step cached by one is not evidence for the other.
            local.init(runner=task_runner,
                       pipeline_root=str(pipeline_root), raise_on_error=False,
                       enable_caching=caching, cache_root=str(runs / CACHE_DIRS[runner]))
            args = dict(data=data, data_version=data_version(data, config_file), preset=preset,
                        config_file=config_file, ab_config=str(Path(ab_config).resolve()),
                        registered_name=registered_name, tracking_uri=uri,
                        max_history=max_history, pipeline_run_id=run_id,
                        report_uri=str(run_dir / "report.html"))
            own = {"onnx_name": onnx_name, "min_user_interactions": min_user_interactions}
            args.update({key: own[key] for key in spec.local_args})
            with routed(run_dir / "logs", verbose=verbose) as step_log:
                spec.build(platform)(**args)
    found = _find_summary(pipeline_root)
    if found is None:
        failed = ", ".join(step_log.failed) or "a step"
        raise HLLMError(f"pipeline run {run_id} failed before its report step ({failed} "
                        f"failed); step logs in {run_dir / 'logs'}, artifacts under {pipeline_root}")
    summary = json.loads(found.read_text())
    steps = _assemble(run_dir, pipeline_root, summary)
    if summary["status"] == "rejected":
        shutil.copyfile(run_dir / "validate" / "validation.html", run_dir / "report.html")
        summary["steps"] = steps
    else:
        summary = spec.write_report(run_dir, run_dir, steps=steps, pipeline_run_id=run_id)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)  # services and kfp.local included
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    point_latest(runs, run_id)
    return LocalRun(run_id, run_dir, summary)


def new_run_dir(runs: Path, run_id: str | None, data_name: str) -> tuple[str, Path]:
    """Create this run's own directory: two runs never share one, even within a second.

    A generated id (`<dataset>-<timestamp>`) gains -2, -3, ... when another run made it
    first; an id given by the caller must be new.
    """
    runs.mkdir(parents=True, exist_ok=True)
    if run_id:
        try:
            (runs / run_id).mkdir()
        except FileExistsError:
            raise ConfigError(f"{runs / run_id}: run id {run_id!r} is taken; choose another "
                              "--run-id or leave it out") from None
        return run_id, runs / run_id
    base = f"{data_name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    for n in itertools.count(1):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            (runs / candidate).mkdir()
        except FileExistsError:
            continue
        return candidate, runs / candidate
    raise AssertionError("unreachable")


def point_latest(runs: Path, run_id: str) -> None:
    """runs/latest -> run_id, replaced in one rename: readers never see it missing."""
    staged = runs / f".latest-{os.getpid()}-{threading.get_ident()}"
    staged.unlink(missing_ok=True)
    staged.symlink_to(run_id)
    os.replace(staged, runs / "latest")


def describe(run: LocalRun) -> str:
    """A few lines for the terminal."""
    s = run.summary
    lines = [f"run {run.run_id}: {s['status']}  ({run.run_dir / 'report.html'})"]
    if s["status"] == "rejected":
        lines += [f"  validation failed: {f}" for f in s["validation"]["failed"]]
        return "\n".join(lines)
    spec = get_pipeline(s.get("pipeline", DEFAULT))
    lines += [spec.model_line(name, model) for name, model in s["models"].items()]
    reg, gate = s["registry"], s["gate"]
    onnx = f"; ONNX max|diff| {s['onnx']['max_abs_diff']}" if s.get("onnx") else ""
    lines.append(f"  registered {reg['model_name']} version {reg['version']}{onnx}")
    lines.append(f"  gate: {gate['decision']}" + (f" ({'; '.join(gate['reasons'])})"
                                                  if gate["reasons"] else ""))
    lines.append("  steps: " + ", ".join(f"{n} {st.get('seconds') or 0:.1f}s"
                                         + (" (cached)" if st.get("cached") else "")
                                         for n, st in s["steps"].items()))
    return "\n".join(lines)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "ml-100k"),
                   help="dataset directory (default: ../shared/data/ml-100k)")
    p.add_argument("--pipeline", default=DEFAULT, choices=tuple(PIPELINES), help=choices_help())
    p.add_argument("--preset", default="cpu-default", help="a preset of the chosen pipeline's models")
    p.add_argument("--config", default="", help="YAML overriding the preset (train steps)")
    p.add_argument("--runs", default="runs", help="where runs/<run-id> and runs/latest go")
    p.add_argument("--run-id", help="default: <dataset>-<timestamp>")
    p.add_argument("--tracking-uri", help="an existing MLflow server (default: start embedded ones)")
    p.add_argument("--ab-config", default=None,
                   help="default: configs/ab/hllm-rollout.yaml or configs/ab/llm4msr-rollout.yaml")
    p.add_argument("--registered-name", default=None, help="default: the pipeline's name")
    p.add_argument("--no-cache", action="store_true", help="run every step again")
    p.add_argument("--runner", default="subprocess", choices=RUNNERS,
                   help="subprocess: steps in this environment; docker: steps in the project "
                        "image (make image), on Docker or podman")
    p.add_argument("--image", default=None,
                   help=f"the image every step runs in with --runner docker "
                        f"(default {containers.DEFAULT_IMAGE})")
    p.add_argument("-v", "--verbose", dest="full_logs", action="store_true",
                   help="every step's full log on the terminal too (always in RUN/logs/)")


@contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM (`kill`, a pod's shutdown) ends the run the way Ctrl-C does.

    Python's default is to die at once, skipping every `finally`, so the MLflow and S3
    servers this run started kept running (and holding their ports) after a `kill`. As
    a SystemExit(143) the signal unwinds the run instead: the servers are stopped on the
    way out. The step that was running loses its output pipe and ends with it.
    """
    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_from_args(args: argparse.Namespace) -> int:
    with stopping_on_sigterm():
        return _run_from_args(args)


def _run_from_args(args: argparse.Namespace) -> int:
    run = run_local(args.data, preset=args.preset, config_file=args.config, runs_dir=args.runs,
                    run_id=args.run_id, tracking_uri=args.tracking_uri,
                    ab_config=args.ab_config, registered_name=args.registered_name,
                    caching=not args.no_cache, pipeline=args.pipeline,
                    runner=args.runner, image=args.image,
                    verbose=args.full_logs or getattr(args, "verbose", False))
    print(describe(run))
    return 0 if run.status == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
