"""HLLM with a frozen Item LLM: the embedding cache is computed once and standardized."""

from __future__ import annotations

import os

import pytest
import torch

from hllm import storage
from hllm.config import load_config
from hllm.distributed import Dist
from hllm.item_cache import load_or_compute_item_cache
from hllm.models.hllm import HLLM
from hllm.train import load_split, saved_state_dict

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def frozen_cfg(**extra):
    return load_config("cpu-tiny", None, {"item_llm.trainable": "frozen", **extra})


def test_cache_is_computed_once_and_reused(toy_data):
    cfg = frozen_cfg()
    split = load_split(str(toy_data), cfg)
    torch.manual_seed(cfg.train.seed)
    first = HLLM(cfg, split.item_text)
    load_or_compute_item_cache(first, cfg, torch.device("cpu"), Dist(), progress=False)
    files = list((storage.cache_root() / "item-embeddings").iterdir())
    assert len(files) == 1
    stamp = os.stat(files[0]).st_mtime_ns
    torch.manual_seed(cfg.train.seed)
    second = HLLM(cfg, split.item_text)
    load_or_compute_item_cache(second, cfg, torch.device("cpu"), Dist(), progress=False)
    assert os.stat(files[0]).st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(first.item_cache, second.item_cache)
    # standardized per dimension over the real items (row 0 is padding)
    items = first.item_cache[1:]
    assert items.mean(0).abs().max() < 1e-4
    assert (items.std(0) - 1).abs().max() < 1e-3
    # A different prompt is a different cache entry.
    other = frozen_cfg(**{"item_llm.prompt": "Item: "})
    torch.manual_seed(other.train.seed)
    third = HLLM(other, split.item_text)
    load_or_compute_item_cache(third, other, torch.device("cpu"), Dist(), progress=False)
    assert len(list((storage.cache_root() / "item-embeddings").iterdir())) == 2


def test_frozen_pretrained_backbone_is_not_saved(toy_data, tmp_path):
    # A tiny pretrained directory stands in for SmolLM2: frozen + pretrained -> re-read from path.
    from hllm.models.pretrained import load_backbone

    cfg = frozen_cfg()
    load_backbone(None, "random", cfg.item_llm.arch).save_pretrained(tmp_path / "item")
    cfg = frozen_cfg(**{"item_llm.path": str(tmp_path / "item"), "item_llm.init": "pretrained",
                        "item_llm.tokenizer": "bytes"})
    model = HLLM(cfg, load_split(str(toy_data), cfg).item_text)
    keys = saved_state_dict(model, cfg).keys()
    assert not any(k.startswith("item_llm.backbone.") for k in keys)
    assert any(k.startswith("item_proj.") for k in keys) and "logit_scale" in keys
