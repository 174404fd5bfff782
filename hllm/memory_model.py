"""Per-rank peak GPU memory of an HLLM training step, from the config alone.

FSDP full shard with bf16 parameters and activation checkpointing on every decoder
layer (the GPU presets' setting), or plain DDP under autocast. Sizing a GPU node pool
or choosing `train.batch_size` for hllm-1b / hllm-7b needs the number before any GPU is
booked; bench/train_step_mfu.py prints the derivation term by term and checks it
against measured peaks (`--calibrate`, `--calibrate-cpu`).

    states      = (16 B x trainable params + 4 B x frozen params) / N
    gathered    = 2 B x (2 x layer params) + 2 B x largest tower unit + 6 B x layer params
    checkpoints = 2 B x (L_item x T_item x d_item + L_user x T_user x d_user)
    layer       = max over towers of T x (26 d + 8 i) B + T_item x pack_len B
    T_item = (batch x (history + 1) + negatives / N) x item_len, T_user = batch x history
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModel, LlamaConfig

from hllm.config import Config


@dataclass
class MemoryInputs:
    label: str
    ranks: int
    fsdp: bool
    p_trainable: int  # parameters with gradients and Adam states
    p_frozen: int  # parameters without (the User LLM's unused word embeddings)
    p_layer: int  # largest transformer layer
    p_unit: int  # largest non-layer FSDP unit (a tower's embeddings + norm)
    item_layers: int
    item_hidden: int
    item_inter: int
    user_layers: int
    user_hidden: int
    user_inter: int
    batch: int
    history: int
    negatives: int
    item_len: int  # tokens per item, [ITEM] slot included
    pack_len: int


def memory_inputs(cfg: Config, ranks: int, fsdp: bool = True, item_len: int | None = None,
                  label: str | None = None) -> MemoryInputs:
    """Parameter counts from the preset's shapes, built on the meta device (no memory)."""
    counts = {}
    for tower in ("item_llm", "user_llm"):
        arch = dict(getattr(cfg, tower).arch)
        arch.pop("model_type", None)
        with torch.device("meta"):
            model = AutoModel.from_config(LlamaConfig(**arch))
        layer = max(sum(p.numel() for p in m.parameters()) for m in model.layers)
        embed = model.get_input_embeddings().weight.numel()
        total = sum(p.numel() for p in model.parameters())
        counts[tower] = (total, layer, embed)
    (it_total, it_layer, _), (us_total, us_layer, us_embed) = counts["item_llm"], counts["user_llm"]
    ia, ua = cfg.item_llm.arch, cfg.user_llm.arch
    return MemoryInputs(
        label=label or cfg.preset, ranks=ranks, fsdp=fsdp,
        p_trainable=it_total + us_total - us_embed + ia["hidden_size"],  # + the [ITEM] vector
        p_frozen=us_embed, p_layer=max(it_layer, us_layer),
        p_unit=max(it_total - ia["num_hidden_layers"] * it_layer, us_total - ua["num_hidden_layers"] * us_layer),
        item_layers=ia["num_hidden_layers"], item_hidden=ia["hidden_size"],
        item_inter=ia["intermediate_size"], user_layers=ua["num_hidden_layers"],
        user_hidden=ua["hidden_size"], user_inter=ua["intermediate_size"],
        batch=cfg.train.batch_size, history=cfg.data.max_history,
        negatives=cfg.train.num_negatives,
        item_len=(item_len or cfg.item_llm.max_text_len) + 1, pack_len=cfg.item_llm.pack_len)


def derive_memory(m: MemoryInputs, t_item: float | None = None,
                  t_user: float | None = None) -> dict[str, float]:
    """Per-rank peak bytes, by component (see print_derivation for the formula).

    t_item, t_user: token counts to use instead of the formula's upper bounds."""
    n = m.ranks
    items = m.batch * (m.history + 1) + m.negatives / n  # distinct items per rank, at most
    t_item = items * m.item_len if t_item is None else t_item
    t_user = m.batch * m.history if t_user is None else t_user
    res = 2 if m.fsdp else 4  # residual stream: bf16 under FSDP bf16, fp32 under plain autocast
    out = {}
    if m.fsdp:
        out["states"] = (16 * m.p_trainable + 4 * m.p_frozen) / n
        out["gathered"] = 2 * (2 * m.p_layer) + 2 * m.p_unit + 6 * m.p_layer
    else:
        out["states"] = 16 * m.p_trainable + 4 * m.p_frozen
        out["gathered"] = 2 * m.p_trainable  # autocast's cached bf16 copies of the weights
    out["checkpoints"] = res * (m.item_layers * t_item * m.item_hidden
                                + m.user_layers * t_user * m.user_hidden)
    out["layer"] = max(t_item * (26 * m.item_hidden + 8 * m.item_inter),
                       t_user * (26 * m.user_hidden + 8 * m.user_inter)) + t_item * m.pack_len
    out["total"] = sum(out.values())
    out["tokens_item"], out["tokens_user"] = t_item, t_user
    return out
