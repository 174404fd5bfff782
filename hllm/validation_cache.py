"""Remembered validation passes, so the same bytes are judged once, not once per command.

Run by hand, `hllm features build` and every `hllm train` validate the data they read
before reading it (each may run alone, so each must refuse bad data itself); loading
Great Expectations and running the suites costs 6 to 10 s per check on 2 cores, paid
again for the same bytes by every command of a session (validate, build, train HLLM,
train SASRec). The pipeline's steps do not need this: its validation step gates the
branch and the steps after it skip the check.

A pass is remembered under a key of everything its outcome depends on: the bytes of the
tables, the validation settings, the source of the modules that read and judge them, and
the Great Expectations version. A failure is never remembered: it is always re-run, so
its message names the rows as they are now. The only time-dependent rule (timestamps no
later than tomorrow) can only turn a failure into a pass as time goes on, never the
reverse, so a remembered pass stays true.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from hllm import storage
from hllm.atomic import write_text
from hllm.lineage import sha256_file

log = logging.getLogger(__name__)

# The modules whose code decides a verdict: how tables are found and read, and the suites.
JUDGES = ("validation.py", "data/readers.py", "data/labels.py")
_PACKAGE = Path(__file__).resolve().parent


def fingerprint(tables: dict[str, Path], settings: dict[str, Any]) -> str:
    """The key of a verdict: table bytes, settings (a ValidationConfig as a dict), the
    judging code and the GX version."""
    try:
        gx_version = metadata.version("great_expectations")
    except metadata.PackageNotFoundError:
        gx_version = "absent"
    parts: dict[str, Any] = {
        "tables": {name: [p.name, sha256_file(p)] for name, p in sorted(tables.items())},
        "settings": settings,
        "code": {m: sha256_file(_PACKAGE / m) for m in JUDGES},
        "great_expectations": gx_version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return storage.cache_root() / "validated" / f"{key}.json"


def remembered(key: str) -> dict[str, Any] | None:
    """The stored report of a pass under `key`, or None (never stored, or unreadable)."""
    path = _path(key)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable validation record %s (%s); validating again", path, exc)
        return None
    return report if isinstance(report, dict) and report.get("success") is True else None


def remember(key: str, report: dict[str, Any]) -> None:
    """Store a passing report under `key` (atomically: a crash leaves the old file or none)."""
    if report.get("success") is not True:
        raise ValueError("only a passing validation is remembered")
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(report) + "\n")
    except OSError as exc:  # a read-only cache costs time, not correctness
        log.warning("could not remember the validation pass in %s (%s)", path, exc)
