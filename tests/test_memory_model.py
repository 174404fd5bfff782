"""hllm.memory_model: the derived per-rank peak memory the README's FSDP table quotes.

The README's uncalibrated terms at N=8 are reproduced from the presets (parameter counts
from meta-device models, no memory), and the formula's structure is checked where it
must hold whatever the preset: optimizer states shard as 1/N, activations do not.
"""

from __future__ import annotations

import dataclasses

import pytest

from hllm.config import load_config
from hllm.memory_model import derive_memory, memory_inputs

pytestmark = pytest.mark.fast
GIB = 2**30


@pytest.mark.parametrize("preset, trainable, terms", [
    ("hllm-1b", 2.00e9, {"states": 3.8, "gathered": 0.5, "checkpoints": 10.2, "layer": 11.2}),
    ("hllm-7b", 13.08e9, {"states": 24.4, "gathered": 2.1, "checkpoints": 16.9, "layer": 12.5}),
])
def test_the_readme_terms_at_eight_ranks(preset, trainable, terms):
    m = memory_inputs(load_config(preset), 8, item_len=256)
    assert m.p_trainable == pytest.approx(trainable, rel=0.005)
    derived = derive_memory(m)
    assert {k: round(derived[k] / GIB, 1) for k in terms} == terms


def test_states_shard_and_activations_do_not():
    one = memory_inputs(load_config("hllm-1b"), 1)
    eight = dataclasses.replace(one, ranks=8)
    a, b = derive_memory(one), derive_memory(eight)
    assert b["states"] * 8 == pytest.approx(a["states"])
    # Fewer negatives per rank is the only thing that shrinks the item tokens.
    items_per_rank = one.batch * (one.history + 1) + one.negatives / 8
    assert b["tokens_item"] == pytest.approx(items_per_rank * one.item_len)
    assert b["tokens_user"] == a["tokens_user"] == one.batch * one.history
    assert b["total"] == pytest.approx(sum(b[k] for k in ("states", "gathered", "checkpoints", "layer")))


def test_without_fsdp_every_rank_holds_everything_in_fp32_activations():
    m = dataclasses.replace(memory_inputs(load_config("hllm-1b"), 4), fsdp=False)
    fsdp = derive_memory(dataclasses.replace(m, fsdp=True))
    ddp = derive_memory(m)
    assert ddp["states"] == 16 * m.p_trainable + 4 * m.p_frozen
    assert ddp["gathered"] == 2 * m.p_trainable
    assert ddp["checkpoints"] == pytest.approx(2 * fsdp["checkpoints"])  # fp32, not bf16
