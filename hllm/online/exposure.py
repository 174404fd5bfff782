"""The exposure and feedback log: what each user was shown, by which model, and what they did.

Layout (local directory or s3:// prefix, append-only):

    ROOT/date=2026-12-02/part-20261202T101500-<host>-4711-000003.jsonl

One JSON object per line: `{"kind": "exposure", "request_id", "time", "user", "arm",
"served", "in_ramp", "ramp", "model", "version", "latency_ms", "items", "scores"}` for every
answered recommendation, `{"kind": "error", ..., "status", "error"}` for a request an arm's
model failed, and `{"kind": "feedback", "request_id", "time", "user", "clicked"}` for every click
report. A part is written whole (a local temp file renamed into place, or one S3 PUT),
so a reader never sees half a line, and no part is ever rewritten.

Why a writer thread: the request path only enqueues (microseconds); the flush (a file or
an S3 object per batch) happens beside it. Why bounded: if the sink stalls (S3 down), the
queue fills and `append` refuses after `put_timeout` instead of growing memory without
end; the server then answers 503, so no recommendation is ever answered unlogged. On
`close` (the server's graceful shutdown after SIGTERM) everything queued is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from hllm import storage
from hllm.errors import DataError, HLLMError

log = logging.getLogger(__name__)

PART_SUFFIX = ".jsonl"
_STOP = object()


class LogBackpressure(HLLMError):
    """The log's queue stayed full for `put_timeout`: the sink is not keeping up."""


def part_prefix() -> str:
    """Start time, host and pid: unique per writer, also across pods (each pod's server is
    pid 1, and two replicas can start in the same second: only the hostname tells them apart)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{host}-{os.getpid()}"


class ExposureLog:
    """Buffered, bounded, append-only JSONL partitions under `root` (path or s3://)."""

    def __init__(self, root: str | os.PathLike, flush_records: int = 1000,
                 flush_seconds: float = 1.0, max_pending: int = 100_000,
                 put_timeout: float = 1.0) -> None:
        self.root = str(root)
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.put_timeout = put_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._prefix = part_prefix()
        self._seq = 0
        self._closed = False
        self.written = 0  # records in parts that are complete on the sink
        self.failures = 0  # flushes that failed and were retried
        if not storage.is_s3(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="exposure-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ request path
    def append(self, record: dict[str, Any]) -> None:
        """Queue one record; raises LogBackpressure when the queue stays full."""
        if self._closed:
            raise LogBackpressure(f"exposure log {self.root} is closed")
        try:
            self._queue.put(record, timeout=self.put_timeout)
        except queue.Full:
            raise LogBackpressure(f"exposure log {self.root}: {self._queue.maxsize} records "
                                  f"waiting for {self.put_timeout:g} s; the sink is not keeping up"
                                  ) from None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the writer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:  # a full queue behind a dead sink must not hang the shutdown
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("exposure log %s: %d records still unwritten after %.0f s",
                      self.root, self.pending, timeout)

    # ------------------------------------------------------------ writer thread
    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            stop = item is _STOP
            if item is not None and not stop:
                batch.append(item)
            if batch and (stop or len(batch) >= self.flush_records
                          or time.monotonic() >= deadline):
                self._flush(batch)
                batch = []
            if stop:
                return
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds

    def _flush(self, batch: list[dict[str, Any]]) -> None:
        """Write `batch` as one new part; retry until it lands (records are never dropped)."""
        body = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in batch)
        delay = 0.5
        while True:
            try:
                self._write_part(body.encode())
                self.written += len(batch)
                return
            except Exception as exc:  # noqa: BLE001 - any sink failure is retried, and said
                self.failures += 1
                log.error("exposure log %s: writing %d records failed (%s); retrying in %.1f s",
                          self.root, len(batch), str(exc).splitlines()[0][:200], delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write_part(self, data: bytes) -> None:
        self._seq += 1
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        name = f"date={today}/part-{self._prefix}-{self._seq:06d}{PART_SUFFIX}"
        if storage.is_s3(self.root):
            bucket, key = storage.split_s3(self.root.rstrip("/") + "/" + name)
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data)  # one PUT: whole
            return
        path = Path(self.root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)


def part_names(root: str | os.PathLike) -> list[str]:
    """Every complete part under `root`, in write order (partition, then name)."""
    root = str(root)
    if storage.is_s3(root):
        bucket, prefix = storage.split_s3(root.rstrip("/") + "/")
        return sorted(f"s3://{bucket}/{o['Key']}" for o in storage.list_objects(f"s3://{bucket}/{prefix}")
                      if o["Key"].endswith(PART_SUFFIX))
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{root}: no exposure log here (no such directory)")
    return sorted(str(p) for p in path.glob(f"date=*/part-*{PART_SUFFIX}"))


def read_log(root: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record under `root`; a line that is not JSON is named with its part and line."""
    for name in part_names(root):
        text = storage.local_path(name).read_text() if storage.is_s3(name) else Path(name).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}: line {number} is not JSON ({exc.msg})") from exc
