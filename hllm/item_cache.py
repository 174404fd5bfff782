"""The item-embedding cache: a frozen Item LLM embeds every item once, ever.

Embeddings are stored under $HLLM_CACHE/item-embeddings/<key>.safetensors, where the
key hashes everything that changes them (model location and init, pooling, prompt,
the tokenized texts, and the seed for randomly initialised models). A second run on
the same data and Item LLM loads the table instead of running the LLM again.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from safetensors.torch import load_file, save_file

from hllm import storage
from hllm.config import Config
from hllm.distributed import Dist, barrier
from hllm.models.hllm import HLLM

log = logging.getLogger(__name__)


def cache_key(model: HLLM, cfg: Config) -> str:
    c = cfg.item_llm
    h = hashlib.sha256(json.dumps({
        "path": c.path, "init": c.init, "arch": c.arch, "pooling": c.pooling,
        "tokenizer": c.tokenizer, "seed": cfg.train.seed if c.init == "random" or c.path is None else None,
    }, sort_keys=True).encode())
    for ids in model.item_tokens:
        h.update(len(ids).to_bytes(4, "little"))
        h.update(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:24]


def load_or_compute_item_cache(model: HLLM, cfg: Config, device: torch.device, dist: Dist,
                               progress: bool = True) -> None:
    path = storage.cache_root() / "item-embeddings" / f"{cache_key(model, cfg)}.safetensors"
    if not path.exists() and dist.is_main:
        log.info("embedding %d items with the frozen Item LLM (cached at %s)",
                 len(model.item_tokens), path)
        raw = model.embed_all_items(device, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": raw.cpu().contiguous()}, str(tmp))
        tmp.replace(path)
    barrier()
    model.set_item_cache(load_file(str(path))["embeddings"].to(device))
    log.info("item embeddings loaded from cache %s", path.name)


def load_or_compute_prefix_states(model: HLLM, cfg: Config, device: torch.device, dist: Dist,
                                  progress: bool = True) -> None:
    """Top-k fine-tuning: cache what enters the first trainable layer, once per item.

    Keyed like the embedding table plus k; $HLLM_CACHE/item-prefix/<key>-top<k>.safetensors.
    """
    from hllm.models.prefix_cache import PrefixStates, compute_prefix_states

    k = cfg.item_llm.top_k_layers
    path = storage.cache_root() / "item-prefix" / f"{cache_key(model, cfg)}-top{k}.safetensors"
    layer = model.item_llm.backbone.config.num_hidden_layers - k
    if not path.exists() and dist.is_main:
        log.info("running the %d frozen Item LLM layers once over %d items (cached at %s)",
                 layer, len(model.item_tokens), path)
        prefix = compute_prefix_states(model.item_llm, model.item_tokens, layer, device=device,
                                       progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"states": prefix.states.contiguous(), "offsets": prefix.offsets}, str(tmp))
        tmp.replace(path)
    barrier()
    saved = load_file(str(path))
    model.set_prefix_states(PrefixStates(saved["states"], saved["offsets"]).to(device))
    log.info("Item LLM layer-%d inputs loaded from cache %s (%.0f MB)", layer, path.name,
             saved["states"].numel() * 4 / 2**20)
