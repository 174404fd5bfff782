"""Evaluation segments (warm, long-tail, cold) and data.cold_items, on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import ML100K, write_recbole
from hllm.config import DataConfig
from hllm.data.readers import read_dataset
from hllm.data.split import build_split
from hllm.errors import DataError
from hllm.segments import long_tail_items, segment_masks, segment_metrics, train_counts

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


def _toy_split(tmp_path):
    # Items 1..5 (raw ids 10..50). Training items per user are all but the last two.
    # u1: 10 10? no repeats: 10, 20, 30 | valid 40 | test 50 (never in anyone's training -> cold)
    # u2: 10, 20 | valid 30 | test 10 (10 trained twice -> warm, head)
    # u3: 10, 30 | valid 20 | test 40 (40 in nobody's training -> cold)
    # u4: 20, 10 | valid 40 | test 30 (30 trained once -> warm, tail)
    inter = [(1, 10, 5, 1), (1, 20, 5, 2), (1, 30, 5, 3), (1, 40, 5, 4), (1, 50, 5, 5),
             (2, 10, 5, 1), (2, 20, 5, 2), (2, 30, 5, 3), (2, 10, 5, 4),
             (3, 10, 5, 1), (3, 30, 5, 2), (3, 20, 5, 3), (3, 40, 5, 4),
             (4, 20, 5, 1), (4, 10, 5, 2), (4, 40, 5, 3), (4, 30, 5, 4)]
    items = [(i, f"t{i}", "g") for i in (10, 20, 30, 40, 50)]
    return build_split(read_dataset(str(write_recbole(tmp_path / "d", inter, items))), DataConfig())


def test_segments_by_hand(tmp_path):
    split = _toy_split(tmp_path)
    counts = train_counts(split)
    # training items: u1 10,20,30; u2 10,20; u3 10,30; u4 20,10
    assert counts.tolist() == [0, 4, 3, 2, 0, 0]
    # 5 items, head = round(0.2 * 5) = 1 item (10); the rest is the long tail
    assert long_tail_items(counts).tolist() == [False, False, True, True, True, True]
    masks = segment_masks(split, "test")
    # test targets: u1 50 (cold), u2 10 (warm, head), u3 40 (cold), u4 30 (warm, tail)
    assert masks["warm"].tolist() == [False, True, False, True]
    assert masks["cold"].tolist() == [True, False, True, False]
    assert masks["long_tail"].tolist() == [True, False, True, True]
    ranks = np.array([1.0, 3.0, 20.0, 7.0])
    seg = segment_metrics(ranks, masks)
    assert seg["warm"]["users"] == 2 and seg["cold"]["users"] == 2
    assert seg["warm"]["recall@10"] == pytest.approx(1.0)
    assert seg["warm"]["ndcg@10"] == pytest.approx((1 / np.log2(4) + 1 / np.log2(8)) / 2)
    assert seg["cold"]["recall@10"] == pytest.approx(0.5)
    assert seg["cold"]["mrr"] == pytest.approx((1 / 1 + 1 / 20) / 2)
    assert seg["long_tail"]["users"] == 3
    assert seg["long_tail"]["ndcg@10"] == pytest.approx((1.0 + 0 + 1 / np.log2(8)) / 3)


def test_empty_segment_is_null_not_nan():
    seg = segment_metrics(np.array([1.0, 2.0]), {"cold": np.array([False, False])})
    assert seg["cold"]["users"] == 0 and seg["cold"]["ndcg@10"] is None


def test_cold_items_by_hand(tmp_path):
    # First interactions: 10@1, 20@2, 30@3, 40@6, 50@8. cold_items=0.4 -> 2 newest: 50, 40.
    inter = [(1, 10, 5, 1), (1, 20, 5, 2), (1, 40, 5, 6), (1, 30, 5, 7), (1, 50, 5, 8),
             (2, 20, 5, 3), (2, 30, 5, 3), (2, 10, 5, 4), (2, 40, 5, 9),
             (3, 30, 5, 5), (3, 10, 5, 6), (3, 50, 5, 9), (3, 20, 5, 10)]
    items = [(i, f"t{i}", "g") for i in (10, 20, 30, 40, 50)]
    raw = read_dataset(str(write_recbole(tmp_path / "d", inter, items)))
    split = build_split(raw, DataConfig(cold_items=0.4))
    assert split.item_raw_ids == ["", "10", "20", "30", "40", "50"]  # cold items stay in the catalog
    # u1: 10 20 (40 dropped) 30 | test 50; u2: 20 30 10 | test 40; u3: 30 10 (50 dropped) 20
    assert [s.tolist() for s in split.sequences] == [[1, 2, 3, 5], [2, 3, 1, 4], [3, 1, 2]]
    masks = segment_masks(split, "test")
    assert masks["cold"].tolist() == [True, True, False]
    with pytest.raises(DataError, match="cold_items"):
        build_split(raw, DataConfig(cold_items=1.5))


def test_no_cold_item_in_training_or_validation_on_ml100k():
    raw = read_dataset(str(ML100K))
    plain = build_split(raw, DataConfig())
    split = build_split(raw, DataConfig(cold_items=0.2))
    assert split.num_items == plain.num_items  # the catalog keeps every item
    first = raw.interactions.groupby("item_id")["timestamp"].min()
    by_age = sorted(first.items(), key=lambda kv: (kv[1], int(kv[0])))  # ties: by id, as the split
    newest = {str(item) for item, _ in by_age[-int(round(0.2 * len(by_age))):]}
    index = {raw_id: i for i, raw_id in enumerate(split.item_raw_ids)}
    cold = {index[r] for r in newest}
    assert len(cold) == 336
    for user in range(split.num_users):
        assert not cold & set(split.history(user, "test").tolist())  # train + valid
        assert split.target(user, "valid") not in cold
    masks = segment_masks(split, "test")
    cold_targets = sum(split.target(u, "test") in cold for u in range(split.num_users))
    assert masks["cold"].sum() == cold_targets == 105


def test_cold_items_are_never_sampled_as_negatives(toy_data, tmp_path):
    from hllm.config import load_config
    from hllm.train import Trainer

    cfg = load_config("cpu-tiny", None, {"data.cold_items": 0.3, "train.num_negatives": 64})
    trainer = Trainer(cfg, "sasrec", str(toy_data), tmp_path / "run", progress=False)
    trainer.setup()
    cold = set(trainer.split.cold_items)
    assert len(cold) == 18  # 30% of the toy's 60 items
    drawn = set(torch.cat([trainer.negatives(step) for step in range(200)]).tolist())
    assert not drawn & cold
    assert drawn == set(range(1, trainer.split.num_items + 1)) - cold  # every other item can be
    for window in trainer.windows:
        assert not cold & set(window.tolist())
