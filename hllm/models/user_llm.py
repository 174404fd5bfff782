"""User LLM: a causal decoder that reads item embeddings instead of word tokens."""

from __future__ import annotations

import torch
from torch import nn

from hllm.config import UserLLMConfig
from hllm.models.pretrained import enable_checkpointing, load_backbone


class UserLLM(nn.Module):
    def __init__(self, cfg: UserLLMConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.backbone = load_backbone(cfg.path, cfg.init, cfg.arch,
                                      trust_remote_code=cfg.trust_remote_code,
                                      attn_implementation=attn_implementation)
        self.hidden_size: int = self.backbone.config.hidden_size
        # The word-embedding table is never read (inputs are item vectors): freeze it so
        # the optimizer skips it and DDP does not wait for a gradient that never comes.
        self.backbone.get_input_embeddings().requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.backbone)

    def forward(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) right-padded item vectors -> (B, L, D); position t predicts item t+1.

        Right padding keeps every real position's causal context free of padding, so the
        mask only matters for the padded tail, whose outputs are never used.
        """
        out = self.backbone(inputs_embeds=item_vecs, attention_mask=mask.long(), use_cache=False)
        return out.last_hidden_state
