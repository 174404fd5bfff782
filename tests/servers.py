"""Real servers on 127.0.0.1 for tests: the same ones `make run` embeds (hllm.services).

Fixtures in conftest.py start them once per session and stop them after.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hllm.services import EMBEDDED_S3_CREDENTIALS, free_port, mlflow_server, s3_server, wait_for

__all__ = ["S3_TEST_CREDENTIALS", "free_port", "mlflow_server", "s3_server",
           "s3_server_with_auth", "wait_for"]

# What test clients put in their environment for the moto endpoint.
S3_TEST_CREDENTIALS = dict(EMBEDDED_S3_CREDENTIALS)


@contextmanager
def s3_server_with_auth(log_dir: Path) -> Iterator[str]:
    """A second moto S3 server that checks credentials (IAM auth on from the first request)."""
    with s3_server(log_dir, auth=True) as url:
        yield url
