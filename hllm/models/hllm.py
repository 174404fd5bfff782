"""HLLM: Item LLM (text -> item vector) + User LLM (item vectors -> next item vector).

Item vectors are computed once per distinct item in a batch. When the Item LLM is
frozen, every item is embedded once at start-up and the table is reused (the
embedding cache); a trainable projection then adapts the frozen vectors.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from hllm.config import Config
from hllm.errors import ConfigError
from hllm.models.base import SequentialRecommender
from hllm.models.item_llm import ItemLLM
from hllm.models.prefix_cache import PrefixStates
from hllm.models.pretrained import decoder_layers
from hllm.models.user_llm import UserLLM

log = logging.getLogger(__name__)


class HLLM(SequentialRecommender):
    def __init__(self, cfg: Config, item_texts: Sequence[dict[str, str]]):
        super().__init__(cfg.train.logit_scale_init, cfg.train.logit_scale_max)
        item_attn, user_attn = attention_implementations(cfg)
        self.item_llm = ItemLLM(cfg.item_llm, attn_implementation=item_attn)
        self.user_llm = UserLLM(cfg.user_llm, attn_implementation=user_attn)
        self.item_tokens = self.item_llm.tokenize(item_texts)  # index-aligned with item ids
        d_item, d_user = self.item_llm.hidden_size, self.user_llm.hidden_size
        mode = cfg.user_llm.item_proj
        if mode not in ("auto", "linear", "mlp", "none"):
            raise ConfigError(f"user_llm.item_proj must be auto, linear, mlp or none, got {mode!r}")
        if mode == "none" and d_item != d_user:
            raise ConfigError(f"user_llm.item_proj=none needs equal widths, but the Item LLM has "
                              f"{d_item} and the User LLM {d_user}; use item_proj: linear")
        want_proj = mode in ("linear", "mlp") or (
            mode == "auto" and (d_item != d_user or self.item_llm.frozen))
        if mode == "mlp":  # more capacity to adapt a frozen Item LLM's vectors
            self.item_proj: nn.Module = nn.Sequential(
                nn.Linear(d_item, 2 * d_user), nn.GELU(), nn.Linear(2 * d_user, d_user))
        else:
            self.item_proj = nn.Linear(d_item, d_user) if want_proj else nn.Identity()
        self.input_dropout = nn.Dropout(cfg.user_llm.input_dropout)
        self.standardize = cfg.item_llm.standardize
        # Filled by `set_item_cache` when the Item LLM is frozen; not a parameter.
        self.register_buffer("item_cache", torch.empty(0), persistent=False)
        # Filled by `set_prefix_states` for top-k fine-tuning (hllm.models.prefix_cache).
        self.prefix: PrefixStates | None = None

    def embed_all_items(self, device: torch.device, progress: bool | None = None) -> torch.Tensor:
        """(num_items + 1, D_item) raw Item LLM embeddings of every item, no grad."""
        return self.item_llm.encode_all(self.item_tokens, device=device, progress=progress)

    def set_item_cache(self, raw: torch.Tensor) -> None:
        """Use a table of frozen embeddings (the HLLM embedding cache) instead of the Item LLM.

        LLM hidden states are strongly anisotropic (on ml-100k, SmolLM2's mean-pooled item
        vectors have a mean pairwise cosine of 0.987): a few huge dimensions dominate. With
        `item_llm.standardize`, each dimension is centred and scaled over all items, so the
        trainable projection sees what distinguishes items rather than what they share.
        """
        if self.standardize:
            items = raw[1:]
            raw = (raw - items.mean(0)) / (items.std(0) + 1e-6)
        self.item_cache = raw

    def set_prefix_states(self, prefix: PrefixStates) -> None:
        """Run only the trainable top layers from now on, from these cached inputs."""
        if self.item_llm.cfg.trainable != "top-k":
            raise ConfigError("cached prefix states need item_llm.trainable: top-k")
        self.prefix = prefix

    def raw_item_embeddings(self, item_ids: torch.Tensor) -> torch.Tensor:
        if self.item_cache.numel():
            return self.item_cache[item_ids]
        if self.prefix is not None:
            return self.item_llm.forward_from_prefix(*self.prefix.gather(item_ids))
        if self.item_llm.frozen:
            log.warning("frozen Item LLM without a cache: embedding items on the fly")
        ids = item_ids.tolist()
        batch = self.item_llm.make_batch([self.item_tokens[i] for i in ids])
        return self.item_llm(batch.to(item_ids.device))

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.item_proj(self.raw_item_embeddings(item_ids))

    def user_states(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Dropout on the sequence input only (as SASRec does), never on the targets.
        return self.user_llm(self.input_dropout(item_vecs), mask)

    def transformer_layers(self) -> list[nn.Module]:
        return [*decoder_layers(self.item_llm.backbone, "train.compile / train.strategy=fsdp"),
                *decoder_layers(self.user_llm.backbone, "train.compile / train.strategy=fsdp")]

    def fsdp_units(self) -> list[nn.Module]:
        # Children first: every transformer layer, then each tower (embeddings, final norm,
        # the [ITEM] vector), then the projection; the root keeps only the logit scale.
        units = [*self.transformer_layers(), self.item_llm, self.user_llm]
        if any(True for _ in self.item_proj.parameters()):
            units.append(self.item_proj)
        return units

    @torch.no_grad()
    def all_item_vectors(self, num_items: int, device: torch.device) -> torch.Tensor:
        if self.item_cache.numel():
            raw = self.item_cache
        elif self.prefix is not None:
            ids = torch.arange(num_items + 1, device=device)
            raw = torch.cat([self.raw_item_embeddings(chunk) for chunk in ids.split(256)])
        else:
            raw = self.item_llm.encode_all(self.item_tokens, device=device).to(device)
        return torch.cat([self.item_proj(chunk) for chunk in raw.split(4096)])


ATTN_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")


def attention_implementations(cfg: Config) -> tuple[str, str]:
    """(Item LLM, User LLM) attention kernels for `train.attn_implementation`.

    auto: SDPA everywhere, except varlen flash attention for a packed causal Item LLM when
    flash-attn is importable and training runs in bf16 on CUDA (flash has no fp32 kernels).
    """
    choice = cfg.train.attn_implementation
    if choice not in ATTN_CHOICES:
        raise ConfigError(f"train.attn_implementation must be one of {', '.join(ATTN_CHOICES)}, "
                          f"got {choice!r}")
    if choice != "auto":
        return choice, choice
    bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return ("flash-if-packed" if bf16 else "sdpa"), "sdpa"
