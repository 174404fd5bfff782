"""Multi-scenario backbones, picked by `model.backbone` in build_backbone:

    star           STAR (Sheng et al., CIKM 2021): partitioned norm, star-topology FCN, aux net
    mmoe           MMoE (Ma et al., KDD 2018) with scenarios as tasks: shared experts, a gate
                   and a tower per scenario
    shared-bottom  one shared MLP, a tower per scenario (the classic multi-task baseline)
    ple            PLE (Tang et al., RecSys 2020) with scenarios as tasks: shared plus
                   per-scenario experts, a gate and a tower per scenario

Every backbone has the same two-step interface so LLM4MSR's meta layers can sit
between them:

    h = backbone.representation(batch)  # h: (B, d) representation before the head, d = out_dim
    logit = backbone.head(h, batch)     # (B,) the backbone's own prediction head
    h, logit = backbone(batch)          # both at once

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


class ScenarioTowers(nn.Module):
    """Base for backbones whose head is one small tower per scenario (d -> tower_hidden -> 1).

    The towers are batched weights, (P, d, t) and (P, t), and row b reads those of its own
    scenario, so one einsum serves a batch that mixes scenarios. Subclasses define
    `representation`, set `out_dim` and call `_init_towers`.
    """

    def _init_towers(self, num_domains: int, d: int, tower_hidden: int) -> None:
        self.tower_w1 = nn.Parameter(torch.randn(num_domains, d, tower_hidden) / d ** 0.5)
        self.tower_b1 = nn.Parameter(torch.zeros(num_domains, tower_hidden))
        self.tower_w2 = nn.Parameter(torch.randn(num_domains, tower_hidden) / tower_hidden ** 0.5)
        self.tower_b2 = nn.Parameter(torch.zeros(num_domains))

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        p = batch["scenario"]
        t = torch.relu(torch.einsum("bd,bdt->bt", h, self.tower_w1[p]) + self.tower_b1[p])
        return (t * self.tower_w2[p]).sum(-1) + self.tower_b2[p]  # (B,)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.representation(batch)
        return h, self.head(h, batch)


class MMoE(ScenarioTowers):
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
        self._init_towers(num_domains, self.out_dim, tower_hidden)

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding(batch)  # (B, d_in)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, d)
        gates = self.gates(x).view(-1, self.num_domains, self.num_experts)  # (B, P, E)
        gate = gates[torch.arange(x.size(0), device=x.device), batch["scenario"]].softmax(-1)  # (B, E)
        return torch.einsum("be,bed->bd", gate, experts)  # (B, d)


class SharedBottom(ScenarioTowers):
    """Shared-Bottom (Caruana 1997; the multi-task baseline of the MMoE and PLE papers).

    One MLP over the concatenated embeddings is shared by every scenario and its output is
    h; scenario p's own tower turns h into the logit. All scenario-specific capacity sits
    in the towers, which makes it the lower bound the gated backbones should beat.
    """

    def __init__(self, cardinalities: dict[str, int], field_names: tuple[str, ...], *,
                 embed_dim: int = 16, hidden: tuple[int, ...] = (64, 32), tower_hidden: int = 16,
                 dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ConfigError("model.hidden must list at least one layer width for shared-bottom")
        num_domains = cardinalities["scenario"]
        self.embedding = FeatureEmbedding(cardinalities, field_names, embed_dim)
        self.bottom = _mlp(self.embedding.out_dim, hidden, dropout)
        self.num_domains = num_domains
        self.out_dim = hidden[-1]
        self._init_towers(num_domains, self.out_dim, tower_hidden)

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bottom(self.embedding(batch))  # (B, hidden[-1])


class ExtractionLayer(nn.Module):
    """One PLE extraction level (a CGC block) with scenarios as tasks.

    Experts: `num_shared` shared ones applied to the shared input, and `num_specific` per
    scenario applied to the scenario's own input. Scenario p's gate (a softmax over
    [p's specific experts, shared experts], computed from p's input) mixes them into p's
    output. Below the last level a second per-scenario gate, computed from the shared
    input, mixes the same experts into the shared input of the next level.

    [inference] In multi-task PLE every sample passes every task, and the intermediate
    shared gate mixes all tasks' specific experts. A row here belongs to exactly one
    scenario, so it only ever runs its own scenario's specific experts, at every level and
    in both gates: rows of scenario p never touch scenario q's specific experts. That is
    also why the shared gate is per scenario (its logits over p's specific slots are
    weights for p's experts).
    """

    def __init__(self, d_in: int, widths: tuple[int, ...], num_domains: int, num_shared: int,
                 num_specific: int, dropout: float = 0.0, *, shared_gate: bool = False):
        super().__init__()
        if num_shared < 0 or num_specific < 0 or num_shared + num_specific < 1:
            raise ConfigError("PLE needs at least one expert per scenario: model.num_experts "
                              f"(shared) = {num_shared}, model.ple_specific_experts = {num_specific}")
        self.num_domains, self.num_shared, self.num_specific = num_domains, num_shared, num_specific
        self.num_gated = num_specific + num_shared
        self.specific = nn.ModuleList(
            nn.ModuleList(_mlp(d_in, widths, dropout) for _ in range(num_specific))
            for _ in range(num_domains))
        self.shared = nn.ModuleList(_mlp(d_in, widths, dropout) for _ in range(num_shared))
        self.gates = nn.Linear(d_in, num_domains * self.num_gated)  # scenario p: slots p*K..p*K+K-1
        self.shared_gates = nn.Linear(d_in, num_domains * self.num_gated) if shared_gate else None
        self.out_dim = widths[-1]

    def experts(self, x_task: torch.Tensor, x_shared: torch.Tensor,
                domain: torch.Tensor) -> torch.Tensor:
        """(B, S + E, d): row b's own scenario's S specific experts, then the E shared ones."""
        parts = []
        if self.num_specific:
            specific = x_task.new_empty(x_task.size(0), self.num_specific, self.out_dim)
            # Group by scenario, as StarLinear: each row runs only its own scenario's experts.
            for p in torch.unique(domain).tolist():
                mask = domain == p
                specific[mask] = torch.stack([e(x_task[mask]) for e in self.specific[p]], dim=1)
            parts.append(specific)
        if self.num_shared:
            parts.append(torch.stack([e(x_shared) for e in self.shared], dim=1))
        return torch.cat(parts, dim=1)

    def gate(self, layer: nn.Linear, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Row b's softmax weights over its S + E experts, from its own scenario's gate: (B, S + E)."""
        logits = layer(x).view(-1, self.num_domains, self.num_gated)  # (B, P, S + E)
        return logits[torch.arange(x.size(0), device=x.device), domain].softmax(-1)

    def forward(self, x_task: torch.Tensor, x_shared: torch.Tensor, domain: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        experts = self.experts(x_task, x_shared, domain)  # (B, S + E, d)
        task = torch.einsum("be,bed->bd", self.gate(self.gates, x_task, domain), experts)
        if self.shared_gates is None:
            return task, None
        return task, torch.einsum("be,bed->bd", self.gate(self.shared_gates, x_shared, domain), experts)


class PLE(ScenarioTowers):
    """Progressive Layered Extraction (Tang et al., RecSys 2020) with scenarios as tasks.

    `levels` extraction layers (ExtractionLayer); level 1 reads the concatenated embeddings
    for both its scenario and its shared input, each later level the previous level's
    outputs. h is the last level's gated mixture for the row's scenario (width hidden[-1]);
    the head is the row's scenario tower, as in MMoE. With one level this is CGC, PLE's
    single-level form; compared with MMoE each scenario also owns experts no other
    scenario's gate can reach, which the PLE paper credits for avoiding the seesaw effect.
    """

    def __init__(self, cardinalities: dict[str, int], field_names: tuple[str, ...], *,
                 embed_dim: int = 16, hidden: tuple[int, ...] = (64, 32), num_experts: int = 4,
                 specific_experts: int = 2, levels: int = 1, tower_hidden: int = 16,
                 dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ConfigError("model.hidden must list at least one layer width for PLE")
        if levels < 1:
            raise ConfigError(f"model.ple_levels must be >= 1, got {levels}")
        num_domains = cardinalities["scenario"]
        self.embedding = FeatureEmbedding(cardinalities, field_names, embed_dim)
        d_ins = (self.embedding.out_dim, *(hidden[-1],) * (levels - 1))
        self.levels = nn.ModuleList(
            ExtractionLayer(d, hidden, num_domains, num_experts, specific_experts, dropout,
                            shared_gate=i < levels - 1)
            for i, d in enumerate(d_ins))
        self.num_domains = num_domains
        self.out_dim = hidden[-1]
        self._init_towers(num_domains, self.out_dim, tower_hidden)

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        domain = batch["scenario"]
        x_task = x_shared = self.embedding(batch)  # (B, d_in)
        for level in self.levels:
            x_task, x_shared = level(x_task, x_shared, domain)
        return x_task  # (B, hidden[-1])


def _mlp(d_in: int, widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(d_in, w), nn.ReLU(), nn.Dropout(dropout)]
        d_in = w
    return nn.Sequential(*layers)


BACKBONES = {"star": STAR, "mmoe": MMoE, "shared-bottom": SharedBottom, "ple": PLE}


def build_backbone(name: str, cardinalities: dict[str, int], field_names: tuple[str, ...],
                   cfg) -> nn.Module:
    """cfg: MSRModelConfig. A named builder so configs pick the backbone by string."""
    if name == "star":
        return STAR(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                    aux_hidden=cfg.aux_hidden, dropout=cfg.dropout)
    if name == "mmoe":
        return MMoE(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                    num_experts=cfg.num_experts, tower_hidden=cfg.tower_hidden, dropout=cfg.dropout)
    if name == "shared-bottom":
        return SharedBottom(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                            tower_hidden=cfg.tower_hidden, dropout=cfg.dropout)
    if name == "ple":
        return PLE(cardinalities, field_names, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                   num_experts=cfg.num_experts, specific_experts=cfg.ple_specific_experts,
                   levels=cfg.ple_levels, tower_hidden=cfg.tower_hidden, dropout=cfg.dropout)
    raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
