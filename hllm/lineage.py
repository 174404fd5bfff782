"""Lineage tags for a registered model version: what data, split, code and checks made it.

Every value is a content hash or an id that can be looked up again, so a version in
the registry can be traced back to the exact inputs and re-created or audited.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hllm import storage
from hllm.errors import ConfigError, DataError

PIPELINE_ENV = ("KFP_RUN_ID", "PIPELINE_RUN_ID")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_sha256(data: str) -> str:
    """Content hash of a dataset file or directory (relative names and bytes of every file)."""
    root = storage.local_path(data)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{data}: no files to hash")
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def validation_tags(path: Path) -> dict[str, str]:
    """Outcome and hash of a validation.json written by `hllm validate`."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the validation report ({exc})") from exc
    if "success" not in report:
        raise ConfigError(f"{path}: not a validation report (no `success` field)")
    checks = report.get("checks", [])
    failed = sum(1 for c in checks if not c.get("success", True))
    return {"validation.success": str(bool(report["success"])).lower(),
            "validation.sha256": sha256_file(path),
            "validation.checks": f"{len(checks) - failed}/{len(checks)} passed"}


def feature_view_versions(repo: Path) -> dict[str, str]:
    """Feature view names with a hash of each definition, read from the repo's Feast registry."""
    os.environ.setdefault("FEAST_USAGE", "False")
    if not (repo / "feature_store.yaml").is_file():
        raise ConfigError(f"{repo}: not a Feast repo (no feature_store.yaml)")
    from feast import FeatureStore

    try:
        store = FeatureStore(repo_path=str(repo))
        views = store.list_feature_views()
    except Exception as exc:  # noqa: BLE001 - Feast raises many kinds
        raise ConfigError(f"{repo}: cannot read the Feast registry ({exc}); "
                          "run `hllm features build` first") from exc
    if not views:
        raise ConfigError(f"{repo}: the Feast registry has no feature views; run `feast apply`")
    versions = {}
    for view in sorted(views, key=lambda v: v.name):
        spec = view.to_proto().spec.SerializeToString(deterministic=True)
        versions[view.name] = hashlib.sha256(spec).hexdigest()[:16]
    return versions


def pipeline_run_id(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in PIPELINE_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def lineage_tags(*, data_hash: str, split_hash: str, code: str, preset: str, model: str,
                 mlflow_run_id: str, validation: dict[str, str] | None,
                 features: dict[str, str] | None, pipeline_run: str | None,
                 extra: dict[str, Any] | None = None) -> dict[str, str]:
    tags = {"data_sha256": data_hash, "split_sha256": split_hash, "code_version": code,
            "preset": preset, "model": model, "mlflow_run_id": mlflow_run_id}
    tags.update(validation or {})
    if features:
        tags["feature_views"] = ",".join(f"{n}@{h}" for n, h in features.items())
        tags["feature_views.sha256"] = hashlib.sha256(
            json.dumps(features, sort_keys=True).encode()).hexdigest()[:16]
    if pipeline_run:
        tags["pipeline_run_id"] = pipeline_run
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags
