"""Ranking metrics and InfoNCE on cases small enough to check on paper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hllm.evaluate import metrics_from_ranks, rank_of_targets
from hllm.models.loss import infonce

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def test_rank_masks_padding_and_history():
    # Items 0..5. Item 0 is padding, items 1 and 4 are history: masked although they score
    # highest. Unmasked order by score: 2 (0.8), 3 (0.75), 5 (0.7) -> target 3 has rank 2.
    scores = torch.tensor([[0.99, 0.9, 0.8, 0.75, 0.95, 0.7]])
    ranks = rank_of_targets(scores, torch.tensor([3]), [[1, 4]])
    assert ranks.tolist() == [2]


def test_target_in_history_is_not_masked():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.1]])
    assert rank_of_targets(scores, torch.tensor([1]), [[1, 2]]).tolist() == [1]


def test_ties_count_half():
    # Three other items tie with the target: expected rank under random tie-breaking is 1 + 3/2.
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.5]])
    assert rank_of_targets(scores, torch.tensor([2]), [[]]).tolist() == [2.5]


def test_metrics_hand_computed():
    # ranks 1, 3, 60, 300: R@10 = 2/4; N@10 = (1 + 1/log2(4)) / 4 = 0.375;
    # R@50 = 2/4; R@200 = 3/4; N@200 adds 1/log2(61); MRR = (1 + 1/3 + 1/60 + 1/300) / 4
    m = metrics_from_ranks(torch.tensor([1, 3, 60, 300]))
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(0.375)
    assert m["recall@50"] == pytest.approx(0.5)
    assert m["recall@200"] == pytest.approx(0.75)
    assert m["ndcg@200"] == pytest.approx((1 + 0.5 + 1 / math.log2(61)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 60 + 1 / 300) / 4)


def test_infonce_matches_cross_entropy_by_hand():
    user = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2)
    neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # cos 0 and -1
    scale = torch.tensor(10.0)
    loss, stats = infonce(user, pos, neg, scale)
    logits = torch.tensor([[10 / math.sqrt(2), 0.0, -10.0]])
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item(), rel=1e-6)
    assert stats["negatives"] == 2


def test_infonce_masks_negatives_identical_to_the_positive():
    # The second negative IS the positive item (cos 1 > 0.99): it must not count, so the
    # loss equals the loss with that negative removed.
    user = torch.tensor([[1.0, 0.2]])
    pos = torch.tensor([[0.5, 0.5]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.3]])
    scale = torch.tensor(14.3)
    masked, stats = infonce(user, pos, neg, scale, threshold=0.99)
    without, _ = infonce(user, pos, neg[[0, 2]], scale, threshold=0.99)
    assert masked.item() == pytest.approx(without.item(), rel=1e-6)
    assert stats["negatives"] == 2
    unmasked, _ = infonce(user, pos, neg, scale, threshold=1.01)
    assert unmasked.item() > masked.item()


def test_paired_bootstrap():
    import numpy as np

    from hllm.evaluate import paired_bootstrap

    ranks = np.array([1, 2, 5, 40, 300] * 40, dtype=float)
    same = paired_bootstrap(ranks, ranks)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0}
    # b misses every target a ranks first: a is better on every resample
    worse = np.where(ranks == 1, 500.0, ranks)
    r = paired_bootstrap(ranks, worse, "recall@10")
    assert r["diff"] == pytest.approx(0.2) and 0 < r["low"] <= r["diff"] <= r["high"]


@pytest.mark.parametrize("users, chunk", [(943, 1 << 22), (943, 5000), (6041, 1000), (777, 777 * 3)])
def test_paired_bootstrap_in_blocks_is_the_all_at_once_bootstrap_bit_for_bit(
        monkeypatch, users, chunk):
    """Drawing the resamples a block at a time (bounded memory at millions of users) gives
    exactly the interval the samples x users draw gave: gate decisions do not move."""
    import numpy as np

    from hllm import evaluate

    rng = np.random.default_rng(users)
    a, b = rng.integers(1, 400, users).astype(float), rng.integers(1, 400, users).astype(float)
    monkeypatch.setattr(evaluate, "BOOTSTRAP_CHUNK", chunk)
    got = evaluate.paired_bootstrap(a, b, "ndcg@10", samples=301, seed=3)
    pa, pb = evaluate.per_user_metric(a, "ndcg@10"), evaluate.per_user_metric(b, "ndcg@10")
    idx = np.random.default_rng(3).integers(0, users, size=(301, users))
    lo, hi = np.quantile((pa[idx] - pb[idx]).mean(1), [(1 - 0.95) / 2, (1 + 0.95) / 2])
    assert got == {"diff": float(pa.mean() - pb.mean()), "low": float(lo), "high": float(hi)}
