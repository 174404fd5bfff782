"""HTML pieces both run reports share (HLLM's and LLM4MSR's), in the order a reviewer reads.

A registry reviewer opens the report to answer one question: was this model promoted, and
why? So the page opens with the verdict and its reasons, then the comparison against the
model now serving (the current champion), then the ID or backbone baseline, and only then
the metrics, the training curves and lineage. Everything is inline: no script, no fetched
stylesheet, so the page reads the same on an air-gapped cluster.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
         "color:#222}h2{margin-top:1.6em;border-bottom:1px solid #eee;padding-bottom:.2em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
         "padding:3px 8px;text-align:left;font-size:13px;vertical-align:top;overflow-wrap:anywhere}"
         "td.num{text-align:right;font-variant-numeric:tabular-nums}"
         "tr.fail td{background:#ffebe9}.bad{color:#b00}"
         ".verdict{padding:.8em 1.2em;border-radius:6px;margin:1em 0;font-size:15px}"
         ".verdict.promoted,.verdict.approved{background:#dafbe1;border:1px solid #1a7f37}"
         ".verdict.refused{background:#ffebe9;border:1px solid #cf222e}"
         ".verdict.none{background:#fff8c5;border:1px solid #9a6700}"
         ".verdict b{font-size:20px}.charts svg{margin:6px}pre{background:#f6f6f6;padding:8px}"
         ".note{color:#555}")

TARGETS = ("champion", "baseline", "floor")


def fmt(value: Any) -> str:
    if isinstance(value, float):  # 4 decimals for metrics; tiny diffs and big counts stay readable
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else (
            f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}")
    return html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        cells = "".join(f"<td class=num>{fmt(c)}</td>" if isinstance(c, (int, float))
                        and not isinstance(c, bool) else f"<td>{fmt(c)}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


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


def verdict(gate: dict[str, Any] | None, status: str, model: str = "") -> str:
    """The first thing on the page: promoted, approved or refused, which version, and why."""
    if not gate:
        why = {"rejected": "validation refused the data, so nothing was trained",
               "incomplete": "the run stopped before the gate"}.get(status, status)
        return (f"<div class='verdict none'><b>No gate decision</b>: {html.escape(why)}."
                "</div>")
    decision = gate["decision"]
    name = html.escape(str(gate.get("model") or model or "the model"))
    version = html.escape(str(gate.get("challenger", "?")))
    champion = gate.get("champion")
    if decision == "promoted":
        head = (f"<b>PROMOTED</b>: {name} version {version} is now champion "
                f"(previous champion: {html.escape(str(champion or 'none'))}).")
    elif decision == "approved":  # gate.promote: after_experiment
        head = (f"<b>APPROVED</b>: {name} version {version} passed and goes to the A/B "
                f"experiment; champion stays at version {html.escape(str(champion))} until "
                "<code>hllm ab promote</code> after the last stage.")
    else:
        head = (f"<b>REFUSED</b>: {name} version {version} stays challenger; the champion "
                f"is unchanged ({html.escape(str(champion or 'none yet'))}).")
    checks = gate.get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    if failed:
        why = "<p>Why: " + ", ".join(f"{len([c for c in failed if against(c) == t])} check(s) "
                                     f"against the {t}" for t in TARGETS
                                     if any(against(c) == t for c in failed)) + " failed:</p>"
        why += "<ul>" + "".join(f"<li>{html.escape(c['detail'])}</li>" for c in failed) + "</ul>"
    else:
        why = f"<p>Why: all {len(checks)} checks passed.</p>"
    return f"<div class='verdict {html.escape(decision)}'>{head}{why}</div>"


def _checks_table(checks: list[dict[str, Any]]) -> str:
    return table(["check", "passed", "detail"],
                 [[c["name"], "yes" if c["passed"] else "NO", c["detail"]] for c in checks],
                 ["" if c["passed"] else "fail" for c in checks])


def comparisons(gate: dict[str, Any] | None, baseline_name: str) -> list[str]:
    """The gate's checks grouped by what they compared against: the champion first."""
    if not gate:
        return []
    checks = gate.get("checks", [])
    by = {t: [c for c in checks if against(c) == t] for t in TARGETS}
    champion = gate.get("champion")
    parts = []
    if champion:
        parts += [f"<h2>Against the current champion (version {html.escape(str(champion))})</h2>",
                  _checks_table(by["champion"])]
    else:
        parts.append("<h2>Against the current champion</h2><p class=note>No champion yet: this "
                     "is the first model of its name, so it is held to absolute floors "
                     "instead.</p>")
        if by["floor"]:
            parts.append(_checks_table(by["floor"]))
    if by["baseline"]:
        parts += [f"<h2>Against the {html.escape(baseline_name)}</h2>", _checks_table(by["baseline"])]
    return parts


def epoch_table(histories: dict[str, list[dict[str, Any]]], columns: Sequence[tuple[str, str]],
                best: dict[str, Any]) -> str:
    """One row per epoch with each model's (label, key) columns side by side, then which
    epoch each model's evaluated weights come from."""
    epochs = sorted({int(h["epoch"]) for hist in histories.values() for h in hist})
    if not epochs:
        return ""
    header = ["epoch", *(f"{name} {label}" for name in histories for label, _ in columns)]
    by_epoch = {name: {int(h["epoch"]): h for h in hist} for name, hist in histories.items()}
    rows = [[epoch, *(by_epoch[name].get(epoch, {}).get(key, "")
                      for name in histories for _, key in columns)] for epoch in epochs]
    kept = ", ".join(f"{html.escape(n)} epoch {best[n]}" for n in histories if best.get(n) is not None)
    note = f"<p class=note>Weights evaluated: {kept} (best on validation).</p>" if kept else ""
    return table(header, rows) + note


def page(title: str, parts: Sequence[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
