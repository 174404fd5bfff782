"""The LLM4MSR pipeline run report: summary.json and a self-contained report.html.

A finished run directory holds one sub-directory per step:

    validate/          validation.json, validation.html
    features/          feature_repo/ (item and user features)
    knowledge/         knowledge.safetensors, knowledge.json, feature_repo/ (+ knowledge views)
    train_backbone/    the backbone alone (hllm.msr.run layout)
    train_llm4msr/     the backbone + LLM4MSR
    evaluate_backbone/ metrics.json, test_predictions.npz
    evaluate_llm4msr/
    register/          registration.json
    gate/              gate.json, rollout_plan.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hllm.report import read_json, validation_summary
from hllm.report_html import comparison_sections, epoch_view, render, verdict_view

STEP_ORDER = ("validate", "features", "knowledge", "train_backbone", "train_llm4msr",
              "evaluate_backbone", "evaluate_llm4msr", "register", "gate")
MODELS = ("backbone", "llm4msr")


def _model(run: Path, evaluated: Path) -> dict[str, Any] | None:
    metrics = read_json(evaluated / "metrics.json") or read_json(run / "metrics.json")
    if metrics is None:
        return None
    keep = {k: v for k, v in metrics.items() if k.startswith(("auc", "logloss"))}
    return {"model": metrics.get("model"), "metrics": keep, "scenarios": metrics.get("scenarios", []),
            "best_epoch": metrics.get("best_epoch"), "split_sha256": metrics.get("split_sha256"),
            "timings": metrics.get("timings", {}), "params": metrics.get("params")}


def summarize(run_dir: str | Path, *, steps: dict[str, dict[str, Any]] | None = None,
              pipeline_run_id: str = "") -> dict[str, Any]:
    run = Path(run_dir)
    validation = validation_summary(read_json(run / "validate" / "validation.json"))
    models = {m: s for m in MODELS if (s := _model(run / f"train_{m}", run / f"evaluate_{m}"))}
    registration = read_json(run / "register" / "registration.json")
    gate = read_json(run / "gate" / "gate.json")
    knowledge = read_json(run / "knowledge" / "knowledge.json")
    status = "completed" if gate else ("rejected" if validation and not validation["success"]
                                       else "incomplete")
    step_rows = {n: dict((steps or {})[n]) for n in STEP_ORDER if n in (steps or {})}
    return {
        "pipeline": "llm4msr", "pipeline_run_id": pipeline_run_id, "status": status,
        "validation": validation, "knowledge": knowledge, "models": models,
        "registry": registration and {"model_name": registration["model_name"],
                                      "version": str(registration["version"]),
                                      "mlflow_run_id": registration.get("mlflow_run_id"),
                                      "versions": registration.get("versions", []),
                                      "tags": registration.get("tags", {})},
        "onnx": None,
        "gate": gate and {"decision": gate["decision"], "model": gate.get("model"),
                          "reasons": gate.get("reasons", []),
                          "challenger": gate.get("challenger"), "champion": gate.get("champion"),
                          "checks": gate.get("checks", [])},
        "steps": step_rows,
        "steps_wall_seconds": round(sum(s.get("seconds") or 0 for s in step_rows.values()
                                        if not s.get("cached")), 3),
    }


def render_html(summary: dict[str, Any], histories: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """The LLM4MSR report page, in the order of HLLM's: verdict and why, the champion and
    backbone comparisons, AUC and logloss per scenario, validation AUC per epoch, lineage
    (templates/msr_report.html.j2)."""
    models = summary["models"]
    gate = summary.get("gate")
    reg = summary.get("registry") or {}
    scen = next((m["scenarios"] for m in models.values() if m.get("scenarios")), [])
    view: dict[str, Any] = {
        "run_id": summary.get("pipeline_run_id", ""),
        "verdict": verdict_view(gate, summary["status"], reg.get("model_name", "")),
        "comparisons": comparison_sections(gate, "backbone alone (no LLM4MSR)"),
        "metrics": None, "epochs": None, "validation": summary.get("validation"),
        "registry": reg or None,
        "steps": [[n, f"{s.get('seconds') or 0.0:.1f}", "yes" if s.get("cached") else "no"]
                  for n, s in (summary.get("steps") or {}).items()]}
    if models:
        view["metrics"] = {"header": ["metric", "model", "overall", *scen],
                           "rows": [[key, str(m["model"]),
                                     *(m["metrics"].get(k, float("nan"))
                                       for k in [key, *(f"{key}/{s}" for s in scen)])]
                                    for key in ("auc", "logloss") for m in models.values()]}
    if histories:
        view["epochs"] = epoch_view(
            {models[n]["model"] if n in models else n: h for n, h in histories.items()},
            [("loss", "train_loss"), ("valid AUC", "valid_auc")],
            {models[n]["model"]: models[n].get("best_epoch") for n in histories if n in models})
    return render("msr_report.html.j2", title=f"LLM4MSR run {summary.get('pipeline_run_id', '')}",
                  r=view)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 steps: dict[str, dict[str, Any]] | None = None,
                 pipeline_run_id: str = "") -> dict[str, Any]:
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(run_dir, steps=steps, pipeline_run_id=pipeline_run_id)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    histories = {m: h for m in MODELS
                 if (h := (read_json(Path(run_dir) / f"train_{m}" / "metrics.json") or {}).get("history"))}
    (out / "report.html").write_text(render_html(summary, histories))
    return summary
