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

import html
import json
from pathlib import Path
from typing import Any

from hllm.report import _json, _validation_summary

STEP_ORDER = ("validate", "features", "knowledge", "train_backbone", "train_llm4msr",
              "evaluate_backbone", "evaluate_llm4msr", "register", "gate")
MODELS = ("backbone", "llm4msr")


def _model(run: Path, evaluated: Path) -> dict[str, Any] | None:
    metrics = _json(evaluated / "metrics.json") or _json(run / "metrics.json")
    if metrics is None:
        return None
    keep = {k: v for k, v in metrics.items() if k.startswith(("auc", "logloss"))}
    return {"model": metrics.get("model"), "metrics": keep, "scenarios": metrics.get("scenarios", []),
            "best_epoch": metrics.get("best_epoch"), "split_sha256": metrics.get("split_sha256"),
            "timings": metrics.get("timings", {}), "params": metrics.get("params")}


def summarize(run_dir: str | Path, *, steps: dict[str, dict[str, Any]] | None = None,
              pipeline_run_id: str = "") -> dict[str, Any]:
    run = Path(run_dir)
    validation = _validation_summary(_json(run / "validate" / "validation.json"))
    models = {m: s for m in MODELS if (s := _model(run / f"train_{m}", run / f"evaluate_{m}"))}
    registration = _json(run / "register" / "registration.json")
    gate = _json(run / "gate" / "gate.json")
    knowledge = _json(run / "knowledge" / "knowledge.json")
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
        "gate": gate and {"decision": gate["decision"], "reasons": gate.get("reasons", []),
                          "challenger": gate.get("challenger"), "champion": gate.get("champion"),
                          "checks": gate.get("checks", [])},
        "steps": step_rows,
        "steps_wall_seconds": round(sum(s.get("seconds") or 0 for s in step_rows.values()
                                        if not s.get("cached")), 3),
    }


def render_html(summary: dict[str, Any]) -> str:
    e = html.escape
    models = summary["models"]
    scen = next((m["scenarios"] for m in models.values() if m.get("scenarios")), [])
    head = "".join(f"<th>{e(s)}</th>" for s in ["overall", *scen])
    rows = []
    for key in ("auc", "logloss"):
        for m in models.values():
            cells = "".join(f"<td>{m['metrics'].get(k, float('nan')):.4f}</td>"
                            for k in [key, *(f"{key}/{s}" for s in scen)])
            rows.append(f"<tr><td>{e(key)}</td><td>{e(str(m['model']))}</td>{cells}</tr>")
    gate = summary.get("gate") or {}
    checks = "".join(f"<li>{'PASS' if c['passed'] else 'FAIL'} {e(c['name'])}: {e(c['detail'])}</li>"
                     for c in gate.get("checks", []))
    reg = summary.get("registry") or {}
    steps = "".join(f"<tr><td>{e(n)}</td><td>{(s.get('seconds') or 0):.1f} s"
                    f"{' (cached)' if s.get('cached') else ''}</td></tr>"
                    for n, s in summary.get("steps", {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>LLM4MSR run
{e(summary.get('pipeline_run_id', ''))}</title><style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:2px 10px;text-align:right}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}
</style></head><body><h1>LLM4MSR run {e(summary.get('pipeline_run_id', ''))}: {e(summary['status'])}</h1>
<h2>Test metrics per scenario</h2><table><tr><th>metric</th><th>model</th>{head}</tr>{''.join(rows)}</table>
<h2>Registry</h2><p>{e(str(reg.get('model_name', '-')))} version {e(str(reg.get('version', '-')))}</p>
<h2>Gate: {e(str(gate.get('decision', '-')))}</h2><ul>{checks}</ul>
<h2>Steps</h2><table>{steps}</table></body></html>
"""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 steps: dict[str, dict[str, Any]] | None = None,
                 pipeline_run_id: str = "") -> dict[str, Any]:
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(run_dir, steps=steps, pipeline_run_id=pipeline_run_id)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.html").write_text(render_html(summary))
    return summary
