"""KFP artifact glue the components share, so the library never sees a KFP artifact.

A step's wall time goes into its main output artifact's metadata (KFP keeps it, for
cached steps too); metrics go on Metrics artifacts and into their files; the report step
links the step artifacts into a run directory the library's report writer reads.
Imported inside component bodies: it runs in the project image, where this package is
installed with hllm.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from hllm.report import TEST_METRICS, link_report, write_report


@contextmanager
def step_timer(artifact: Any, step: str) -> Iterator[None]:
    """Record a step's wall time in its output artifact's metadata (KFP keeps it, cached too)."""
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        artifact.metadata.update(step=step, started_at=started,
                                 wall_seconds=round(time.perf_counter() - t0, 3))


def step_record(artifact: Any) -> dict[str, Any]:
    """Where a step's artifact is and how long the step took, from the artifact itself."""
    meta = dict(getattr(artifact, "metadata", {}) or {})
    return {"uri": artifact.uri, "path": artifact.path, "seconds": meta.get("wall_seconds"),
            "started_at": meta.get("started_at")}


def log_metrics(artifact: Any, values: dict[str, Any], names: Sequence[str] = TEST_METRICS) -> None:
    """Log scalar metrics on a KFP Metrics artifact and also write them to its file.

    KFP keeps metrics in the artifact's metadata only; kfp.local's cache treats an
    output whose file does not exist as a miss, so a step with an empty Metrics file
    would never be reused. Writing the same numbers as JSON fixes that, and the
    cluster then also stores them as a file.
    """
    picked = {n: float(values[n]) for n in names if n in values}
    for name, value in picked.items():
        artifact.log_metric(name, value)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(picked, indent=2) + "\n")


def publish_report(steps: dict[str, Any], report: Any, summary: Any, *,
                   writer: Callable[..., dict[str, Any]] = write_report, tracking_uri: str = "",
                   report_uri: str = "", pipeline_run_id: str = "") -> dict[str, Any]:
    """The pipelines' report step: step artifacts -> report.html + summary.json artifacts,
    and a `report_uri` tag on every registered version.

    The artifacts are linked into a temporary run directory under their step names, the
    layout `writer` (hllm.report.write_report, or the MSR one) reads.
    """
    with tempfile.TemporaryDirectory() as run_dir:
        for name, artifact in steps.items():
            os.symlink(artifact.path, os.path.join(run_dir, name))
        result = writer(run_dir, run_dir, pipeline_run_id=pipeline_run_id,
                        steps={n: step_record(a) for n, a in steps.items()})
        shutil.copyfile(os.path.join(run_dir, "report.html"), report.path)
        shutil.copyfile(os.path.join(run_dir, "summary.json"), summary.path)
    versions = [(v["name"], v["version"]) for v in result["registry"]["versions"]]
    link_report(versions, report_uri or report.uri, tracking_uri=tracking_uri or None)
    return result
