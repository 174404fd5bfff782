"""Progress off a terminal: a log line at a steady interval with done/total, rate and time left."""

from __future__ import annotations

import logging

import pytest

from hllm.progress import Progress, duration

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_at_the_interval_with_rate_and_time_left(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="hllm.progress"):
        with Progress(1000, "knowledge", "prompt", bar=False, interval=30, clock=clock) as p:
            for _ in range(100):  # 10 prompts every 5 s: 2 prompts/s
                clock.now += 5
                p.update(10)
    lines = [r.getMessage() for r in caplog.records]
    # every 30 s (6 updates), never at 100%, then one closing line
    assert len(lines) == 500 // 30 + 1
    assert lines[0] == "knowledge: 60/1,000 prompts (6%), 2.0 prompts/s, 7 min 50 s left"
    assert lines[-1] == "knowledge: 1,000 prompts in 8 min 20 s"


def test_short_work_and_a_terminal_bar_write_no_log_lines(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="hllm.progress"):
        with Progress(10, "items", bar=False, interval=30, clock=clock) as p:
            clock.now += 3
            p.update(10)
        with Progress(10, "items", bar=True, interval=0, clock=clock) as p:
            p.update(10)
    assert caplog.records == []


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (4.4, 236, 3725)] == ["4 s", "3 min 56 s", "1 h 02 min"]


def test_a_resumed_count_measures_the_rate_from_where_it_started(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="hllm.progress"):
        p = Progress(100, "epoch 3/40", "step", bar=False, initial=40, interval=10, clock=clock)
        clock.now = 10
        p.update(20)
    assert caplog.records[0].getMessage() == "epoch 3/40: 60/100 steps (60%), 2.0 steps/s, 20 s left"


def test_units_read_as_english_plurals(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="hllm.progress"):
        with Progress(10, "epoch 0", "batch", bar=False, interval=1, clock=clock) as p:
            clock.now += 2
            p.update(4)
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 0: 4/10 batches (40%), 2.0 batches/s, 3 s left", "epoch 0: 4 batches in 2 s"]
