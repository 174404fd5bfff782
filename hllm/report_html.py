"""The platform's HTML pages, from one set of Jinja2 templates (hllm/templates).

Every page (the HLLM and LLM4MSR run reports, the validation page, the A/B readout)
extends `base.html.j2`: one stylesheet, autoescaping on, no script and nothing fetched, so
a page reads the same on an air-gapped cluster. The Python side builds plain views (rows,
labels, grouped checks); the templates lay them out, and every value a run or a gate
wrote is escaped by Jinja, not by hand.

A registry reviewer opens a run report to answer one question: was this model promoted,
and why? So a report opens with the verdict and its reasons, then the comparison against
the model now serving (the current champion), then the ID or backbone baseline, and only
then the metrics, the training curves and lineage.
"""

from __future__ import annotations

from typing import Any, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined

TARGETS = ("champion", "baseline", "floor")


def fmt(value: Any) -> str:
    """4 decimals for metrics; tiny differences and big counts stay readable."""
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else (
            f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}")
    return str(value)


ENV = Environment(loader=PackageLoader("hllm", "templates"), autoescape=True,
                  undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                  keep_trailing_newline=True)
ENV.filters["fmt"] = fmt


def render(template: str, **context: Any) -> str:
    """A page from hllm/templates/<template>."""
    return ENV.get_template(template).render(**context)


def _macros():
    return ENV.get_template("macros.html.j2").module


def against(check: dict[str, Any]) -> str:
    """What a gate check measured the challenger against (gate.json from before the field
    existed is read by the check's name)."""
    if check.get("against"):
        return check["against"]
    name = check.get("name", "")
    if name.startswith("absolute"):
        return "floor"
    if name.startswith(("uplift", "no regression", "same split")):
        return "champion"
    return "baseline"


def verdict_view(gate: dict[str, Any] | None, status: str, model: str = "") -> dict[str, Any]:
    """What the verdict box says: the decision, which version, and the failed checks."""
    if not gate:
        why = {"rejected": "validation refused the data, so nothing was trained",
               "incomplete": "the run stopped before the gate"}.get(status, status)
        return {"decision": None, "why": why}
    checks = gate.get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    return {"decision": gate["decision"], "name": str(gate.get("model") or model or "the model"),
            "version": str(gate.get("challenger", "?")), "champion": gate.get("champion"),
            "checks": len(checks), "failed": [c["detail"] for c in failed],
            "failed_by": [(t, n) for t in TARGETS if (n := sum(against(c) == t for c in failed))]}


def verdict(gate: dict[str, Any] | None, status: str, model: str = "") -> str:
    """The first thing on a run report: promoted, approved or refused, which version, and why."""
    return _macros().verdict(verdict_view(gate, status, model))


def _check_rows(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"row": [c["name"], "yes" if c["passed"] else "NO", c["detail"]],
             "row_class": "" if c["passed"] else "fail"} for c in checks]


def comparison_sections(gate: dict[str, Any] | None, baseline_name: str) -> list[dict[str, Any]]:
    """The gate's checks grouped by what they compared against: the champion first."""
    if not gate:
        return []
    checks = gate.get("checks", [])
    by = {t: [c for c in checks if against(c) == t] for t in TARGETS}
    champion = gate.get("champion")
    if champion:
        sections = [{"title": f"Against the current champion (version {champion})", "note": "",
                     "checks": _check_rows(by["champion"])}]
    else:
        sections = [{"title": "Against the current champion",
                     "note": "No champion yet: this is the first model of its name, so it is "
                             "held to absolute floors instead.",
                     "checks": _check_rows(by["floor"])}]
    if by["baseline"]:
        sections.append({"title": f"Against the {baseline_name}", "note": "",
                         "checks": _check_rows(by["baseline"])})
    return sections


def epoch_view(histories: dict[str, list[dict[str, Any]]], columns: Sequence[tuple[str, str]],
               best: dict[str, Any]) -> dict[str, Any]:
    """One row per epoch with each model's (label, key) columns side by side, then which
    epoch each model's evaluated weights come from."""
    epochs = sorted({int(h["epoch"]) for hist in histories.values() for h in hist})
    header = ["epoch", *(f"{name} {label}" for name in histories for label, _ in columns)]
    by_epoch = {name: {int(h["epoch"]): h for h in hist} for name, hist in histories.items()}
    rows = [[epoch, *(by_epoch[name].get(epoch, {}).get(key, "")
                      for name in histories for _, key in columns)] for epoch in epochs]
    kept = ", ".join(f"{n} epoch {best[n]}" for n in histories if best.get(n) is not None)
    return {"header": header, "rows": rows, "kept": kept}
