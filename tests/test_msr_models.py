"""STAR pieces against hand-computed cases; MMoE, Shared-Bottom, PLE and LLM4MSR meta networks:
shapes, gradients, and PLE's gating and scenario isolation by hand."""

from __future__ import annotations

import pytest
import torch

from hllm.msr.backbones import (
    PLE,
    STAR,
    MMoE,
    PartitionedNorm,
    SharedBottom,
    StarLinear,
    build_backbone,
)
from hllm.msr.config import MSRModelConfig
from hllm.msr.meta import LLM4MSR, MetaLayer, bce_loss

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

CARDS = {"user": 6, "item": 9, "scenario": 3, "age": 4}


def _batch(b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"user": torch.randint(0, 6, (b,), generator=g), "item": torch.randint(0, 9, (b,), generator=g),
            "scenario": torch.arange(b) % 3, "fields": torch.randint(0, 4, (b, 1), generator=g),
            "user_k": torch.randint(0, 5, (b,), generator=g), "label": (torch.arange(b) % 2).float()}


def test_star_linear_combines_weights_elementwise():
    layer = StarLinear(2, 1, num_domains=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0], [3.0]]))
        layer.bias.fill_(1.0)
        layer.weight_p.copy_(torch.tensor([[[1.0], [1.0]], [[0.5], [-1.0]]]))
        layer.bias_p.copy_(torch.tensor([[0.0], [2.0]]))
    x = torch.ones(2, 2)
    # domain 0: 1*2*1 + 1*3*1 + (1+0) = 6; domain 1: 2*0.5 + 3*(-1) + (1+2) = 1
    out = layer(x, torch.tensor([0, 1]))
    assert out.squeeze(-1).tolist() == [6.0, 1.0]


def test_star_linear_starts_as_the_shared_layer():
    layer = StarLinear(5, 3, num_domains=4)  # W_p = 1, b_p = 0 at init
    x = torch.randn(8, 5)
    shared = x @ layer.weight + layer.bias
    torch.testing.assert_close(layer(x, torch.arange(8) % 4), shared)


def test_partitioned_norm_train_and_eval_hand_computed():
    pn = PartitionedNorm(1, num_domains=3, momentum=0.1, eps=0.0)
    with torch.no_grad():
        pn.gamma.fill_(2.0); pn.beta.fill_(1.0)
        pn.gamma_p.copy_(torch.tensor([[1.0], [3.0], [1.0]]))
        pn.beta_p.copy_(torch.tensor([[0.0], [-1.0], [0.0]]))
    z = torch.tensor([[1.0], [10.0], [3.0], [10.0], [16.0]])
    dom = torch.tensor([0, 1, 0, 1, 1])
    out = pn(z, dom).squeeze(-1)
    # domain 0: mean 2, var 1 -> normed -1, 1 -> 2*1*x + 1 = -1, 3
    # domain 1: mean 12, biased var 8 -> (-2, -2, 4)/sqrt(8) -> 2*3*x + (1-1)
    s8 = 8 ** 0.5
    torch.testing.assert_close(out, torch.tensor([-1.0, -12 / s8, 3.0, -12 / s8, 24 / s8]))
    # running stats: only domains 0 and 1 move; var uses the unbiased estimate n/(n-1)
    torch.testing.assert_close(pn.running_mean.squeeze(-1), torch.tensor([0.2, 1.2, 0.0]))
    torch.testing.assert_close(pn.running_var.squeeze(-1), torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 12, 1.0]))
    pn.eval()
    # eval: domain 0 at its running mean -> normed 0 -> beta + beta_p = 1
    assert pn(torch.tensor([[0.2]]), torch.tensor([0])).item() == pytest.approx(1.0)
    # domain 2 never seen: running mean 0, var 1 -> 2*1*5 + 1
    assert pn(torch.tensor([[5.0]]), torch.tensor([2])).item() == pytest.approx(11.0)


def test_star_logit_is_head_plus_auxiliary_scenario_logit():
    model = STAR(CARDS, ("age",), embed_dim=4, hidden=(8, 4))
    model.eval()
    batch = _batch()
    h, logit = model(batch)
    assert h.shape == (8, 4) and logit.shape == (8,)
    aux = model.aux(model.aux_embedding(batch["scenario"])).squeeze(-1)
    main = model.output(h, batch["scenario"]).squeeze(-1)
    torch.testing.assert_close(logit, main + aux)


