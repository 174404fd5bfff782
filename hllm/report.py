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

The HTML page is self-contained: charts are inline SVG drawn here, no script and no
stylesheet is fetched, so it opens the same on an air-gapped cluster or from a laptop.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from hllm.report_html import comparisons, epoch_table, fmt, page, table, verdict

TEST_METRICS = ("recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")
RECALL_KS = (10, 50, 200)
SEGMENT_METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
MODELS = {"hllm": "train_hllm", "sasrec": "train_sasrec"}
STEP_ORDER = ("validate", "features", "train_hllm", "train_sasrec", "evaluate_hllm",
              "evaluate_sasrec", "export_onnx", "register", "gate")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


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

    from hllm.tracking import resolve_uri

    client = MlflowClient(resolve_uri(tracking_uri))
    for name, version in versions:
        client.set_model_version_tag(name, str(version), "report_uri", report_uri)


# ---------------------------------------------------------------- HTML and SVG

def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str,
               y_label: str, width: int = 560, height: int = 300,
               x_ticks: Sequence[float] | None = None) -> str:
    """An inline SVG line chart (one polyline per series, axes with min/max labels)."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    left, right, top, bottom = 60, 130, 28, 40
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9 + abs(y0) * 0.1 + 1e-9)
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2 - right / 2}" y="16" text-anchor="middle" font-size="13">'
             f'{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>']
    for y in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" '
                     'stroke="#ddd"/>')
    for x in (x_ticks if x_ticks is not None else (x0, x1)):
        parts.append(f'<text x="{sx(x):.1f}" y="{top + ph + 14}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{html.escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}">'
                     f'<title>{html.escape(name)}</title></polyline>')
        for x, y in pts if len(pts) <= 50 else []:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>')
        ly = top + 14 * i + 8
        parts.append(f'<rect x="{left + pw + 10}" y="{ly - 8}" width="10" height="10" '
                     f'fill="{color}"/><text x="{left + pw + 24}" y="{ly + 1}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


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


def _segment_tables(models: dict[str, Any]) -> list[str]:
    """Test metrics per user segment (hllm.segments): where text should beat item ids."""
    rows = [[name, segment, seg.get("users", 0), *(seg.get(k) if seg.get(k) is not None else "-"
                                                   for k in SEGMENT_METRICS)]
            for name, m in models.items() for segment, seg in (m.get("segments") or {}).items()]
    if not rows:
        return []
    return ["<h2>Test metrics by segment</h2><p>warm: target seen in training; long_tail: "
            "target among the 80% least-popular items; cold: target never seen in training "
            "(data.cold_items holds the newest items out).</p>",
            table(["model", "segment", "users", *SEGMENT_METRICS], rows)]


def render_html(summary: dict[str, Any], run_dir: str | Path) -> str:
    """The report page, in a reviewer's order: the verdict and why, the comparison with the
    champion and the ID baseline, metrics and segments, training per epoch, then export,
    data, lineage and step timings."""
    run = Path(run_dir)
    gate, models = summary.get("gate"), summary["models"]
    parts = [f"<h1>HLLM pipeline run {html.escape(summary.get('pipeline_run_id') or '')}</h1>",
             verdict(gate, summary["status"], (summary.get("registry") or {}).get("model_name", "")),
             *comparisons(gate, "ID baseline (SASRec)")]
    if models:
        parts.append("<h2>Test metrics</h2>")
        parts.append(table(["model", *TEST_METRICS],
                            [[n, *(m["metrics"].get(k, "") for k in TEST_METRICS)]
                             for n, m in models.items()]))
        parts += _segment_tables(models)
        parts.append("<h2>Training</h2><p class=note>Training loss, and validation NDCG@10 per "
                     "epoch beside it: early stopping and the kept weights follow validation "
                     "NDCG@10.</p>")
        logs = {n: read_log(run / d / "log.jsonl") for n, d in MODELS.items()}  # read once
        parts.append("<div class=charts>" + "".join(_charts(summary, logs)) + "</div>")
        histories = {n: logs[n][1] for n in models}
        parts.append("<details><summary>Per epoch: loss and validation NDCG@10</summary>"
                     + epoch_table(histories, [("loss", "train_loss"), ("valid N@10", "valid_ndcg@10")],
                                   {n: m.get("best_epoch") for n, m in models.items()})
                     + "</details>")
    if gate:
        plan = run / "gate" / "rollout_plan.md"
        if plan.is_file():
            parts.append(f"<details><summary>Rollout plan</summary><pre>"
                         f"{html.escape(plan.read_text())}</pre></details>")
    onnx = summary.get("onnx")
    if onnx:
        parts.append(f"<h2>ONNX export</h2><p>max |ONNX - PyTorch| {fmt(onnx['max_abs_diff'])}, "
                     f"min cosine {fmt(onnx['min_cosine'])}; files "
                     f"{html.escape(', '.join(onnx['files'].values()))}</p>")
    validation = summary.get("validation")
    if validation:
        parts.append(f"<h2>Data validation</h2><p>{validation['checks']} expectations, "
                     f"{'all passed' if validation['success'] else 'FAILED'}; rows "
                     f"{html.escape(json.dumps(validation['rows']))}</p>")
        parts += [f"<p class=bad>{html.escape(f)}</p>" for f in validation["failed"]]
    registry = summary.get("registry")
    if registry:
        parts.append(f"<h2>Lineage: {html.escape(registry['model_name'])} version "
                     f"{html.escape(registry['version'])}</h2>")
        parts.append(table(["tag", "value"], sorted(registry["tags"].items())))
    if summary["steps"]:
        parts.append("<h2>Steps</h2>")
        parts.append(table(["step", "wall s", "cached", "started"],
                            [[n, f"{s['seconds']:.1f}" if s.get("seconds") is not None else "",
                              "yes" if s.get("cached") else "no",
                              s.get("started_at") or ""] for n, s in summary["steps"].items()]))
    return page("HLLM run report", parts)
