"""What the serving benches share: a private registry with both arms, and `hllm serve` on it.

Everything runs on 127.0.0.1 under one temporary directory: moto S3 and an MLflow server
(hllm.services), the two finished runs registered as versions 1 (champion: control) and 2
(challenger: treatment) of one model, then `hllm serve` on a free port. Nothing here
reaches beyond this machine; the benches stop every process they start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hllm.services import embedded_services, free_port  # noqa: E402

MODEL = "bench-serving"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and the two finished runs (by default those `make run` leaves) both benches serve."""
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--control", type=Path, default=ROOT / "runs/latest/train_sasrec")
    parser.add_argument("--treatment", type=Path, default=ROOT / "runs/latest/train_hllm")


def check_runs(parser: argparse.ArgumentParser, args: argparse.Namespace, needs: str) -> None:
    """Refuse, before any server starts, a run that lacks `needs` (a file training writes)."""
    for run in (args.control, args.treatment):
        if not (run / needs).is_file():
            parser.error(f"{run}: not a finished run (run `make run` first, or pass --control "
                         "and --treatment)")


@dataclass
class Served:
    url: str
    model: str
    env: dict[str, str]
    ab_config: Path
    exposure_log: Path
    proc: subprocess.Popen
    output: Path

    def hllm(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "hllm.cli", *args], cwd=ROOT,
                                env=self.env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"hllm {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def set_alias(self, alias: str, version: str) -> None:
        import mlflow

        mlflow.MlflowClient(self.env["MLFLOW_TRACKING_URI"]).set_registered_model_alias(
            self.model, alias, version)

    def post(self, path: str, payload: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, method="POST",
                                         data=json.dumps(payload or {}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def register(env: dict[str, str], runs: list[Path], model: str = MODEL) -> None:
    """Each run becomes the next version of `model`; then champion -> 1, challenger -> 2."""
    import mlflow

    for run in runs:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hllm.cli", "register", "--run", str(run),
                        "--name", model, "--no-onnx"], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=1800)
        print(f"registered {run} ({time.perf_counter() - started:.0f} s)", flush=True)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias(model, "champion", "1")
    client.set_registered_model_alias(model, "challenger", "2")


@contextmanager
def served_experiment(workdir: Path, runs: list[Path], history: tuple[str, str],
                      ab_config: Path = ROOT / "configs" / "ab" / "hllm-rollout.yaml",
                      workers: int = 2, serve_args: list[str] = ()) -> Iterator[Served]:
    """Registry + `hllm serve` on 127.0.0.1; `history` is ("--feature-repo"|"--data", path);
    `serve_args`: more `hllm serve` options."""
    with ExitStack() as stack:
        services = stack.enter_context(embedded_services(workdir / "services"))
        env = {**os.environ, **services.env, "HLLM_CACHE": os.environ.get(
            "HLLM_CACHE", str(Path.home() / ".cache" / "hllm"))}
        for key in list(os.environ):
            if key.startswith("MLFLOW_") and key not in services.env:
                env.pop(key, None)
        for key, value in services.env.items():
            os.environ[key] = value  # this process talks to the same registry
        register(env, runs)
        raw = yaml.safe_load(ab_config.read_text())
        raw["model"] = MODEL
        ab = workdir / "ab.yaml"
        ab.write_text(yaml.safe_dump(raw))
        port = free_port()
        log_dir = workdir / "exposures"
        output = workdir / "server.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "hllm.cli", "serve", "--ab-config", str(ab), *history,
             "--exposure-log", str(log_dir), "--port", str(port), "--poll-seconds", "0",
             "--workers", str(workers), *serve_args], cwd=ROOT, env=env, stdout=open(output, "w"),
            stderr=subprocess.STDOUT)
        served = Served(f"http://127.0.0.1:{port}", MODEL, env, ab, log_dir, proc, output)
        try:
            wait_ready(served)
            yield served
        finally:
            served.stop()


def wait_ready(served: Served, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise SystemExit(f"hllm serve exited:\n{served.output.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(served.url + "/v2/health/ready", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SystemExit(f"hllm serve not ready in {timeout:.0f} s:\n{served.output.read_text()[-3000:]}")
