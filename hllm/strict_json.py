"""JSON that every reader accepts: NaN and infinities written as null.

Python's `json` writes a bare `NaN` for a float NaN, which strict readers (jq, browsers,
most JSON libraries outside Python) reject, so one NaN AUC made a whole metrics.json
unreadable. numpy scalars are written as numbers; anything else unknown as its str().
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, np.integer) else str(value)


def dumps(obj: Any, indent: int | None = 1) -> str:
    """`json.dumps` with NaN/inf -> null and numpy scalars as numbers; ends with a newline."""
    return json.dumps(_finite(obj), indent=indent, default=_plain, allow_nan=False) + "\n"
