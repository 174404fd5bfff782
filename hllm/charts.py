"""Training and metric charts for the HTML reports, drawn by matplotlib as inline SVG.

The reports are read on air-gapped clusters and in MLflow's artifact viewer, so a chart
must be part of the page: SVG text, no script, no fetched file. matplotlib draws it (axes,
ticks, legend) instead of hand-placed SVG elements; the output is made reproducible (no
date in the metadata, fixed element ids) so the same run renders the same page.
"""

from __future__ import annotations

import html
import io
from typing import Sequence

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
DPI = 72  # figure inches x DPI = the SVG's pixel size


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str,
               y_label: str, width: int = 560, height: int = 300,
               x_ticks: Sequence[float] | None = None) -> str:
    """One line per series, markers while a series has at most 50 points; `<svg ...>` text
    (or a one-line note when there is nothing to draw)."""
    # Imported here: matplotlib costs half a second to import, and only the HLLM report
    # draws charts. A bare Figure (no pyplot) needs no display and no global backend.
    import matplotlib
    from matplotlib.figure import Figure

    if not any(series.values()):
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*sorted(points)) if points else ((), ())
        ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.6, label=name,
                marker="o" if len(points) <= 50 else None, markersize=3)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if x_ticks is not None:
        ax.set_xticks(list(x_ticks))
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.legend(fontsize=9, frameon=False, loc="best")
    fig.tight_layout()
    buffer = io.StringIO()
    # Text stays text (searchable, escaped by matplotlib); ids are salted by the title, not
    # random, and the metadata holds no date: the same run renders the same page.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig.savefig(buffer, format="svg",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    svg = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: it goes inline
    # matplotlib sizes the SVG in points (4/3 px each); in pixels two charts sit side by
    # side on a desktop-wide page, and the viewBox scales the drawing to fit.
    svg = svg.replace(f'width="{width}pt" height="{height}pt"',
                      f'width="{width}" height="{height}"', 1)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(title)}" ', 1)
