"""The pipeline run report: `summary.json` for machines, `report.html` for people.

A finished run directory holds one sub-directory per step, named as below (the
pipeline's report step links the step artifacts in under these names):

    validate/         validation.json, validation.html
    features/         feature_repo/
    train_hllm/       config.yaml, best/, log.jsonl, metrics.json, test_ranks.npy
    train_sasrec/     (the same, for the baseline)
    evaluate_hllm/    metrics.json, test_ranks.npy (optional: re-scored evidence)
    evaluate_sasrec/
    export_onnx/      item_llm.onnx, export.json
    register/         registration.json
    gate/             gate.json, rollout_plan.md

The HTML page (templates/run_report.html.j2) is self-contained: charts are inline SVG
drawn by matplotlib (hllm.charts), no script and no stylesheet is fetched, so it opens the
same on an air-gapped cluster or from a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from hllm.charts import line_chart
from hllm.report_html import comparison_sections, epoch_view, render, verdict_view
from hllm.tracking import resolve_uri

TEST_METRICS = ("recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")
RECALL_KS = (10, 50, 200)
SEGMENT_METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
MODELS = {"hllm": "train_hllm", "sasrec": "train_sasrec"}
STEP_ORDER = ("validate", "features", "train_hllm", "train_sasrec", "evaluate_hllm",
              "evaluate_sasrec", "export_onnx", "register", "gate")


# ---------------------------------------------------------------- reading a run

def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """log.jsonl as (per-step records with `loss`, per-epoch records with `train_loss`)."""
    steps, epochs = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "train_loss" in record:
                epochs.append(record)
            elif "loss" in record and "step" in record:
                steps.append(record)
    return steps, epochs


def validation_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    checks = report.get("checks", [])
    failed = [f"{c['table']}.{c.get('column') or '-'}: {c['expectation']} ({c.get('detail', '')})"
              for c in checks if not c.get("success", True)]
    return {"success": bool(report.get("success")), "data": report.get("data"),
            "rows": report.get("rows", {}), "checks": len(checks), "failed": failed}


def _model_summary(run: Path) -> dict[str, Any] | None:
    metrics = read_json(run / "metrics.json")
    if metrics is None:
        return None
    return {"metrics": {k: metrics[k] for k in TEST_METRICS if k in metrics},
            "segments": metrics.get("segments", {}),
            "valid": metrics.get("valid", {}), "preset": metrics.get("preset"),
            "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
            "split_sha256": metrics.get("split_sha256")}


def _onnx_summary(directory: Path) -> dict[str, Any] | None:
    manifest = read_json(directory / "export.json")
    if manifest is None:
        return None
    parity = manifest.get("parity_vs_pytorch", {})
    diffs = [v["max_abs_diff"] for v in parity.values() if "max_abs_diff" in v]
    cosines = [v["min_cosine"] for v in parity.values() if "min_cosine" in v]
    return {"max_abs_diff": max(diffs) if diffs else None,
            "min_cosine": min(cosines) if cosines else None,
            "files": manifest.get("files", {}), "parity": parity}


def summarize(run_dir: str | Path, *, steps: dict[str, dict[str, Any]] | None = None,
              pipeline_run_id: str = "") -> dict[str, Any]:
    """The summary of a run directory (see the module docstring for its layout)."""
    run = Path(run_dir)
    validation = validation_summary(read_json(run / "validate" / "validation.json"))
    models = {name: s for name, d in MODELS.items() if (s := _model_summary(run / d))}
    for name in models:  # re-scored evidence, when the evaluate step ran
        evaluated = _model_summary(run / f"evaluate_{name}")
        if evaluated:
            models[name]["evaluated_metrics"] = evaluated["metrics"]
    registration = read_json(run / "register" / "registration.json")
    gate = read_json(run / "gate" / "gate.json")
    status = "completed" if gate else ("rejected" if validation and not validation["success"]
                                       else "incomplete")
    step_rows = {name: dict(steps.get(name, {})) for name in STEP_ORDER if name in (steps or {})}
    return {
        "pipeline_run_id": pipeline_run_id,
        "status": status,
        "validation": validation,
        "models": models,
        "registry": None if registration is None else {
            "model_name": registration["model_name"], "version": str(registration["version"]),
            "mlflow_run_id": registration.get("mlflow_run_id"),
            "versions": registration.get("versions", []), "tags": registration.get("tags", {})},
        "onnx": _onnx_summary(run / "export_onnx"),
        "gate": None if gate is None else {
            "decision": gate["decision"], "model": gate.get("model"), "reasons": gate.get("reasons", []),
            "challenger": gate.get("challenger"), "champion": gate.get("champion"),
            "checks": gate.get("checks", [])},
        "steps": step_rows,
        "steps_wall_seconds": round(sum(s.get("seconds") or 0 for s in step_rows.values()
                                        if not s.get("cached")), 3),
    }


# ---------------------------------------------------------------- writing

def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 steps: dict[str, dict[str, Any]] | None = None,
                 pipeline_run_id: str = "") -> dict[str, Any]:
    """Write summary.json and report.html for a run directory; returns the summary."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(run, steps=steps, pipeline_run_id=pipeline_run_id)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.html").write_text(render_html(summary, run))
    return summary


