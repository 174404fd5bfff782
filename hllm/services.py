"""Embedded services for a local pipeline run: an S3 endpoint (moto) and an MLflow server.

Both listen on 127.0.0.1 only and live in a work directory. The MLflow server keeps
its store in SQLite and its artifacts in s3://BUCKET/mlflow on the moto endpoint;
clients only speak HTTP to MLflow (it proxies artifacts). The AWS keys below are
moto's placeholders for this embedded endpoint, never real credentials: they are
set for the child processes only, and `Services.env` lists what a client needs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hllm.errors import HLLMError

HOST = "127.0.0.1"
BUCKET = "mlflow"
# moto accepts any key; these name the embedded endpoint, they are not secrets.
EMBEDDED_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "embedded", "AWS_SECRET_ACCESS_KEY": "embedded",
                           "AWS_REGION": "us-east-1"}


@dataclass
class Services:
    s3_url: str
    tracking_uri: str
    env: dict[str, str] = field(default_factory=dict)  # what a client of these services needs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll `url` until it answers; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HLLMError(f"server exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise HLLMError(f"{url} did not answer within {timeout:.0f} s")


def _venv_bin(name: str) -> str:
    """An executable installed beside this interpreter (moto_server, mlflow)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise HLLMError(f"{path}: not installed (pip install 'moto[server]' mlflow)")
    return str(path)


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a server and the workers it forked (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # already gone (killed): only reap it
        proc.wait(timeout=timeout)
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def _server(cmd: list[str], health: str, log_path: Path, env: dict[str, str],
            cwd: Path, timeout: float) -> Iterator[subprocess.Popen]:
    with open(log_path, "a") as log:  # appended: a restart on the same store keeps the first log
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            wait_for(health, proc, timeout)
            yield proc
        finally:
            _stop(proc)


@contextmanager
def s3_server(workdir: Path, auth: bool = False) -> Iterator[str]:
    """moto's S3-compatible server; yields its endpoint URL.

    auth=True makes moto check credentials from the first request (to exercise
    access-denied paths); the embedded default accepts any key.
    """
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [_venv_bin("moto_server"), "-H", HOST, "-p", str(port)]
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else {})}
    log = workdir / ("moto-auth.log" if auth else "moto.log")
    with _server(cmd, url + "/moto-api/", log, env, workdir, 60):
        yield url


def _ensure_bucket(s3_url: str, bucket: str) -> None:
    import boto3

    creds = EMBEDDED_S3_CREDENTIALS
    s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                      region_name=creds["AWS_REGION"])
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)


@contextmanager
def mlflow_server(workdir: Path, s3_url: str, bucket: str = BUCKET) -> Iterator[str]:
    """`mlflow server`: SQLite store, artifacts proxied to s3://BUCKET/mlflow; yields its URL."""
    with mlflow_server_process(workdir, s3_url, bucket) as (url, _):
        yield url


@contextmanager
def mlflow_server_process(workdir: Path, s3_url: str,
                          bucket: str = BUCKET) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow_server`, yielding its process too (it leads its own process group): what a
    test needs to kill the server for real and start another on the same store."""
    _ensure_bucket(s3_url, bucket)
    port = free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, **EMBEDDED_S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_url,
           "AWS_ENDPOINT_URL": s3_url}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [_venv_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", f"s3://{bucket}/mlflow"]
    with _server(cmd, url + "/health", workdir / "mlflow-server.log", env, workdir, 120) as proc:
        yield url, proc


@contextmanager
def embedded_services(workdir: str | Path, bucket: str = BUCKET) -> Iterator[Services]:
    """Start moto S3 and MLflow under `workdir`; stop both on exit (in reverse order)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        s3_url = stack.enter_context(s3_server(workdir))
        tracking_uri = stack.enter_context(mlflow_server(workdir, s3_url, bucket))
        env = {"MLFLOW_TRACKING_URI": tracking_uri, "AWS_ENDPOINT_URL": s3_url,
               **EMBEDDED_S3_CREDENTIALS}
        yield Services(s3_url=s3_url, tracking_uri=tracking_uri, env=env)
