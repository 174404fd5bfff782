"""Linear probes on knowledge vectors: they find a signal that is there, and only then."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hllm import strict_json
from hllm.msr.data import MSRRows
from hllm.msr.knowledge import Knowledge, KnowledgeStats
from hllm.msr.probes import cross_validated, probe_knowledge, run_probes, scenario_similarity

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

SCEN = ["family", "action"]


def rows_and_users(n: int = 200, seed: int = 0) -> tuple[MSRRows, list[str], np.ndarray]:
    """n users with a positive rate per scenario, an age and a gender; returns the rows,
    the user ids and each user's (rate_family, rate_action, age, is_female)."""
    rng = np.random.default_rng(seed)
    users = [str(u) for u in range(1, n + 1)]
    rate = rng.uniform(0.1, 0.9, (n, 2))
    age = rng.integers(16, 60, n)
    female = rng.integers(0, 2, n)
    recs = [(u, str(k), SCEN[s], int(rng.random() < rate[i, s]), k)
            for i, u in enumerate(users) for s in range(2) for k in range(40)]
    train = pd.DataFrame(recs, columns=["user_id", "item_id", "scenario", "label", "timestamp"])
    table = pd.DataFrame({"user_id": users, "age": age, "gender": np.where(female, "F", "M")})
    rows = MSRRows({"train": train, "valid": train.iloc[:0], "test": train.iloc[:0]}, SCEN, table,
                   pd.DataFrame({"item_id": [], "title": []}))
    truth = np.column_stack([rate, age, female]).astype(float)
    return rows, users, truth


def test_a_signal_written_into_the_vectors_is_read_on_held_out_users_and_random_is_not():
    rows, users, truth = rows_and_users()
    rng = np.random.default_rng(1)
    # 64-dim vectors: the four facts (standardised) mixed in linearly with 60 noise dimensions.
    facts = (truth - truth.mean(0)) / truth.std(0)
    vectors = np.column_stack([facts, rng.standard_normal((len(users), 60))]) @ rng.standard_normal((64, 64))
    by = {r.target: r for r in run_probes(vectors, users, rows)}
    assert set(by) == {"positive rate: family", "positive rate: action", "gender (F)", "age"}
    for name in ("positive rate: family", "positive rate: action"):
        assert by[name].knowledge > 0.6 and by[name].random < 0.1, by[name]  # R^2
    assert by["gender (F)"].knowledge > 0.95 and abs(by["gender (F)"].random - 0.5) < 0.15
    assert by["age"].knowledge > 0.6 and by["age"].random < 0.1


def test_vectors_without_the_signal_score_like_the_random_control():
    rows, users, _ = rows_and_users()
    vectors = np.random.default_rng(7).standard_normal((len(users), 64))
    for r in run_probes(vectors, users, rows):
        assert r.knowledge < r.chance + 0.12, r


def test_the_scored_fold_never_fits_the_probe():
    """Pure noise targets: an in-sample fit would score high, held-out users score <= 0."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((120, 100)), rng.standard_normal(120)
    pred = cross_validated(x, y)
    assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() < 0.05


def test_scenario_similarity_against_random():
    base = np.random.default_rng(0).standard_normal(16)
    alike = base + 0.01 * np.random.default_rng(1).standard_normal((4, 16))
    same, control = scenario_similarity(alike)
    assert same > 0.99 and abs(control) < 0.5


def test_probe_knowledge_reports_user_probes_scenario_cosine_and_cost_as_json():
    """The one report `hllm msr probe` and the benchmarks write: strict JSON, every part present."""
    rows, users, truth = rows_and_users()
    facts = (truth - truth.mean(0)) / truth.std(0)
    stats = KnowledgeStats(prompts=len(users), cache_hit=True, llm_forward_calls=0, seconds=0.0, path="x")
    user_k = Knowledge(users, torch.tensor(np.column_stack([facts, facts]), dtype=torch.float32), stats)
    base = np.random.default_rng(0).standard_normal(16)
    scen_k = Knowledge(SCEN, torch.tensor(np.stack([base, base + 0.01]), dtype=torch.float32), stats)
    report = probe_knowledge(scen_k, user_k, rows)
    saved = json.loads(strict_json.dumps(report.to_dict()))
    assert set(saved) == {"probes", "scenario_cosine", "scenario_cosine_random", "knowledge"}
    assert saved["scenario_cosine"] > 0.99 > abs(saved["scenario_cosine_random"])
    assert saved["knowledge"]["prompts"] == len(users)
    assert {p["target"] for p in saved["probes"]} == {"positive rate: family", "positive rate: action",
                                                     "gender (F)", "age"}
    assert "mean pairwise cosine 1.000" in report.render()
