"""Start real servers on 127.0.0.1 for tests, wait until they answer, stop them after."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """moto's S3-compatible server (real HTTP, reached through boto3)."""
    port = free_port()
    log = open(log_dir / "moto.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/moto-api/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@contextmanager
def s3_server_with_auth(log_dir: Path) -> Iterator[str]:
    """A second moto S3 server that checks credentials (IAM auth on from the first request)."""
    import os

    port = free_port()
    log = open(log_dir / "moto-auth.log", "w")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/moto-api/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1"}


@contextmanager
def mlflow_server(work_dir: Path, s3_endpoint: str, bucket: str = "mlflow") -> Iterator[str]:
    """`mlflow server`: SQLite backend store, artifacts proxied to s3://BUCKET/mlflow on moto.

    Clients talk HTTP only (mlflow-artifacts:/ URIs); the server alone holds the S3
    endpoint and credentials, passed to its process through the environment.
    """
    import os

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    port = free_port()
    log = open(work_dir / "mlflow-server.log", "w")
    env = {**os.environ, **S3_TEST_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "AWS_ENDPOINT_URL": s3_endpoint}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{work_dir / 'mlflow.db'}",
           "--artifacts-destination", f"s3://{bucket}/mlflow"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work_dir,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/health", proc, timeout=120)
        yield url
    finally:
        import os as _os
        import signal

        try:  # the server forks workers: stop the whole process group it leads
            _os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
