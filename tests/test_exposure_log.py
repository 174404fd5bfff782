"""The exposure log on its own: whole parts, order kept, a stalled sink refuses rather than grows."""

from __future__ import annotations

import json
import time

import pytest

from hllm.errors import DataError
from hllm.online.exposure import ExposureLog, LogBackpressure, part_names, read_log
from servers import free_port

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def records(n: int, start: int = 0) -> list[dict]:
    return [{"kind": "exposure", "request_id": f"r{i}", "user": str(i % 7), "items": ["a", "b"]}
            for i in range(start, start + n)]


def test_close_writes_everything_in_whole_parts_in_order(tmp_path):
    log = ExposureLog(tmp_path / "log", flush_records=1000, flush_seconds=60)
    for record in records(2500):
        log.append(record)
    log.close()
    assert [r["request_id"] for r in read_log(tmp_path / "log")] == [f"r{i}" for i in range(2500)]
    parts = part_names(tmp_path / "log")
    assert len(parts) == 3 and all("/date=" in p for p in parts)
    assert not list((tmp_path / "log").rglob("*.tmp"))
    assert log.written == 2500 and log.pending == 0
    with pytest.raises(LogBackpressure, match="closed"):
        log.append(records(1)[0])


def test_records_reach_the_sink_within_the_flush_interval(tmp_path):
    log = ExposureLog(tmp_path / "log", flush_seconds=0.2)
    log.append(records(1)[0])
    deadline = time.monotonic() + 5
    while log.written < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["request_id"] for r in read_log(tmp_path / "log")] == ["r0"]
    log.close()


def test_a_dead_sink_fills_the_queue_and_append_refuses(monkeypatch, caplog):
    """S3 down: the writer retries, the bounded queue fills, append refuses (the server then
    answers 503 instead of serving a recommendation it cannot log)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    log = ExposureLog("s3://exposures/log", flush_records=1, max_pending=5, put_timeout=0.2)
    with pytest.raises(LogBackpressure, match="5 records waiting"):
        for record in records(50):
            log.append(record)
    deadline = time.monotonic() + 30
    while log.failures < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.written == 0 and log.failures >= 1
    log.close(timeout=0.5)
    assert "writing 1 records failed" in caplog.text


def test_s3_round_trip(s3_env):
    import boto3

    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket="exposures")
    log = ExposureLog("s3://exposures/ab/hllm", flush_records=10)
    for record in records(25):
        log.append(record)
    log.close()
    assert len(part_names("s3://exposures/ab/hllm")) == 3
    assert [r["request_id"] for r in read_log("s3://exposures/ab/hllm")] == \
        [f"r{i}" for i in range(25)]


def test_a_bad_line_is_named_with_its_part(tmp_path):
    part = tmp_path / "log" / "date=2026-12-02" / "part-x-000001.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text(json.dumps(records(1)[0]) + "\n{half a reco\n")
    with pytest.raises(DataError, match=r"part-x-000001.jsonl: line 2 is not JSON"):
        list(read_log(tmp_path / "log"))
    with pytest.raises(DataError, match="no exposure log here"):
        list(read_log(tmp_path / "missing"))


def test_two_pods_started_in_the_same_second_never_share_a_part(tmp_path, monkeypatch):
    """In a cluster every replica's server is pid 1; the host name keeps their parts apart."""
    import hllm.online.exposure as exposure

    monkeypatch.setattr(exposure.os, "getpid", lambda: 1)
    logs = []
    for pod in ("hllm-serving-7d9f-abcde", "hllm-serving-7d9f-fghij"):
        monkeypatch.setattr(exposure.socket, "gethostname", lambda pod=pod: pod)
        logs.append(ExposureLog(tmp_path / "log", flush_seconds=60))
    for n, log in enumerate(logs):
        log.append(records(1, start=n)[0])
    for log in logs:
        log.close()
    assert sorted(r["request_id"] for r in read_log(tmp_path / "log")) == ["r0", "r1"]
    assert len(part_names(tmp_path / "log")) == 2
