"""The tracking server is down: every command that needs it says so in one line, fast.

Each command runs as a real process against a port on 127.0.0.1 where nothing listens
(the state of a crashed or unreachable server). It must exit 2 within 15 seconds with
one line naming the URI and the real cause, and write nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import free_port

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
AB = ROOT / "configs" / "ab" / "hllm-rollout.yaml"


def _run(args: list[str], uri: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
    return done, time.perf_counter() - t0


COMMANDS = {
    "gate": ["gate", "--challenger", "challenger", "--ab-config", str(AB), "--out", "out"],
    "rollback": ["rollback", "--ab-config", str(AB)],
    "recommend": ["recommend", "--user", "1", "--ab-config", str(AB), "--data", str(ML100K)],
    "register": ["register", "--run", "run"],
    "train": ["train", "--preset", "cpu-tiny", "--model", "sasrec", "--data", "toy",
              "--out", "out"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_dead_tracking_server_is_named_in_one_line_within_seconds(tmp_path, toy_data, command):
    uri = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "run").mkdir()
    assert toy_data == tmp_path / "toy"  # the fixture's data, named "toy" in the commands
    before = sorted(p.name for p in tmp_path.iterdir())
    done, seconds = _run(COMMANDS[command], uri, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert seconds < 15, f"{command} took {seconds:.1f} s against a dead server"
    assert "Traceback" not in done.stderr
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and uri in errors[0] and "does not answer" in errors[0], lines
    assert "alias" not in errors[0] and "roll back" not in errors[0]  # no false cause
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert list((tmp_path / "run").iterdir()) == []


def test_registry_commands_without_a_tracking_uri_say_so_and_write_nothing(tmp_path):
    """Unset, MLflow would fall back to a new ./mlflow.db and report the model as missing."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for args in (COMMANDS["recommend"], COMMANDS["rollback"]):
        done = subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                              text=True, cwd=cwd, env=env, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == (
            "error: no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    assert list(cwd.iterdir()) == []  # no mlflow.db


def test_library_calls_put_mlflows_process_wide_tracking_uri_back(monkeypatch):
    """register, gate and log_run set mlflow's URI (and MLFLOW_TRACKING_URI) for their
    server; the caller's setting, or its absence, is back afterwards, on errors too."""
    import mlflow

    from hllm.tracking import keeps_tracking_uri

    @keeps_tracking_uri
    def talks_to(uri: str) -> None:
        mlflow.set_tracking_uri(uri)
        raise RuntimeError("server gone")

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(None)
        with pytest.raises(RuntimeError):
            talks_to("http://127.0.0.1:1")
        assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:2")
        with pytest.raises(RuntimeError):
            talks_to("http://127.0.0.1:1")
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:2" == os.environ["MLFLOW_TRACKING_URI"]
    finally:  # this test moved the process-wide URI itself: later tests in this worker must not see it
        mlflow.set_tracking_uri(before)
    for fn in ("hllm.registry.register", "hllm.gate.gate", "hllm.tracking.log_run"):
        module, name = fn.rsplit(".", 1)
        assert getattr(__import__(module, fromlist=[name]), name).__wrapped__, fn
