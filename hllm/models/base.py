"""What HLLM and SASRec share: an item tower, a causal user tower, one loss, one scorer.

Both models are "embed items, run a causal sequence model, score the next item by
cosine against item vectors"; they differ only in how an item id becomes a vector
(text through an LLM vs an id embedding) and in the sequence model. Training and
evaluation code therefore talk to this interface only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from hllm.errors import ConfigError
from hllm.models.loss import infonce


class SequentialRecommender(nn.Module):
    def __init__(self, logit_scale_init: float = 1 / 0.07, logit_scale_max: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = logit_scale_max

    # Subclasses implement these two.
    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(n,) item ids -> (n, D) vectors in the space the user tower reads and predicts."""
        raise NotImplementedError

    def user_states(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) right-padded item vectors, (B, L) mask -> (B, L) predictions of the next item."""
        raise NotImplementedError

    def all_item_vectors(self, num_items: int, device: torch.device) -> torch.Tensor:
        """(num_items + 1, D) vectors for every item (row 0: padding), computed once per eval."""
        ids = torch.arange(num_items + 1, device=device)
        return torch.cat([self.item_vectors(chunk) for chunk in ids.split(4096)])

    # Methods that read parameters outside `forward` (evaluation); FSDP gathers the
    # root's shards around them as it does around `forward`.
    fsdp_forward_methods: tuple[str, ...] = ("all_item_vectors",)

    def transformer_layers(self) -> list[nn.Module]:
        """The transformer blocks (what train.compile compiles one by one)."""
        return []

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules sharded as their own FSDP units, children before parents."""
        raise ConfigError(f"train.strategy=fsdp shards the HLLM towers; {type(self).__name__} "
                          "is small enough to train with train.strategy=ddp")

    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) in [1, logit_scale_max], as HLLM does before every step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(self.logit_scale_max))

    def forward(self, seqs: torch.Tensor, mask: torch.Tensor, negative_ids: torch.Tensor,
             gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
             threshold: float = 0.99) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """InfoNCE over every position of every sequence.

        seqs: (B, L+1) item ids, right-padded with 0; mask: (B, L+1) True on real items;
        negative_ids: (m,) this rank's share of the negative pool; `gather` all-gathers
        vectors across ranks (identity on one process). Returns (loss sum, count, stats).
        """
        flat = torch.cat([seqs.flatten(), negative_ids])
        unique, inverse = torch.unique(flat, return_inverse=True)
        vecs = self.item_vectors(unique)[inverse]  # each distinct item encoded once
        seq_vecs = vecs[: seqs.numel()].view(*seqs.shape, -1)  # (B, L+1, D)
        negatives = gather(vecs[seqs.numel():])  # (M, D), the global pool
        states = self.user_states(seq_vecs[:, :-1], mask[:, :-1])  # (B, L, D)
        valid = mask[:, 1:] & mask[:, :-1]  # position t predicts item t+1
        loss_sum, stats = infonce(states[valid], seq_vecs[:, 1:][valid], negatives,
                                  self.logit_scale.exp(), threshold)
        return loss_sum, valid.sum(), stats
