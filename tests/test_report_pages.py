"""The HTML pages' shared pieces: the Jinja2 templates escape what runs and gates wrote,
the charts are deterministic inline SVG, and the templates ship with the package."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

ROOT = Path(__file__).resolve().parents[1]


def test_values_are_escaped_and_the_page_has_no_script():
    from hllm.report_html import render

    page = render("msr_report.html.j2", title="<t>", r={
        "run_id": "<img src=x onerror=alert(1)>", "verdict": {"decision": None, "why": "<b>x</b>"},
        "comparisons": [], "metrics": None, "epochs": None, "validation": None,
        "registry": {"model_name": "m", "version": "1", "tags": {"note": "</table><script>"}},
        "steps": []})
    assert "<img" not in page and "&lt;img src=x" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script" not in page and "&lt;/table&gt;&lt;script&gt;" in page
    assert "<title>&lt;t&gt;</title>" in page and "<style>" in page


def test_a_chart_is_inline_svg_with_its_labels_and_renders_the_same_twice():
    from hllm.charts import line_chart

    series = {"hllm": [(1, 0.5), (2, 0.4)], "sasrec <b>": [(1, 0.6), (2, 0.55)]}
    svg = line_chart(series, "Loss & more", "epoch", "loss")
    assert svg.startswith("<svg ") and svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg  # it goes inside a page
    assert 'width="560" height="300"' in svg  # pixels, as the page lays charts out
    assert 'aria-label="Loss &amp; more"' in svg
    assert "sasrec &lt;b&gt;" in svg and "<b>" not in svg  # legend text, escaped
    assert "<script" not in svg
    assert svg == line_chart(series, "Loss & more", "epoch", "loss")  # no date, fixed ids
    assert "no data" in line_chart({}, "Empty", "x", "y")


def test_every_template_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["hllm"]
    files = sorted(p.relative_to(ROOT / "hllm").as_posix()
                   for p in (ROOT / "hllm" / "templates").iterdir() if p.is_file())
    assert files and [f for f in files if not any(fnmatch(f, g) for g in globs)] == []
