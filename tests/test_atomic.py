"""swap_dir and recover_dir: a crash at any point of a directory swap loses nothing."""

from __future__ import annotations

import pytest

from hllm.atomic import recover_dir, swap_dir

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def _dir(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


def test_swap_replaces_and_cleans_up(tmp_path):
    tmp_path = tmp_path / "runs"
    tmp_path.mkdir()
    final = _dir(tmp_path / "ckpt", "v1")
    swap_dir(_dir(tmp_path / "ckpt.tmp", "v2"), final)
    assert (final / "f").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_crash_between_the_renames_is_recovered(tmp_path):
    tmp_path = tmp_path / "runs"
    tmp_path.mkdir()
    # The state a SIGKILL leaves after `final -> final.old` and before `staged -> final`.
    _dir(tmp_path / "ckpt.old", "v1")
    final = tmp_path / "ckpt"
    assert recover_dir(final) is True
    assert (final / "f").read_text() == "v1" and not (tmp_path / "ckpt.old").exists()
    assert recover_dir(final) is False  # nothing left to recover

