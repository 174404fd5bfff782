"""The first ten losses of a cpu-tiny run, pinned: any change to what training computes
(data order, negatives, initialisation, the loss, the optimizer) shows up here as a
number, even when every behavioural test still passes.

Recorded on a 2-core x86 CPU in fp32 with deterministic kernels. The tolerance (1e-4
relative) covers kernel differences between CPUs; a real change moves a loss by far
more. When a change is meant to alter training, re-record with

    python -m pytest tests/test_recorded_loss.py --record-losses

and say why in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import synthetic_rows, write_recbole
from hllm.config import load_config
from hllm.train import train

RECORDED = {
    "sasrec": [5.7942, 6.0819, 6.7533, 6.0339, 5.4883, 5.9071, 4.6567, 4.5891, 5.1643, 4.8556],
    "hllm": [0.7183, 1.4678, 2.7035, 3.1624, 3.2191, 3.0261, 3.3059, 3.0283, 3.1137, 3.2533],
}
STEPS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    inter, items = synthetic_rows(n_users=120)
    return write_recbole(tmp_path_factory.mktemp("recorded") / "toy", inter, items)


def first_losses(model: str, data: Path, out: Path) -> list[float]:
    cfg = load_config("cpu-tiny", None, {
        "train.batch_size": 8, "train.num_negatives": 32, "train.eval_batch_size": 64,
        "train.log_every": 1, "train.max_steps": STEPS, "train.deterministic": "on"})
    train(cfg, model, str(data), out, progress=False)
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if "step" in e]


@pytest.mark.parametrize("model", sorted(RECORDED))
def test_the_first_losses_are_the_recorded_ones(model, data, tmp_path, request):
    losses = first_losses(model, data, tmp_path / model)
    if request.config.getoption("--record-losses"):
        print(f'\n    "{model}": {[round(x, 4) for x in losses]},')
        return
    assert len(losses) == STEPS
    assert losses == pytest.approx(RECORDED[model], rel=1e-4, abs=1e-4)
