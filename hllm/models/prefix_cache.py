"""Fine-tuning the top of a frozen Item LLM without running the frozen part every step.

With `item_llm.trainable: top-k` only the last k transformer layers (and the final norm)
learn. Whatever enters the first trainable layer is then a fixed function of the item's
text, so it is computed once per item and cached (`PrefixStates`); a training step runs
only the k trainable layers on the distinct items of the batch. The learned [ITEM] slot
is placed at the input of the first trainable layer (`ItemLLM` does the same without the
cache, through a hook), because below it nothing could learn to read it anyway, and
because text tokens never attend to it (it comes last), so their cached states stay valid.

In the last layer only the [ITEM] position is read out, so it alone needs a query, its
attention output and its MLP; keys and values are still computed for every token
(`slot_only_layer`). For SmolLM2-135M that is ~21 MFLOP per item instead of ~220 MFLOP
for the full layer on ~31 tokens, which is what makes fine-tuning fit on two CPU cores.
Supported for Llama-style layers (q/k/v/o projections, input and post-attention RMSNorm,
gated MLP) and Gemma 3's (RMSNorm on q/k, norms around attention and MLP); other
architectures run the last layer in full.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hllm.progress import Progress

log = logging.getLogger(__name__)

SLOT_ONLY_TYPES = {"llama", "mistral", "qwen2", "gemma3_text"}


@dataclass
class PrefixStates:
    """Hidden states entering the first trainable layer, for every token of every item.

    states: (total_tokens, D), items laid end to end in item-id order; offsets:
    (num_items + 2,) start of each item's tokens (offsets[i + 1] - offsets[i] = length).
    """

    states: torch.Tensor
    offsets: torch.Tensor

    def lengths(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.offsets[item_ids + 1] - self.offsets[item_ids]

    def gather(self, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, T, D) right-padded states of the items and their (n,) token counts."""
        ids = item_ids.to(self.offsets.device)
        lengths = self.lengths(ids)
        width = int(lengths.max()) if len(ids) else 0
        pos = torch.arange(width, device=ids.device)
        valid = pos[None, :] < lengths[:, None]
        index = torch.where(valid, self.offsets[ids][:, None] + pos[None, :], 0)
        out = self.states[index] * valid[..., None].to(self.states.dtype)
        return out, lengths

    def to(self, device: torch.device) -> PrefixStates:
        return PrefixStates(self.states.to(device), self.offsets.to(device))


@torch.no_grad()
def compute_prefix_states(item_llm, token_ids: Sequence[Sequence[int]], layer: int, *,
                          device: torch.device, progress: bool = False) -> PrefixStates:
    """Run the frozen layers below `layer` once over every item's text (no [ITEM] slot)."""
    from hllm.data.item_text import packed_batch, token_budget_chunks

    was_training = item_llm.training
    item_llm.eval()
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    per_item: list[torch.Tensor | None] = [None] * len(token_ids)
    shown = Progress(len(order), f"item states below layer {layer}", "item", bar=progress)
    embed = item_llm.backbone.get_input_embeddings()
    for chunk in token_budget_chunks([len(token_ids[i]) for i in order], item_llm.cfg.batch_tokens):
        ids = [order[c] for c in chunk]
        # Packed rows with restarting positions, as ItemLLM.encode_all runs them (1.8x
        # faster than padded rows on CPU); transformers keeps the items apart.
        batch = packed_batch([token_ids[i] for i in ids], item_llm.tokenizer.pad_id, False,
                             pack_len=item_llm.cfg.pack_len).to(device)
        out = item_llm.backbone(inputs_embeds=embed(batch.input_ids),
                                position_ids=batch.position_ids, use_cache=False,
                                output_hidden_states=True)
        hidden = out.hidden_states[layer].float().flatten(0, 1).cpu()  # input of layer `layer`
        seg = batch.segment_ids.flatten().cpu()
        real = (seg >= 0).nonzero().squeeze(1)
        grouped = real[torch.argsort(seg[real], stable=True)]  # by item, tokens in order
        for j, chunk_states in enumerate(hidden[grouped].split([len(token_ids[i]) for i in ids])):
            per_item[ids[j]] = chunk_states
        shown.update(len(ids))
    shown.close()
    item_llm.train(was_training)
    lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    offsets = torch.zeros(len(token_ids) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    return PrefixStates(torch.cat(per_item), offsets)


def causal_mask(n: int, width: int, dtype: torch.dtype, device: torch.device,
                window: int | None = None) -> torch.Tensor:
    """(n, 1, width, width) additive causal mask (right padding needs nothing more: a real
    position never sees a later one, and pad positions are never read). `window`: a
    sliding-window layer's span (a query sees the `window` most recent positions)."""
    keep = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    if window is not None:
        keep &= ~torch.ones(width, width, dtype=torch.bool, device=device).tril(-window)
    mask = torch.zeros(width, width, dtype=dtype, device=device)
    mask.masked_fill_(~keep, torch.finfo(dtype).min)
    return mask.expand(n, 1, width, width)


def supports_slot_only(layer: nn.Module, model_type: str) -> bool:
    attn = getattr(layer, "self_attn", None)
    return (model_type in SLOT_ONLY_TYPES and attn is not None
            and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp")))


def _sandwich(layer: nn.Module) -> bool:
    """Gemma 3 style: norms after attention and around the MLP, RMSNorm on q and k."""
    return hasattr(layer, "pre_feedforward_layernorm")


def slot_only_layer(layer: nn.Module, hidden: torch.Tensor, slot: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """A Llama-style decoder layer's output at one position per row: (n, T, D) -> (n, D).

    `slot`: (n,) index of the read-out position; it attends to every position up to and
    including itself (the last `window` of them in a sliding-window layer). cos/sin: (n, T, head_dim) rotary tables of the rows' positions.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    n, width, _ = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    x = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    k = attn.k_proj(x).view(n, width, -1, head_dim).transpose(1, 2)  # (n, kv, T, hd)
    v = attn.v_proj(x).view(n, width, -1, head_dim).transpose(1, 2)
    q = attn.q_proj(x[rows, slot]).view(n, 1, -1, head_dim).transpose(1, 2)  # (n, h, 1, hd)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, slot][:, None], sin[rows, slot][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    groups = q.size(1) // k.size(1)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    keys = torch.arange(width, device=hidden.device)[None, :]
    visible = keys <= slot[:, None]  # (n, T)
    if window is not None:
        visible &= keys > slot[:, None] - window
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :],
                                         scale=getattr(attn, "scaling", 1 / math.sqrt(head_dim)))
    attended = attn.o_proj(out.transpose(1, 2).reshape(n, -1))
    if _sandwich(layer):
        h = hidden[rows, slot] + layer.post_attention_layernorm(attended)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    h = hidden[rows, slot] + attended
    return h + layer.mlp(layer.post_attention_layernorm(h))