def write_rejected(validation_dir: str | Path, summary_path: str | Path, *,
                   steps: dict[str, dict[str, Any]] | None = None,
                   pipeline_run_id: str = "") -> dict[str, Any]:
    """summary.json for a run stopped by validation: nothing trained, nothing registered."""
    report = read_json(Path(validation_dir) / "validation.json")
    summary = {"pipeline_run_id": pipeline_run_id, "status": "rejected",
               "validation": validation_summary(report), "models": {}, "registry": None,
               "onnx": None, "gate": None, "steps": steps or {},
               "steps_wall_seconds": round(sum((s.get("seconds") or 0)
                                               for s in (steps or {}).values()), 3)}
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def link_report(versions: Sequence[tuple[str, str]], report_uri: str,
                tracking_uri: str | None = None) -> None:
    """Tag each registered version with where its run report lives (lineage for reviewers)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_uri(tracking_uri))
    for name, version in versions:
        client.set_model_version_tag(name, str(version), "report_uri", report_uri)


# ---------------------------------------------------------------- HTML

def _charts(summary: dict[str, Any], logs: dict[str, tuple[list, list]]) -> list[str]:
    step_loss, epoch_loss, valid_ndcg = {}, {}, {}
    for name, (steps, epochs) in logs.items():
        if steps:
            step_loss[name] = [(r["step"], r["loss"]) for r in steps]
        if epochs:
            epoch_loss[name] = [(r["epoch"], r["train_loss"]) for r in epochs]
            valid_ndcg[name] = [(r["epoch"], r["valid_ndcg@10"]) for r in epochs
                                if "valid_ndcg@10" in r]
    recall = {name: [(k, m["metrics"][f"recall@{k}"]) for k in RECALL_KS
                     if f"recall@{k}" in m["metrics"]]
              for name, m in summary["models"].items()}
    return [line_chart(step_loss, "Training loss per optimizer step", "step", "loss"),
            line_chart(epoch_loss, "Mean training loss per epoch", "epoch", "loss"),
            line_chart(valid_ndcg, "Validation NDCG@10 per epoch", "epoch", "NDCG@10"),
            line_chart(recall, "Test Recall@K", "K", "recall", x_ticks=RECALL_KS)]


def _segment_rows(models: dict[str, Any]) -> list[list[Any]]:
    """Test metrics per user segment (hllm.segments): where text should beat item ids."""
    return [[name, segment, seg.get("users", 0), *(seg.get(k) if seg.get(k) is not None else "-"
                                                   for k in SEGMENT_METRICS)]
            for name, m in models.items() for segment, seg in (m.get("segments") or {}).items()]


def render_html(summary: dict[str, Any], run_dir: str | Path) -> str:
    """The report page, in a reviewer's order: the verdict and why, the comparison with the
    champion and the ID baseline, metrics and segments, training per epoch, then export,
    data, lineage and step timings (templates/run_report.html.j2)."""
    run = Path(run_dir)
    gate, models = summary.get("gate"), summary["models"]
    view: dict[str, Any] = {
        "run_id": summary.get("pipeline_run_id") or "",
        "verdict": verdict_view(gate, summary["status"],
                                (summary.get("registry") or {}).get("model_name", "")),
        "comparisons": comparison_sections(gate, "ID baseline (SASRec)"),
        "metrics": None, "segments": None, "charts": [], "epochs": None,
        "rollout_plan": None, "onnx": summary.get("onnx"),
        "validation": summary.get("validation"), "registry": summary.get("registry"),
        "steps": [[n, f"{s['seconds']:.1f}" if s.get("seconds") is not None else "",
                   "yes" if s.get("cached") else "no", s.get("started_at") or ""]
                  for n, s in (summary.get("steps") or {}).items()]}
    if models:
        view["metrics"] = {"header": ["model", *TEST_METRICS],
                           "rows": [[n, *(m["metrics"].get(k, "") for k in TEST_METRICS)]
                                    for n, m in models.items()]}
        segments = _segment_rows(models)
        if segments:
            view["segments"] = {"header": ["model", "segment", "users", *SEGMENT_METRICS],
                                "rows": segments}
        logs = {n: read_log(run / d / "log.jsonl") for n, d in MODELS.items()}  # read once
        view["charts"] = _charts(summary, logs)
        view["epochs"] = epoch_view({n: logs[n][1] for n in models},
                                    [("loss", "train_loss"), ("valid N@10", "valid_ndcg@10")],
                                    {n: m.get("best_epoch") for n, m in models.items()})
    plan = run / "gate" / "rollout_plan.md"
    if gate and plan.is_file():
        view["rollout_plan"] = plan.read_text()
    return render("run_report.html.j2", title="HLLM run report", r=view)
