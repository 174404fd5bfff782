"""What `make run` prints: a line per step, throttled progress, full logs in files."""

from __future__ import annotations

import io

import pytest

from pipelines.step_log import StepLog

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

CYAN, GREEN, RED, END = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(log: StepLog, clock: Clock, lines: list[tuple[float, str]]) -> None:
    for at, line in lines:
        clock.now = at
        log.write(line + "\n")


def test_a_line_per_step_progress_every_interval_and_the_rest_in_files(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    log = StepLog(tmp_path / "logs", terminal, interval=30, clock=clock)
    feed(log, clock, [
        (0, "12:00:00.001 - INFO - Running pipeline: 'hllm-training'"),
        (0, f"12:00:00.002 - INFO - Executing task {CYAN}'train-hllm'{END}"),
        (1, '    {"inputs": {"parameterValues": {"data": "..."}}}'),  # executor JSON: file only
        (2, "    12:00:02 INFO hllm.progress: embed items: 500/1,683 items (30%), 4.0 items/s, 4 min 56 s left"),
        (20, "    12:00:20 INFO hllm.progress: embed items: 900/1,683 items (53%), 4.0 items/s, 3 min 16 s left"),
        (40, "    12:00:40 INFO hllm.train: epoch 1: loss 6.1 valid R@10 0.1 N@10 0.05"),
        (397, f"12:06:37.000 - INFO - Task {CYAN}'train-hllm'{END} finished with status {GREEN}SUCCESS{END}"),
        (398, "12:06:38.000 - INFO - Task evaluate-model cache hit (key=abc); skipping execution."),
    ])
    log.close()
    said = [line.split("  ", 1)[1] for line in terminal.getvalue().splitlines()]
    assert said == ["train-hllm ...",
                    "train-hllm  embed items: 500/1,683 items (30%), 4.0 items/s, 4 min 56 s left",
                    "train-hllm  epoch 1: loss 6.1 valid R@10 0.1 N@10 0.05",  # 30 s after the first
                    "train-hllm done in 6 min 37 s",
                    "evaluate-model cached"]
    step = (tmp_path / "logs" / "train-hllm.log").read_text()
    assert '"parameterValues"' in step and "900/1,683" in step and "\x1b" not in step
    assert "Running pipeline" in (tmp_path / "logs" / "pipeline.log").read_text()


def test_a_failed_step_names_its_log_and_shows_its_last_lines(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    log = StepLog(tmp_path / "logs", terminal, clock=clock)
    feed(log, clock, [(0, f"x - INFO - Executing task {CYAN}'register-model'{END}")]
         + [(1, f"    line {i}") for i in range(30)]
         + [(2, "    error: http://127.0.0.1:5000: tracking server unreachable"),
            (5, f"x - ERROR - Task {CYAN}'register-model'{END} finished with status {RED}FAILURE{END}")])
    log.close()
    out = terminal.getvalue()
    assert log.failed == ["register-model"]
    assert f"register-model FAILED after 5 s; full log: {tmp_path / 'logs' / 'register-model.log'}" in out
    assert "tracking server unreachable" in out and "line 29" in out and "line 5\n" not in out


def test_verbose_passes_everything_through(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    log = StepLog(tmp_path / "logs", terminal, verbose=True, clock=clock)
    feed(log, clock, [(0, f"x - INFO - Executing task {CYAN}'validate-data'{END}"), (1, "    anything")])
    log.close()
    assert terminal.getvalue() == f"x - INFO - Executing task {CYAN}'validate-data'{END}\n    anything\n"
