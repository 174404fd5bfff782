"""SASRec (Kang & McAuley, 2018): the ID-based baseline.

Item ids -> learned embeddings; a causal Transformer over the sequence. Trained here
with the same InfoNCE, negatives and loop as HLLM, so the comparison isolates the
item representation (ids vs text through an LLM).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hllm.config import SASRecConfig
from hllm.models.base import SequentialRecommender


class SASRec(SequentialRecommender):
    def __init__(self, cfg: SASRecConfig, num_items: int, max_len: int,
                 logit_scale_init: float = 1 / 0.07, logit_scale_max: float = 100.0):
        super().__init__(logit_scale_init, logit_scale_max)
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=cfg.hidden * 4,
                                           dropout=cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.scale = math.sqrt(cfg.hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.item_emb(item_ids)

    def transformer_layers(self) -> list[nn.Module]:
        return list(self.blocks.layers)

    def user_states(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = item_vecs.size(1)
        positions = torch.arange(length, device=item_vecs.device)
        x = self.dropout(item_vecs * self.scale + self.pos_emb(positions))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=item_vecs.device)
        x = self.blocks(x, mask=causal, is_causal=True)
        return self.norm(x)