def test_mmoe_shapes_and_per_scenario_towers():
    model = MMoE(CARDS, ("age",), embed_dim=4, hidden=(8, 6), num_experts=3, tower_hidden=5)
    batch = _batch()
    h, logit = model(batch)
    assert h.shape == (8, 6) and logit.shape == (8,)
    # the same h read by another scenario's tower gives another logit
    other = dict(batch, scenario=(batch["scenario"] + 1) % 3)
    assert not torch.allclose(model.head(h, batch), model.head(h, other))


def test_meta_layer_shapes():
    layer = MetaLayer(k_dim=12, d=4, hidden=16)
    w, b = layer.params(torch.randn(5, 12))
    assert w.shape == (5, 4, 4) and b.shape == (5, 4)
    assert layer(torch.randn(5, 4), torch.randn(5, 12)).shape == (5, 4)


@pytest.mark.parametrize("backbone_cls", [STAR, MMoE, SharedBottom, PLE])
def test_llm4msr_shapes_and_gradients_reach_meta_networks(backbone_cls):
    torch.manual_seed(0)
    backbone = backbone_cls(CARDS, ("age",), embed_dim=4, hidden=(8, 6))
    scen_k, user_k = torch.randn(3, 12), torch.randn(5, 20)
    model = LLM4MSR(backbone, scen_k, user_k, meta_hidden=16, user_layers=2, scenario_layers=2)
    batch = _batch()
    h, logit = model(batch)
    assert h.shape == (8, 6) and logit.shape == (8,)
    bce_loss(logit, batch["label"]).backward()
    for name, p in model.named_parameters():
        if "meta" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # knowledge tables are frozen buffers, not parameters
    assert "user_knowledge" not in dict(model.named_parameters())
    assert torch.equal(model.user_knowledge, user_k)


def test_llm4msr_output_depends_on_the_user_knowledge():
    torch.manual_seed(0)
    model = LLM4MSR(STAR(CARDS, ("age",), embed_dim=4, hidden=(8, 6)), torch.randn(3, 12),
                    torch.randn(5, 20), meta_hidden=16, init_scale=1.0).eval()
    batch = _batch()
    a = model(batch)[1]
    b = model(dict(batch, user_k=(batch["user_k"] + 1) % 5))[1]
    assert not torch.allclose(a, b)


def _ple(levels: int = 1, **kw) -> PLE:
    torch.manual_seed(0)
    return PLE(CARDS, ("age",), embed_dim=4, hidden=(8, 6), num_experts=2, specific_experts=2,
               levels=levels, tower_hidden=5, **kw)


def test_shared_bottom_h_is_the_shared_mlp_and_towers_are_per_scenario():
    torch.manual_seed(0)
    model = SharedBottom(CARDS, ("age",), embed_dim=4, hidden=(8, 6), tower_hidden=5).eval()
    batch = _batch()
    h, logit = model(batch)
    assert h.shape == (8, 6) and logit.shape == (8,) and model.out_dim == 6
    torch.testing.assert_close(h, model.bottom(model.embedding(batch)))
    # scenario 2's tower changed: only rows of scenario 2 move
    with torch.no_grad():
        model.tower_w2[2].neg_()
        model.tower_b2[2].add_(1.0)
    moved = model(batch)[1] != logit
    assert moved.tolist() == (batch["scenario"] == 2).tolist()


@pytest.mark.parametrize("levels", [1, 2])
def test_ple_shapes(levels):
    model = _ple(levels)
    h, logit = model(_batch())
    assert h.shape == (8, 6) and logit.shape == (8,) and model.out_dim == 6
    assert len(model.levels) == levels
    level = model.levels[0]
    assert len(level.shared) == 2 and [len(e) for e in level.specific] == [2, 2, 2]
    assert (level.shared_gates is None) == (levels == 1) and model.levels[-1].shared_gates is None


@pytest.mark.parametrize("make", [lambda: _ple(1), lambda: _ple(2),
                                  lambda: SharedBottom(CARDS, ("age",), embed_dim=4, hidden=(8, 6))],
                         ids=["ple", "ple-2-levels", "shared-bottom"])
