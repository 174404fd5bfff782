"""Deterministic traffic assignment: a salted hash of the bucketing unit, nothing stored.

bucket(unit, salt) = first 8 bytes of sha256(salt + "\\x1f" + unit), big-endian, mod the
number of buckets. The same user lands in the same bucket in every process, machine and
version of this code (the function is fixed by a golden test); a new salt reshuffles.
Two independent hashes are used: one with the layer name picks whether the user is in
this experiment's slice of the layer (mutual exclusion), one with the experiment's salt
picks the arm. Arms own consecutive bucket ranges: control, then treatment, then holdout.
During a ramp stage only the first `percent` of the treatment range is treated; the rest
of that range is served control (and should not be counted in either arm).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hllm.experiment import ABConfig


def bucket(unit: str, salt: str, buckets: int) -> int:
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


@dataclass(frozen=True)
class Assignment:
    arm: str  # control | treatment | holdout | outside (not in this experiment's layer slice)
    serve: str  # which model answers: control or treatment (holdout and outside get control)
    bucket: int
    in_ramp: bool = True  # false when a ramp stage holds a treatment bucket back


def assign(cfg: ABConfig, unit: str, ramp_percent: float | None = None) -> Assignment:
    """Route one unit (user id) for `cfg`; `ramp_percent` is the current stage's treatment share."""
    n = cfg.bucketing.buckets
    lo, hi = cfg.layer.slice
    layer_bucket = bucket(unit, f"layer:{cfg.layer.name}", n)
    if not lo * n / 100 <= layer_bucket < hi * n / 100:
        return Assignment("outside", "control", layer_bucket)
    b = bucket(unit, cfg.bucketing.salt, n)
    control_end = cfg.allocation["control"] * n / 100
    treatment_end = control_end + cfg.allocation["treatment"] * n / 100
    if b < control_end:
        return Assignment("control", "control", b)
    if b < treatment_end:
        treated = ramp_percent if ramp_percent is not None else cfg.allocation["treatment"]
        if b < control_end + treated * n / 100:
            return Assignment("treatment", "treatment", b)
        return Assignment("treatment", "control", b, in_ramp=False)
    return Assignment("holdout", "control", b)
