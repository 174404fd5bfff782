"""LLM4MSR's hierarchical meta networks and the wrapper model (MODELS.md B.3).

What the paper states: meta networks generate the weights and biases of meta layers
from the LLM knowledge vectors; user-level meta layers sit "at the bottom",
scenario-level meta layers "in parallel"; the backbone's output is refined by them
before the prediction; everything but the LLM trains jointly with BCE.

The exact wiring is unverified (MODELS.md Part D). Our choice, all [inference]:

    h  = backbone.representation(batch)                            # (B, d)
    h1 = h + sum_l act(h_{l-1} W_u^l + b_u^l)   (stacked, bottom)  # W_u^l, b_u^l = g_u^l(k_user)
    h2 = h1 + mean_j act(h1 W_s^j + b_s^j)      (j in parallel)    # W_s^j, b_s^j = g_s^j(k_scenario)
    logit = backbone.head(h2, batch)                               # the backbone's own head

* Residual form and a small generator output scale (meta_init_scale) make the model
  start as (almost) the backbone, so the LLM knowledge can only be added where it helps.
* The backbone's own head is reused, so STAR keeps its star-shaped output layer and
  auxiliary scenario logit, and MMoE, Shared-Bottom and PLE their per-scenario towers.
* Knowledge vectors go through a LayerNorm first: decoder hidden states have a few huge
  outlier dimensions that would otherwise dominate the generator.
* Scenario vectors are a (P, K) buffer; user vectors a frozen (U, K) buffer indexed by
  `user_k`; neither is a parameter (the LLM stays frozen, the vectors are precomputed).
"""

from __future__ import annotations

import torch
from torch import nn


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x}


class MetaLayer(nn.Module):
    """A generator g: knowledge (B, K) -> per-sample W (B, d, d), b (B, d); applies act(hW + b).

    act is ReLU in the paper. A ReLU residual can train dead (hW + b < 0 for every row: the
    layer adds exactly 0 and gets no gradient); `identity` and `tanh` cannot, and which one
    to use is chosen on validation (model.meta_activation).
    """

    def __init__(self, k_dim: int, d: int, hidden: int, init_scale: float = 0.1,
                 activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"meta activation {activation!r}: one of {', '.join(ACTIVATIONS)}")
        self.d, self.act = d, ACTIVATIONS[activation]
        self.generator = nn.Sequential(nn.LayerNorm(k_dim), nn.Linear(k_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, d * d + d))
        with torch.no_grad():  # start small: the meta layer is a gentle residual at first
            self.generator[-1].weight.mul_(init_scale)
            self.generator[-1].bias.zero_()

    def params(self, knowledge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.generator(knowledge)  # (B, d*d + d)
        w = out[:, : self.d * self.d].view(-1, self.d, self.d) / self.d ** 0.5  # (B, d, d)
        return w, out[:, self.d * self.d:]  # (B, d)

    def forward(self, h: torch.Tensor, knowledge: torch.Tensor) -> torch.Tensor:  # (B, d), (B, K)
        w, b = self.params(knowledge)
        return self.act(torch.einsum("bi,bio->bo", h, w) + b)  # (B, d)


class LLM4MSR(nn.Module):
    """A multi-scenario backbone refined by user-level and scenario-level meta layers."""

    def __init__(self, backbone: nn.Module, scenario_knowledge: torch.Tensor,
                 user_knowledge: torch.Tensor, *, meta_hidden: int = 64, user_layers: int = 1,
                 scenario_layers: int = 2, init_scale: float = 0.1, activation: str = "relu"):
        super().__init__()
        if scenario_knowledge.dim() != 2 or user_knowledge.dim() != 2:
            raise ValueError("knowledge tables must be 2-D: scenario (P, K), user (U, K); got "
                             f"{tuple(scenario_knowledge.shape)} and {tuple(user_knowledge.shape)}")
        self.backbone = backbone
        self.register_buffer("scenario_knowledge", scenario_knowledge.float().clone())  # (P, K_s)
        self.register_buffer("user_knowledge", user_knowledge.float().clone())  # (U, K_u)
        d = backbone.out_dim
        self.user_meta = nn.ModuleList(
            MetaLayer(user_knowledge.size(1), d, meta_hidden, init_scale, activation)
            for _ in range(user_layers))
        self.scenario_meta = nn.ModuleList(
            MetaLayer(scenario_knowledge.size(1), d, meta_hidden, init_scale, activation)
            for _ in range(scenario_layers))
        self.out_dim = d

    def refine(self, h: torch.Tensor, batch: dict[str, torch.Tensor],
               trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """h + the meta layers' residuals; `trace` (if given) receives each layer's residual
        as applied (scenario layers already divided by their count), for `hllm explain`."""
        k_user = self.user_knowledge[batch["user_k"]]  # (B, K_u)
        k_scen = self.scenario_knowledge[batch["scenario"]]  # (B, K_s)
        for i, layer in enumerate(self.user_meta):  # bottom: stacked, personalised
            delta = layer(h, k_user)
            if trace is not None:
                trace[f"user-meta-{i + 1}"] = delta
            h = h + delta
        if len(self.scenario_meta):  # parallel: side by side on the same input, averaged
            deltas = torch.stack([layer(h, k_scen) for layer in self.scenario_meta])
            if trace is not None:
                for j, delta in enumerate(deltas):
                    trace[f"scenario-meta-{j + 1}"] = delta / len(deltas)
            h = h + deltas.mean(0)
        return h  # (B, d)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.refine(self.backbone.representation(batch), batch)
        return h, self.backbone.head(h, batch)


def bce_loss(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """CTR objective of both the backbone and LLM4MSR (no LLM loss: the LLM is frozen)."""
    return nn.functional.binary_cross_entropy_with_logits(logit, label.to(logit.dtype))