def test_gradients_reach_every_expert_gate_and_tower(make):
    model = make()
    batch = _batch(b=24)  # all three scenarios, 8 rows each
    bce_loss(model(batch)[1], batch["label"]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # per-scenario rows of the towers and gates get gradient from their own scenario's rows only
    model.zero_grad(set_to_none=True)
    two = {k: v[batch["scenario"] < 2] for k, v in batch.items()}
    bce_loss(model(two)[1], two["label"]).backward()
    assert model.tower_w1.grad[2].abs().sum() == 0 and model.tower_w1.grad[:2].abs().sum() > 0
    if isinstance(model, PLE):
        for level in model.levels:
            assert all(p.grad is None for p in level.specific[2].parameters())
            assert all(p.grad is not None for p in level.specific[0].parameters())
            k = level.num_gated
            assert level.gates.weight.grad[2 * k:].abs().sum() == 0


def test_ple_one_hot_gate_returns_that_experts_output():
    model = _ple(1).eval()
    level = model.levels[0]
    k = level.num_gated  # [2 specific, 2 shared]
    with torch.no_grad():
        level.gates.weight.zero_()
        bias = torch.zeros(3, k)
        bias[0, 1] = 100.0  # scenario 0 -> its own specific expert 1
        bias[1, 2] = 100.0  # scenario 1 -> shared expert 0
        bias[2, 3] = 100.0  # scenario 2 -> shared expert 1
        level.gates.bias.copy_(bias.view(-1))
    batch = _batch()
    h = model.representation(batch)
    x = model.embedding(batch)
    dom = batch["scenario"]
    torch.testing.assert_close(h[dom == 0], level.specific[0][1](x[dom == 0]))
    torch.testing.assert_close(h[dom == 1], level.shared[0](x[dom == 1]))
    torch.testing.assert_close(h[dom == 2], level.shared[1](x[dom == 2]))


@pytest.mark.parametrize("levels", [1, 2])
def test_ple_rows_never_use_another_scenarios_specific_experts(levels):
    model = _ple(levels).eval()
    batch = _batch(b=12)
    h, logit = model(batch)
    with torch.no_grad():  # scramble scenario 2's own experts at every level
        for level in model.levels:
            for p in level.specific[2].parameters():
                p.normal_(std=1.0)
    h2, logit2 = model(batch)
    own = batch["scenario"] == 2
    torch.testing.assert_close(h2[~own], h[~own], rtol=0, atol=0)
    torch.testing.assert_close(logit2[~own], logit[~own], rtol=0, atol=0)
    assert not torch.allclose(h2[own], h[own])


@pytest.mark.parametrize("name", ["shared-bottom", "ple"])
def test_llm4msr_trains_one_step_on_registered_backbone(name):
    torch.manual_seed(0)
    cfg = MSRModelConfig(backbone=name, embed_dim=4, hidden=(8, 6), tower_hidden=5, dropout=0.1,
                         ple_levels=2)
    backbone = build_backbone(name, CARDS, ("age",), cfg)
    assert type(backbone) is {"shared-bottom": SharedBottom, "ple": PLE}[name]
    model = LLM4MSR(backbone, torch.randn(3, 12), torch.randn(5, 20), meta_hidden=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = _batch(b=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    h, logit = model(batch)
    assert h.shape == (16, 6) and logit.shape == (16,)
    loss = bce_loss(logit, batch["label"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.") for n in changed) and any("meta" in n for n in changed)
    model.eval()
    assert torch.isfinite(model(batch)[1]).all()


def test_build_backbone_rejects_unknown_names():
    from hllm.errors import ConfigError

    with pytest.raises(ConfigError, match="star, mmoe, shared-bottom, ple"):
        build_backbone("cgc", CARDS, ("age",), MSRModelConfig())


def test_a_relu_meta_layer_can_train_dead_and_the_other_activations_cannot():
    """hW + b < 0 everywhere: ReLU adds exactly 0 and passes no gradient; identity and tanh
    still pass one, which is why model.meta_activation is a choice made on validation."""
    from hllm.msr.meta import MetaLayer

    h, k = torch.randn(16, 8), torch.randn(16, 5)
    for activation, dead in (("relu", True), ("tanh", False), ("identity", False)):
        layer = MetaLayer(5, 8, 16, activation=activation)
        with torch.no_grad():
            layer.generator[-1].bias[64:] = -100.0  # the generated bias b: far below zero
        out = layer(h, k)
        out.sum().backward()
        grad = sum(float(p.grad.abs().sum()) for p in layer.parameters() if p.grad is not None)
        assert (bool((out == 0).all()) and grad == 0.0) == dead, activation
