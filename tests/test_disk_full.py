"""Disk full mid-write (a process under RLIMIT_FSIZE): one line, the previous state intact.

The limit makes every write past N bytes fail with EFBIG, as a full disk fails with
ENOSPC; SIGXFSZ is ignored so the write returns the error instead of killing the process.
"""

from __future__ import annotations

import hashlib
import resource
import signal
import subprocess
import sys
from pathlib import Path


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _hllm(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited(limit) if limit else None)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(toy_data, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--preset", "cpu-tiny", "--model", "sasrec", "--data", str(toy_data),
              "--out", str(out), "--set", "train.epochs=2"]
    first = _hllm(*common, "--set", "train.max_steps=3")
    assert first.returncode == 0, first.stderr[-1500:]
    before = _snapshot(out / "checkpoint")
    weights = (out / "checkpoint" / "model.safetensors").stat().st_size
    resumed = _hllm(*common, "--resume", limit=weights // 2)
    lines = [ln for ln in resumed.stderr.splitlines() if ln.startswith("error")]
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-1500:]
    assert len(lines) == 1 and "not saved" in lines[0] and "is unchanged" in lines[0]
    assert _snapshot(out / "checkpoint") == before
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert _hllm(*common, "--resume").returncode == 0  # with room again, it carries on


def test_feature_build_on_a_full_disk_keeps_the_served_features(toy_data, tmp_path):
    run = tmp_path / "features"
    built = _hllm("features", "build", "--data", str(toy_data), "--run", str(run))
    assert built.returncode == 0, built.stderr[-1500:]
    before = _snapshot(run / "feature_repo")
    again = _hllm("features", "build", "--data", str(toy_data), "--run", str(run), limit=4096)
    lines = [ln for ln in again.stderr.splitlines() if ln.startswith("error")]
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-1500:]
    assert len(lines) == 1 and "features not built" in lines[0]
    assert _snapshot(run / "feature_repo") == before
    assert sorted(p.name for p in run.iterdir()) == [".features.lock", "feature_repo"]
