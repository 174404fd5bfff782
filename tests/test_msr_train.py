"""Tiny end-to-end: each backbone alone and with LLM4MSR trains on a synthetic multi-scenario set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from hllm.msr.config import cpu_tiny, load_msr_config
from hllm.msr.data import MSRRows, encode, time_split
from hllm.msr.train import build_model, compare, run_variant, train_msr

SCEN = ["family", "action", "thriller"]
THREADS_AT_IMPORT = torch.get_num_threads()  # before any test has run


def synthetic_rows(n_users: int = 30, per_user: int = 60, seed: int = 0) -> MSRRows:
    """Each user loves one scenario (80% clicks there, 20% elsewhere); events interleaved in time
    so every user appears in every split."""
    rng = np.random.default_rng(seed)
    recs = []
    for u in range(1, n_users + 1):
        fav = u % len(SCEN)
        for k in range(per_user):
            s = int(rng.integers(0, len(SCEN)))
            item = 1 + s * 10 + int(rng.integers(0, 10))
            recs.append((str(u), str(item), SCEN[s], int(rng.random() < (0.8 if s == fav else 0.2)),
                         k * 1000 + u))
    rows = pd.DataFrame(recs, columns=["user_id", "item_id", "scenario", "label", "timestamp"])
    rows = rows.sort_values("timestamp", kind="stable").reset_index(drop=True)
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 31)],
                          "movie_title": [f"Movie {i}" for i in range(1, 31)]})
    users = pd.DataFrame({"user_id": [str(u) for u in range(1, n_users + 1)]})
    return MSRRows(time_split(rows, 0.8, 0.1), SCEN, users, items)


@pytest.fixture(scope="module")
def enc():
    return encode(synthetic_rows())


def _cfg(backbone: str = "star"):
    cfg = cpu_tiny()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=backbone),
                               train=dataclasses.replace(cfg.train, epochs=8, patience=3, batch_size=64))


@pytest.mark.parametrize("backbone", ["star", "mmoe", "shared-bottom", "ple"])
def test_backbone_and_llm4msr_learn_user_scenario_preferences(enc, backbone):
    torch.set_num_threads(1)  # tiny models: one thread is faster; conftest restores it after
    # Knowledge that really carries each user's favourite scenario: LLM4MSR can read it.
    users = torch.tensor([int(u) for u in enc.knowledge_users])
    user_k = torch.nn.functional.one_hot(users % 3, 3).float() + 0.01 * torch.randn(len(users), 3)
    scen_k = torch.eye(3)
    plain = run_variant(_cfg(backbone), enc, knowledge=None, progress=False)
    meta = run_variant(_cfg(backbone), enc, knowledge=(scen_k, user_k), progress=False)
    for run in (plain, meta):
        losses = [h["train_loss"] for h in run["history"]]
        assert losses[-1] < losses[0]
        # the label depends only on (user, scenario): 0.8/0.2 clicks -> AUC ceiling 0.8*0.8+... ~0.8
        assert run["valid"]["auc"] > 0.65, run["valid"]
        assert set(k for k in run["test"] if k.startswith("auc/")) == {f"auc/{s}" for s in SCEN}
    assert meta["model"] == f"{backbone}+llm4msr" and meta["params"] > plain["params"]


def test_same_seed_gives_the_same_backbone_start(enc):
    cfg = _cfg()
    plain = build_model(cfg, enc)
    wrapped = build_model(cfg, enc, torch.zeros(3, 4), torch.zeros(len(enc.knowledge_users), 4))
    for (name, a), b in zip(plain.state_dict().items(), wrapped.backbone.state_dict().values()):
        assert torch.equal(a, b), name


def test_early_stopping_keeps_the_best_epoch(enc):
    cfg = _cfg()
    model = build_model(cfg, enc)
    result = train_msr(model, enc, dataclasses.replace(cfg.train, epochs=6, patience=1, lr=0.5),
                       progress=False)
    aucs = [h["valid_auc"] for h in result.history]
    assert result.best_valid_auc == max(aucs) and result.best_epoch == int(np.argmax(aucs))
    assert len(aucs) <= result.best_epoch + 2  # stopped one epoch after the last improvement


def test_compare_runs_knowledge_then_both_variants(tmp_path):
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2),
                              knowledge=dataclasses.replace(cfg.knowledge, max_prompt_tokens=96,
                                                            batch_size=16))
    rows = synthetic_rows(n_users=12, per_user=30)
    out = compare(cfg, "unused", rows=rows, progress=False)
    assert [r["model"] for r in out["runs"]] == ["star", "star+llm4msr"]
    assert out["knowledge"]["user"]["prompts"] == 12 and not out["knowledge"]["user"]["cache_hit"]
    again = compare(cfg, "unused", rows=rows, progress=False)  # knowledge now from the cache
    assert again["knowledge"]["user"]["cache_hit"] and again["knowledge"]["user"]["llm_forward_calls"] == 0
    assert again["runs"][1]["test"] == out["runs"][1]["test"]  # same seed, same data -> same result


def test_compare_takes_a_list_of_backbones():
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1),
                              knowledge=dataclasses.replace(cfg.knowledge, max_prompt_tokens=96,
                                                            batch_size=16))
    out = compare(cfg, "unused", backbones=("shared-bottom", "ple"),
                  rows=synthetic_rows(n_users=12, per_user=30), progress=False)
    assert [r["model"] for r in out["runs"]] == ["shared-bottom", "shared-bottom+llm4msr",
                                                "ple", "ple+llm4msr"]
    from hllm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown backbone\(s\) 'cgc'.*shared-bottom, ple"):
        compare(cfg, "unused", backbones=("ple", "cgc"))  # fails before reading any data


def test_yaml_config_overrides_the_preset(tmp_path):
    path = tmp_path / "msr.yaml"
    path.write_text("base: cpu-tiny\nmodel:\n  backbone: mmoe\ntrain:\n  lr: 0.01\n")
    cfg = load_msr_config(config_file=path, overrides={"train.epochs": 1})
    assert (cfg.preset, cfg.model.backbone, cfg.train.lr, cfg.train.epochs) == ("cpu-tiny", "mmoe", 0.01, 1)
    from hllm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'train.lrr': unknown key 'lrr'.*\n.*'model.width'"):
        load_msr_config("cpu-tiny", overrides={"train.lrr": 1, "model.width": 3})


def test_thread_count_pinned_by_a_test_is_restored_for_the_next():
    # Runs after the parametrized test above, which pinned one thread.
    assert torch.get_num_threads() == THREADS_AT_IMPORT


def test_training_repeats_bit_for_bit_on_two_threads(enc):
    """train.deterministic: the same seed gives the same weights, whatever the thread schedule."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for _ in range(2):
            model = build_model(_cfg("star"), enc, torch.eye(3), torch.randn(len(enc.knowledge_users), 3,
                                                                           generator=torch.Generator().manual_seed(0)))
            train_msr(model, enc, dataclasses.replace(_cfg("star").train, epochs=2), progress=False)
            states.append(model.state_dict())
            assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    finally:
        torch.set_num_threads(threads)
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
