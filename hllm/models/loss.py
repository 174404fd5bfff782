"""Generative InfoNCE, as in HLLM: cosine similarity, learnable scale, masked false negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(user: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
            scale: torch.Tensor, threshold: float = 0.99) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over positions of -log softmax(pos | pos, negs); returns (sum, stats).

    user, positive: (P, D) the prediction at each valid position and its next item;
    negatives: (M, D) one shared pool; scale: the (already exponentiated) logit scale.
    A negative whose cosine with the positive exceeds `threshold` is masked out: it is
    the positive item itself, or a near-duplicate text, so pushing it away is wrong.
    Returns the *sum* so callers can normalise by a global count under DDP.
    """
    user = F.normalize(user, dim=-1)
    positive = F.normalize(positive, dim=-1)
    negatives = F.normalize(negatives, dim=-1)
    pos_logit = (user * positive).sum(-1, keepdim=True)  # (P, 1)
    neg_logit = user @ negatives.T  # (P, M)
    false_neg = (positive @ negatives.T) > threshold  # (P, M)
    logits = torch.cat([pos_logit, neg_logit], dim=1).float() * scale.float()  # (P, 1 + M)
    masked = torch.cat([torch.zeros_like(false_neg[:, :1]), false_neg], dim=1)
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long,
                                                       device=logits.device), reduction="sum")
    with torch.no_grad():
        rank = (logits[:, 1:] > logits[:, :1]).sum(1)
        stats = {"acc@1": float((rank == 0).float().mean()) if len(rank) else 0.0,
                 "negatives": float((~false_neg).sum(1).float().mean()) if len(rank) else 0.0}
    return loss, stats
