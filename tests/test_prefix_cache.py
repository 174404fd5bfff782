"""Top-k fine-tuning from cached frozen-layer states equals running the whole Item LLM.

The reference is transformers' own forward of every layer (packed items, the [ITEM]
vector injected at the first trainable layer by a hook); the cached path runs our code
for the trainable layers only, with the last layer evaluated at the [ITEM] slot alone.
Tolerance: fp32, loss rtol 1e-5, gradients rtol 1e-4 / atol 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from hllm import storage
from hllm.config import tiny_llama, load_config
from hllm.distributed import Dist
from hllm.item_cache import load_or_compute_prefix_states
from hllm.models.hllm import HLLM
from hllm.models.prefix_cache import compute_prefix_states
from hllm.train import load_split

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

CPU = torch.device("cpu")


# Gemma 3's layers differ from Llama's (RMSNorm on q and k, norms around attention and
# MLP, local and global rotary tables by layer type, scaled input embeddings).
TINY_GEMMA3 = dict(model_type="gemma3_text", hidden_size=32, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                   intermediate_size=64, vocab_size=260, max_position_embeddings=256,
                   sliding_window=4, layer_types=["full_attention", "sliding_attention",
                                                  "sliding_attention"])


def topk_cfg(k: int, pooling: str = "item_token", arch: dict | None = None, **extra):
    return load_config("cpu-tiny", None, {
        "item_llm.trainable": "top-k", "item_llm.top_k_layers": k, "item_llm.pooling": pooling,
        # Weights far from the 0.02 default, so attention is sharp and a wrong query or
        # position shows in the loss (near-uniform attention would hide it).
        "item_llm.arch": {**(arch or tiny_llama(layers=3)), "initializer_range": 0.3}, **extra})


def one_step(model: HLLM, split, seed: int = 0):
    windows = split.train_windows(20)[:6]
    seqs = torch.zeros(len(windows), max(len(w) for w in windows), dtype=torch.long)
    for b, w in enumerate(windows):
        seqs[b, : len(w)] = torch.as_tensor(w)
    negatives = torch.randint(1, split.num_items + 1, (32,), generator=torch.Generator().manual_seed(seed))
    loss, count, _ = model(seqs, seqs > 0, negatives)
    (loss / count).backward()
    return float(loss)


@pytest.mark.parametrize("k, pooling, arch", [
    (1, "item_token", None), (2, "item_token", None), (1, "mean", None),
    (2, "item_token", TINY_GEMMA3)], ids=["llama-top1", "llama-top2", "llama-mean", "gemma3-top2"])
def test_a_step_from_the_cache_equals_a_step_through_every_layer(toy_data, k, pooling, arch):
    cfg = topk_cfg(k, pooling, arch)
    split = load_split(str(toy_data), cfg)
    torch.manual_seed(0)
    reference = HLLM(cfg, split.item_text)
    torch.manual_seed(0)
    cached = HLLM(cfg, split.item_text)
    cached.set_prefix_states(compute_prefix_states(cached.item_llm, cached.item_tokens, 3 - k,
                                                   device=CPU))
    loss_ref, loss_cached = one_step(reference, split), one_step(cached, split)
    assert loss_cached == pytest.approx(loss_ref, rel=1e-5)
    grads = 0
    for (name, p_ref), (_, p_cached) in zip(reference.named_parameters(), cached.named_parameters()):
        if p_ref.grad is None:
            assert p_cached.grad is None, name
            continue
        torch.testing.assert_close(p_cached.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
        grads += 1
    trainable = {n for n, p in cached.named_parameters() if p.grad is not None}
    # only the top k layers, the final norm, the [ITEM] vector and the user side learn
    assert f"item_llm.backbone.layers.{3 - k}.self_attn.q_proj.weight" in trainable
    assert not any(n.startswith(f"item_llm.backbone.layers.{3 - k - 1}.") for n in trainable)
    assert ("item_llm.item_token" in trainable) == (pooling == "item_token")
    assert grads == len(trainable) > 10


def test_the_slot_enters_at_the_first_trainable_layer(toy_data):
    """Text tokens never see the [ITEM] slot, so a frozen layer's states do not depend on it."""
    cfg = topk_cfg(1)
    split = load_split(str(toy_data), cfg)
    model = HLLM(cfg, split.item_text)
    ids = torch.arange(1, 6)
    before = model.raw_item_embeddings(ids).detach()
    with torch.no_grad():
        model.item_llm.item_token.add_(1.0)
    after = model.raw_item_embeddings(ids).detach()
    assert not torch.allclose(before, after)  # the slot matters ...
    model.item_llm.item_token.grad = None
    model.raw_item_embeddings(ids).sum().backward()
    lower = model.item_llm.backbone.layers[1].self_attn.q_proj.weight
    assert lower.grad is None  # ... but no gradient runs below the trainable layer


def test_prefix_states_are_cached_once_per_model_texts_and_k(toy_data):
    cfg = topk_cfg(1)
    split = load_split(str(toy_data), cfg)
    model = HLLM(cfg, split.item_text)
    load_or_compute_prefix_states(model, cfg, CPU, Dist(), progress=False)
    files = sorted((storage.cache_root() / "item-prefix").iterdir())
    assert len(files) == 1 and files[0].name.endswith("-top1.safetensors")
    assert model.prefix.offsets[-1] == sum(len(t) for t in model.item_tokens)
    other = topk_cfg(2)
    load_or_compute_prefix_states(HLLM(other, split.item_text), other, CPU, Dist(), progress=False)
    assert len(list((storage.cache_root() / "item-prefix").iterdir())) == 2


def test_a_topk_checkpoint_keeps_only_what_learned_and_reloads(toy_data, tmp_path):
    """The frozen layers of a pretrained Item LLM are re-read from its path, not saved."""
    from safetensors.torch import save_file
    from transformers import AutoModel, LlamaConfig

    from hllm.train import load_weights, saved_state_dict

    pretrained = tmp_path / "tiny-llm"
    torch.manual_seed(1)
    AutoModel.from_config(LlamaConfig(**tiny_llama(layers=3))).save_pretrained(pretrained)
    cfg = topk_cfg(1, **{"item_llm.path": str(pretrained), "item_llm.init": "pretrained",
                         "item_llm.arch": {}})
    split = load_split(str(toy_data), cfg)
    model = HLLM(cfg, split.item_text)
    one_step(model, split)
    with torch.no_grad():  # as if an optimizer step had moved the learned parts
        for p in model.parameters():
            if p.grad is not None:
                p.add_(0.1 * p.grad.sign())
    state = saved_state_dict(model, cfg)
    backbone = {k for k in state if k.startswith("item_llm.backbone.")}
    assert backbone and all(k.startswith(("item_llm.backbone.layers.2.", "item_llm.backbone.norm."))
                            for k in backbone)
    save_file(state, str(tmp_path / "model.safetensors"))
    fresh = HLLM(cfg, split.item_text)
    load_weights(fresh, tmp_path / "model.safetensors")
    ids = torch.arange(1, split.num_items + 1)
    with torch.no_grad():
        torch.testing.assert_close(fresh.item_vectors(ids), model.item_vectors(ids))
