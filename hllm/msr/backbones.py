"""Multi-scenario backbones: STAR (Sheng et al., CIKM 2021) and MMoE over scenarios.

Every backbone has the same two-step interface so LLM4MSR's meta layers can sit
between them:

    h, logit = backbone(batch)          # h: (B, d) representation before the head
    logit = backbone.head(h, batch)     # (B,) the backbone's own prediction head

`batch` is a dict of tensors from hllm.msr.data.MSRTensors.batch (user, item,
scenario, fields). No `.cuda()` anywhere: everything follows the input's device.
"""

from __future__ import annotations

import torch
from torch import nn

from hllm.errors import ConfigError


class FeatureEmbedding(nn.Module):
    """One shared embedding table per feature (user, item, scenario, each field); concatenated.

    STAR shares embeddings across domains; index 0 of each table is "unseen in train".
    """

    def __init__(self, cardinalities: dict[str, int], field_names: tuple[str, ...], dim: int):
        super().__init__()
        self.field_names = tuple(field_names)
        self.ids = ("user", "item", "scenario")
        self.tables = nn.ModuleDict({name: nn.Embedding(cardinalities[name], dim)
                                     for name in (*self.ids, *self.field_names)})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.out_dim = dim * len(self.tables)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.tables[name](batch[name]) for name in self.ids]
        parts += [self.tables[name](batch["fields"][:, i]) for i, name in enumerate(self.field_names)]
        return torch.cat(parts, dim=-1)  # (B, num_features * dim)


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalization (MODELS.md C.1).

    out = (gamma * gamma_p) * (z - mu) / sqrt(var + eps) + (beta + beta_p)

    Training: mu, var are the batch statistics of the samples of domain p only, and
    only the running statistics of the domains present in the batch are updated.
    Evaluation: the per-domain running averages mu_p, var_p. gamma, beta are shared,
    gamma_p (init 1), beta_p (init 0) private, so training starts as plain BN per domain.
    [inference] Normalization uses the biased batch variance and the running average the
    unbiased one, as torch BatchNorm does; a domain with a single sample in a batch is
    normalized with its own stats (output = beta + beta_p) and does not update the running
    variance (n - 1 = 0).
    """

    def __init__(self, dim: int, num_domains: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_p = nn.Parameter(torch.ones(num_domains, dim))
        self.beta_p = nn.Parameter(torch.zeros(num_domains, dim))
        self.register_buffer("running_mean", torch.zeros(num_domains, dim))
        self.register_buffer("running_var", torch.ones(num_domains, dim))

    def forward(self, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:  # (B, d), (B,)
        if self.training:
            mean = torch.empty_like(z)
            var = torch.empty_like(z)
            for p in torch.unique(domain).tolist():
                mask = domain == p
                zp = z[mask]
                mu, v = zp.mean(0), zp.var(0, unbiased=False)
                mean[mask], var[mask] = mu, v
                with torch.no_grad():
                    n = zp.size(0)
                    self.running_mean[p].lerp_(mu.detach(), self.momentum)
                    if n > 1:
                        self.running_var[p].lerp_(v.detach() * n / (n - 1), self.momentum)
        else:
            mean, var = self.running_mean[domain], self.running_var[domain]
        normed = (z - mean) / torch.sqrt(var + self.eps)
        return (self.gamma * self.gamma_p[domain]) * normed + (self.beta + self.beta_p[domain])


class StarLinear(nn.Module):
    """A star-topology FC layer: domain p uses W ⊙ W_p and b + b_p (MODELS.md C.1, C.3)."""

    def __init__(self, d_in: int, d_out: int, num_domains: int):
        super().__init__()
        shared = nn.Linear(d_in, d_out)  # torch's default init for the shared part
        self.weight = nn.Parameter(shared.weight.detach().T.clone())  # (d_in, d_out)
        self.bias = nn.Parameter(shared.bias.detach().clone())  # (d_out,)
        # Ones and zeros: every domain starts as the shared network.
        self.weight_p = nn.Parameter(torch.ones(num_domains, d_in, d_out))
        self.bias_p = nn.Parameter(torch.zeros(num_domains, d_out))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:  # (B, d_in), (B,)
        out = x.new_empty(x.size(0), self.weight.size(1))
        # Group by domain: P matmuls instead of materialising a (B, d_in, d_out) weight.
        for p in torch.unique(domain).tolist():
            mask = domain == p
            out[mask] = x[mask] @ (self.weight * self.weight_p[p]) + (self.bias + self.bias_p[p])
        return out


class STAR(nn.Module):
    """Shared embeddings -> partitioned norm -> star FCN -> h; logit = head(h) + aux(scenario)."""

    def __init__(self, cardinalities: dict[str, int], field_names: tuple[str, ...], *,
                 embed_dim: int = 16, hidden: tuple[int, ...] = (64, 32), aux_hidden: int = 16,
                 dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ConfigError("model.hidden must list at least one layer width for STAR")
        num_domains = cardinalities["scenario"]
        self.embedding = FeatureEmbedding(cardinalities, field_names, embed_dim)
        self.norm = PartitionedNorm(self.embedding.out_dim, num_domains)
        widths = (self.embedding.out_dim, *hidden)
        self.layers = nn.ModuleList(StarLinear(a, b, num_domains) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden[-1]
        self.output = StarLinear(self.out_dim, 1, num_domains)  # the head is star-shaped too
        # Auxiliary network: the scenario indicator alone shifts the logit ([inference]: STAR
        # also feeds "other domain features"; ml-100k scenarios have none beyond the id).
        self.aux_embedding = nn.Embedding(num_domains, embed_dim)
        self.aux = nn.Sequential(nn.Linear(embed_dim, aux_hidden), nn.ReLU(), nn.Linear(aux_hidden, 1))

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        domain = batch["scenario"]
        x = self.norm(self.embedding(batch), domain)
        for layer in self.layers:
            x = self.dropout(torch.relu(layer(x, domain)))
        return x  # (B, hidden[-1])

    def head(self, h: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        domain = batch["scenario"]
        return (self.output(h, domain) + self.aux(self.aux_embedding(domain))).squeeze(-1)  # (B,)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.representation(batch)
        return h, self.head(h, batch)


class MMoE(nn.Module):
    """Multi-gate mixture of experts with one gate and one tower per scenario (Ma et al. 2018).

    Experts are shared; scenario p mixes them with its own softmax gate into h, and its
    own tower turns h into the logit. Used as a multi-scenario baseline in the MSR literature.
    """

    def __init__(self, cardinalities: dict[str, int], field_names: tuple[str, ...], *,
                 embed_dim: int = 16, hidden: tuple[int, ...] = (64, 32), num_experts: int = 4,
                 tower_hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        num_domains = cardinalities["scenario"]
        self.embedding = FeatureEmbedding(cardinalities, field_names, embed_dim)
        d_in = self.embedding.out_dim
        self.experts = nn.ModuleList(_mlp(d_in, hidden, dropout) for _ in range(num_experts))
        self.gates = nn.Linear(d_in, num_domains * num_experts)
        self.num_domains, self.num_experts = num_domains, num_experts
        self.out_dim = hidden[-1]
        # Per-scenario towers as batched weights: (P, d, t) and (P, t, 1).
        self.tower_w1 = nn.Parameter(torch.randn(num_domains, self.out_dim, tower_hidden) / self.out_dim ** 0.5)
        self.tower_b1 = nn.Parameter(torch.zeros(num_domains, tower_hidden))
        self.tower_w2 = nn.Parameter(torch.randn(num_domains, tower_hidden) / tower_hidden ** 0.5)
        self.tower_b2 = nn.Parameter(torch.zeros(num_domains))

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding(batch)  # (B, d_in)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, d)
        gates = self.gates(x).view(-1, self.num_domains, self.num_experts)  # (B, P, E)
        gate = gates[torch.arange(x.size(0), device=x.device), batch["scenario"]].softmax(-1)  # (B, E)
        return torch.einsum("be,bed->bd", gate, experts)  # (B, d)

    def head(self, h: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        p = batch["scenario"]
        t = torch.relu(torch.einsum("bd,bdt->bt", h, self.tower_w1[p]) + self.tower_b1[p])
        return (t * self.tower_w2[p]).sum(-1) + self.tower_b2[p]  # (B,)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.representation(batch)
        return h, self.head(h, batch)


def _mlp(d_in: int, widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(d_in, w), nn.ReLU(), nn.Dropout(dropout)]
        d_in = w
    return nn.Sequential(*layers)


BACKBONES = {"star": STAR, "mmoe": MMoE}


def build_backbone(name: str, cardinalities: dict[str, int], field_names: tuple[str, ...],
                   cfg) -> nn.Module:
    """cfg: MSRModelConfig. A named builder so configs pick the backbone by string."""
    if name == "star":
        return STAR(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                    aux_hidden=cfg.aux_hidden, dropout=cfg.dropout)
    if name == "mmoe":
        return MMoE(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                    num_experts=cfg.num_experts, tower_hidden=cfg.tower_hidden, dropout=cfg.dropout)
    raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
