"""FSDP on CPU: 2 gloo processes against one process.

N ranks with batch B see the same sequences and negatives as one process with batch N*B
(see hllm.train), so the losses, the weights and the metrics must agree up to the order
of float additions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from servers import free_port

from hllm.config import load_config
from hllm.errors import ConfigError
from hllm.train import evaluate_run, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50", "ndcg@200", "mrr")


def _common(data: Path, *sets: str) -> list[str]:
    args = ["--preset", "cpu-tiny", "--data", str(data), "--model", "hllm",
            "--set", "train.num_negatives=32", "--set", "train.epochs=2",
            "--set", "train.eval_batch_size=16"]
    for s in sets:
        args += ["--set", s]
    return args


def _single(args: list[str], out: Path, batch: int) -> None:
    subprocess.run([sys.executable, "-m", "hllm.cli", "train", *args, "--out", str(out),
                    "--set", f"train.batch_size={batch}"], check=True, env=ENV, cwd=ROOT)


def _two_ranks(args: list[str], out: Path, batch: int, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-port", str(free_port()), "-m", "hllm.cli", "train", *args,
                    "--out", str(out), "--set", f"train.batch_size={batch}", *extra],
                   check=True, env=ENV, cwd=ROOT)


def _log(run: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "step" in r], [r for r in records if "train_loss" in r]


def _assert_same_training(single: Path, other: Path, weight_atol: float = 5e-5) -> None:
    steps_a, epochs_a = _log(single)
    steps_b, epochs_b = _log(other)
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b] == [10, 20]
    for a, b in zip(steps_a, steps_b):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]
    assert len(epochs_a) == len(epochs_b) == 2
    for a, b in zip(epochs_a, epochs_b):  # the mean of every step's loss in the epoch
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["valid_ndcg@10"] == pytest.approx(a["valid_ndcg@10"], abs=1e-6)
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((other / "metrics.json").read_text())
    assert b["world_size"] == 2
    for key in METRICS:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa = load_file(str(single / "checkpoint" / "model.safetensors"))
    wb = load_file(str(other / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(wa[k].shape == wb[k].shape for k in wa)  # unsharded, the model's own shapes
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= weight_atol, worst


def test_fsdp_two_gloo_processes_match_one_process(toy_data, tmp_path):
    """2 ranks x batch 2 under FSDP full shard vs 1 process x batch 4, 20 AdamW steps.

    Tolerances: rel 1e-4 on every logged loss (steps 10 and 20, and each epoch's mean
    loss, which covers every step); abs 1e-6 on validation and test metrics; abs 5e-5 on
    every weight of the final checkpoint (as the DDP weight test). FSDP on CPU keeps fp32
    parameters and fp32 gradient reduction, so only the order of float additions differs
    (reduce-scatter vs a single backward). DDP is held to the same weights by
    tests/test_train.py::test_ddp_two_gloo_processes_match_one_process.
    """
    args = _common(toy_data)
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    _single(args, single, batch=4)
    _two_ranks(args, fsdp, 2, "--set", "train.strategy=fsdp")
    _assert_same_training(single, fsdp)
    # best/ is the unsharded file the downstream tools read: evaluation scores it again.
    again = evaluate_run(fsdp, progress=False)
    trained = json.loads((fsdp / "metrics.json").read_text())
    for key in METRICS:
        assert again[key] == pytest.approx(trained[key], abs=1e-9), key


def test_fsdp_resume_with_checkpointing_and_accumulation(toy_data, tmp_path):
    """An FSDP run with activation checkpointing and gradient accumulation, interrupted
    after 3 optimizer steps and resumed from its unsharded checkpoint (weights plus the
    name-keyed optimizer state), matches one uninterrupted process: same tolerances as
    above. A single process refuses to resume the FSDP checkpoint with a clear error."""
    args = _common(toy_data, "item_llm.gradient_checkpointing=true",
                   "user_llm.gradient_checkpointing=true", "train.grad_accum=2",
                   "train.batch_size=1")
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    _single(args, single, batch=2)
    _two_ranks(args, fsdp, 1, "--set", "train.strategy=fsdp", "--set", "train.max_steps=3")
    state = json.loads((fsdp / "checkpoint" / "state.json").read_text())
    assert state["global_step"] == 3
    _two_ranks(args, fsdp, 1, "--set", "train.strategy=fsdp", "--resume")
    _assert_same_training(single, fsdp)
    cfg = load_config("cpu-tiny", None, {"train.strategy": "fsdp", "train.epochs": 3,
                                         "train.num_negatives": 32})
    with pytest.raises(ConfigError, match="written by an FSDP run"):
        train(cfg, "hllm", str(toy_data), fsdp, resume=True, progress=False)
