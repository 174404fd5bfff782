"""The Item LLM: packed and padded batches agree; pooling and trainable modes behave."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hllm.config import ItemLLMConfig, cpu_tiny
from hllm.models.item_llm import ItemLLM

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

TEXTS = [{"title": "Toy Story", "genre": "Animation Comedy"}, {"title": "Heat"},
         {"title": "A much longer title that runs on", "genre": "Drama"}, {},
         {"title": "Alien", "genre": "Horror Sci-Fi"}]

BERT = dict(model_type="bert", vocab_size=260, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)


def tiny(**changes) -> ItemLLMConfig:
    return dataclasses.replace(cpu_tiny().item_llm, **changes)


@pytest.mark.parametrize("pooling", ["item_token", "mean"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_packed_equals_padded(pooling, arch):
    torch.manual_seed(0)
    cfg = tiny(pooling=pooling, pack_len=40, **({"arch": BERT} if arch == "bert" else {}))
    model = ItemLLM(cfg).eval()
    tokens = model.tokenize(TEXTS)
    packed_batch = model.make_batch(tokens, packed=True)
    assert packed_batch.input_ids.shape[0] < len(TEXTS)  # several items share a row
    with torch.no_grad():
        packed = model(packed_batch)
        padded = model(model.make_batch(tokens, packed=False))
    assert packed.shape == (len(TEXTS), 32)
    assert (packed - padded).abs().max().item() <= 1e-5
    # Items differ: no item sees another item's tokens, and truncation kept the text.
    assert torch.cdist(packed, packed).fill_diagonal_(1.0).min() > 1e-3


def test_packed_gradients_match_padded():
    torch.manual_seed(0)
    model = ItemLLM(tiny())
    tokens = model.tokenize(TEXTS)
    grads = []
    for packed in (True, False):
        model.zero_grad()
        model(model.make_batch(tokens, packed=packed)).pow(2).sum().backward()
        grads.append(model.item_token.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)  # float sums reorder


def test_trainable_modes():
    frozen = ItemLLM(tiny(trainable="frozen"))
    assert frozen.frozen
    top1 = ItemLLM(tiny(trainable="top-k", top_k_layers=1))
    names = {n for n, p in top1.named_parameters() if p.requires_grad}
    assert "item_token" in names
    assert any(n.startswith("backbone.layers.1.") for n in names)
    assert not any(n.startswith("backbone.layers.0.") for n in names)
    assert "backbone.embed_tokens.weight" not in names


def test_prompt_longer_than_budget_is_refused():
    from hllm.errors import ConfigError

    model = ItemLLM(tiny(prompt="x" * 60, max_text_len=48))
    with pytest.raises(ConfigError, match="max_text_len=48 leaves no room"):
        model.tokenize(TEXTS)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = ItemLLM(tiny(gradient_checkpointing=checkpointing)).train()
        assert model.backbone.is_activation_checkpointing == checkpointing
        tokens = model.tokenize(TEXTS)
        model(model.make_batch(tokens)).pow(2).sum().backward()
        grads.append(model.backbone.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
