"""The micro-batcher on its own: answers go to the request that asked, batches form only
under load, a swap never mixes versions in one call, a failing call fails only its batch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from hllm.online.batching import MicroBatcher

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


class EchoPredictor:
    """Ranks a history's items backwards (answers are checkable); records each call's size."""

    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def recommend(self, histories: list[list[str]], ks: list[int]) -> list[tuple[list, list]]:
        with self.lock:
            self.calls.append(len(histories))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model crashed")
        return [(list(reversed(h))[:k], [1.0] * min(len(h), k)) for h, k in zip(histories, ks)]


@dataclass
class Model:
    predictor: EchoPredictor
    version: str = "1"


def test_idle_requests_are_scored_alone_at_once():
    model = Model(EchoPredictor(delay=0))
    batcher = MicroBatcher(workers=2)
    for i in range(5):
        assert batcher.submit(model, [f"a{i}", f"b{i}"], 1).result(timeout=5) == ([f"b{i}"], [1.0])
    batcher.stop()
    assert model.predictor.calls == [1] * 5


def test_concurrent_requests_share_calls_and_each_gets_its_own_answer():
    model = Model(EchoPredictor(delay=0.02))
    batcher = MicroBatcher(workers=2, max_batch=8)
    futures = {i: batcher.submit(model, [str(i), str(i + 1000)], 2) for i in range(40)}
    for i, future in futures.items():
        assert future.result(timeout=10) == ([str(i + 1000), str(i)], [1.0, 1.0])
    batcher.stop()
    assert sum(model.predictor.calls) == 40
    assert len(model.predictor.calls) <= 12 and max(model.predictor.calls) <= 8
    assert batcher.requests == 40 and batcher.batches == len(model.predictor.calls)


def test_two_versions_waiting_together_are_never_scored_in_one_call():
    old, new = Model(EchoPredictor(delay=0.02), "1"), Model(EchoPredictor(delay=0.02), "2")
    batcher = MicroBatcher(workers=1, max_batch=16)
    blocker = batcher.submit(old, ["x"], 1)  # keeps the thread busy while the rest queue up
    futures = [batcher.submit(old if i % 2 else new, [str(i)], 1) for i in range(10)]
    blocker.result(timeout=5)
    assert [f.result(timeout=5)[0] for f in futures] == [[str(i)] for i in range(10)]
    batcher.stop()
    assert sum(old.predictor.calls) == 6 and sum(new.predictor.calls) == 5
    assert len(new.predictor.calls) == 1  # the five queued for version 2 in one call


def test_a_failing_call_fails_its_requests_and_the_next_ones_still_work():
    bad, good = Model(EchoPredictor(fail=True)), Model(EchoPredictor())
    batcher = MicroBatcher(workers=1)
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher.submit(bad, ["x"], 1).result(timeout=5)
    assert batcher.submit(good, ["y"], 1).result(timeout=5) == (["y"], [1.0])
    batcher.stop()
