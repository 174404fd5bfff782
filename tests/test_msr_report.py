"""The LLM4MSR run report from a hand-made run directory: a reviewer's order, every number
from the run's files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def _model(directory: Path, name: str, auc: float, history: list[tuple[float, float]]) -> None:
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({
        "model": name, "auc": auc, "logloss": 0.6, "auc/family": auc - 0.01, "auc/action": auc + 0.01,
        "logloss/family": 0.61, "logloss/action": 0.59, "scenarios": ["family", "action"],
        "best_epoch": 1, "history": [{"epoch": i, "train_loss": loss, "valid_auc": v}
                                     for i, (loss, v) in enumerate(history)]}))


def test_msr_report_opens_with_the_verdict_then_comparisons_metrics_and_epochs(tmp_path):
    from hllm.msr.report import write_report

    run = tmp_path / "run"
    _model(run / "train_backbone", "star", 0.70, [(0.66, 0.69), (0.64, 0.70), (0.63, 0.69)])
    _model(run / "train_llm4msr", "star+llm4msr", 0.71, [(0.65, 0.70), (0.62, 0.715), (0.61, 0.71)])
    (run / "gate").mkdir()
    (run / "gate" / "gate.json").write_text(json.dumps({
        "decision": "promoted", "model": "llm4msr", "challenger": "1", "champion": None,
        "checks": [{"name": "absolute auc", "passed": True, "detail": "first model: auc 0.71",
                    "against": "floor"},
                   {"name": "auc vs backbone", "passed": True, "detail": "auc +0.01 <i>",
                    "against": "baseline"}]}))
    summary = write_report(run, pipeline_run_id="p-7")
    page = (run / "report.html").read_text()
    assert summary["gate"]["decision"] == "promoted"
    order = [page.index(s) for s in (
        "<b>PROMOTED</b>: llm4msr version 1 is now champion", "No champion yet",
        "first model: auc 0.71", "Against the backbone alone", "Test metrics per scenario",
        "<th>star+llm4msr valid AUC</th>")]
    assert order == sorted(order)
    assert "auc +0.01 &lt;i&gt;" in page  # gate text is escaped
    assert '<td class="num">0.7150</td>' in page  # LLM4MSR's validation AUC of epoch 1
    assert "Weights evaluated: star epoch 1, star+llm4msr epoch 1" in page
    assert "<script" not in page and not re.search(r"""(src|href)=["']?https?:""", page)


def test_a_run_without_a_gate_says_so_first(tmp_path):
    from hllm.msr.report import write_report

    run = tmp_path / "run"
    (run / "validate").mkdir(parents=True)
    (run / "validate" / "validation.json").write_text(json.dumps(
        {"success": False, "data": "toy", "rows": {}, "checks": [{"success": False, "table": "t",
                                                                  "expectation": "e"}]}))
    write_report(run)
    page = (run / "report.html").read_text()
    assert page.index("No gate decision</b>: validation refused the data") < page.index("Data validation")
