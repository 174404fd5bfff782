"""`hllm ab readout` on logs with known answers: the statistics, the sample-ratio test, each
guardrail state and every branch of the recommendation. Users are routed by the real
hllm.assignment, clicks drawn with known rates, so what the readout must say is known.
(The end-to-end replay through a real server is in test_online.py.)"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hllm.assignment import assign
from hllm.errors import ConfigError, DataError
from hllm.experiment import load_ab_config, parse_ab_config
from hllm.online import ab_stats
from hllm.online.exposure import ExposureLog
from hllm.online.readout import readout, render_html, render_text

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ab" / "hllm-rollout.yaml"
START = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def traffic(cfg, users: int = 4000, ctr: dict[str, float] | None = None, ramp: float | None = 1,
            days: float = 1.5, latency: dict[str, float] | None = None,
            error_rate: float = 0.0, skew: float = 0.0, seed: int = 0,
            versions: tuple[str, str] = ("1", "2")) -> list[dict]:
    """A log as `hllm serve` writes it: one request per user, clicks with the arm's rate.

    `versions`: the registry versions control and treatment served.

    `skew` drops that share of treatment users' records (a logging bug: the SRM must see it).
    """
    rng = random.Random(seed)
    ctr = ctr or {"control": 0.10, "treatment": 0.10}
    latency = latency or {"control": 12.0, "treatment": 14.0}
    records = []
    for u in range(users):
        user = f"u{u}"
        a = assign(cfg, user, ramp)
        if a.arm == "outside" or (a.arm == "treatment" and rng.random() < skew):
            continue
        served = a.serve
        base = {"request_id": f"r{u}", "time": (START + dt.timedelta(days=days * u / users)).isoformat(),
                "user": user, "arm": a.arm, "served": served, "in_ramp": a.in_ramp, "ramp": ramp,
                "model": cfg.model, "version": versions[served == "treatment"],
                "latency_ms": latency[served] + rng.expovariate(1 / 2)}
        if served == "treatment" and rng.random() < error_rate:
            records.append({**base, "kind": "error", "status": 500, "error": "boom"})
            continue
        items = [f"i{j}" for j in range(10)]
        records.append({**base, "kind": "exposure", "items": items, "scores": [0.0] * 10})
        rate = ctr["treatment" if served == "treatment" and a.in_ramp else "control"]
        clicked = [items[rng.randrange(10)]] if rng.random() < rate else []
        records.append({"kind": "feedback", "request_id": f"r{u}", "user": user,
                        "time": base["time"], "clicked": clicked})
    return records


@pytest.fixture(scope="module")
def cfg():
    return load_ab_config(CONFIG)


# ----------------------------------------------------------------- statistics
def test_delta_method_matches_a_user_bootstrap_on_clustered_data():
    rng = np.random.default_rng(0)
    exposures = rng.geometric(1 / 20, size=2000)  # a long tail of heavy users
    clicks = rng.binomial(exposures, rng.beta(2, 18, size=2000))  # per-user click rates
    r = ab_stats.ratio(clicks, exposures)
    boot = [clicks[i].sum() / exposures[i].sum()
            for i in (rng.integers(0, 2000, 2000) for _ in range(2000))]
    assert r.value == pytest.approx(clicks.sum() / exposures.sum())
    assert math.sqrt(r.variance) == pytest.approx(np.std(boot), rel=0.08)
    # Treating exposures as independent would understate the spread on this data.
    naive = math.sqrt(r.value * (1 - r.value) / exposures.sum())
    assert naive < 0.8 * math.sqrt(r.variance)


def test_one_exposure_per_user_reduces_to_the_binomial_interval():
    clicks = np.array([1] * 30 + [0] * 270)
    r = ab_stats.ratio(clicks, np.ones(300))
    assert r.variance == pytest.approx(0.1 * 0.9 / 299, rel=1e-9)  # the sample variance / n


def test_relative_change_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        c = ab_stats.ratio(rng.binomial(1, 0.10, 3000), np.ones(3000))
        t = ab_stats.ratio(rng.binomial(1, 0.11, 3000), np.ones(3000))
        change = ab_stats.relative_change(t, c)
        covered += change.low <= 0.1 <= change.high
    assert 0.92 <= covered / 400 <= 0.98


def test_sample_ratio_test_passes_the_allocation_and_flags_a_skew():
    allocation = {"control": 45, "treatment": 45, "holdout": 10}
    fine = ab_stats.sample_ratio({"control": 4480, "treatment": 4530, "holdout": 990}, allocation)
    assert not fine.mismatch and fine.p_value > 0.1
    skewed = ab_stats.sample_ratio({"control": 4500, "treatment": 4100, "holdout": 1000}, allocation)
    assert skewed.mismatch, skewed


# ----------------------------------------------------------------- recommendations
def test_a_stage_that_ran_its_days_with_guardrails_held_advances(cfg):
    better = {"control": 0.10, "treatment": 0.15}  # a noisy estimate at 1% must not dip below -2%
    r = readout(cfg, traffic(cfg, users=15000, ramp=1, days=1.5, ctr=better))
    assert r.decision == "advance", r.reasons
    assert "--ramp-percent 10" in r.next_step
    assert not r.sample_ratio.mismatch
    assert r.stage["index"] == 0 and r.stage["days_run"] == pytest.approx(1.5, abs=0.01)
    assert [g.status for g in r.guardrails] == ["held", "held", "held"]
    # At 1% only the first 1% of the treatment range is treated: the rest is served control
    # and counted in neither arm, while the sample-ratio test counts assignment.
    assert r.arms["treatment"].users < 0.05 * r.arms["control"].users
    assert sum(r.sample_ratio.observed.values()) > 14000


def test_the_last_stage_ends_the_experiment(cfg):
    r = readout(cfg, traffic(cfg, ramp=None, days=8, ctr={"control": 0.10, "treatment": 0.12}))
    assert r.decision == "advance", r.reasons
    assert r.stage["index"] == len(cfg.ramp) - 1
    assert "end the experiment" in r.next_step
    assert f"hllm ab promote --ab-config {CONFIG}" in r.next_step  # the command that promotes


def test_a_stage_short_of_its_days_holds(cfg):
    r = readout(cfg, traffic(cfg, ramp=10, days=0.5))
    assert r.decision == "hold"
    assert any("has run 0.50 of its 2 days" in x for x in r.reasons), r.reasons


def test_slow_treatment_rolls_back(cfg):
    r = readout(cfg, traffic(cfg, ramp=45, days=8, latency={"control": 12, "treatment": 60}))
    assert r.decision == "roll back"
    assert any("p99_latency_ms" in x for x in r.reasons), r.reasons
    assert "hllm rollback --ab-config" in r.next_step


def test_errors_over_the_limit_roll_back(cfg):
    r = readout(cfg, traffic(cfg, ramp=45, days=8, error_rate=0.01))
    assert r.decision == "roll back"
    assert any("error_rate" in x for x in r.reasons) and r.arms["treatment"].errors > 0


def test_click_through_clearly_down_rolls_back_and_unclear_holds(cfg):
    worse = readout(cfg, traffic(cfg, users=20000, ramp=45, days=8,
                                 ctr={"control": 0.20, "treatment": 0.15}))
    assert worse.decision == "roll back", worse.reasons
    change = worse.changes["ctr_relative_change"]
    assert change.high < -0.02 and change.low < change.value < change.high
    # Fewer users, a smaller drop: the estimate is past -2% but the interval reaches it.
    unclear = readout(cfg, traffic(cfg, users=3000, ramp=45, days=8,
                                   ctr={"control": 0.20, "treatment": 0.19}, seed=3))
    ctr_guard = next(g for g in unclear.guardrails if g.metric == "ctr_relative_change")
    assert ctr_guard.status == "at risk", ctr_guard
    assert unclear.decision == "hold"


def test_a_sample_ratio_mismatch_holds_whatever_the_metrics_say(cfg):
    r = readout(cfg, traffic(cfg, users=10000, ramp=45, days=8, skew=0.1))
    assert r.sample_ratio.mismatch
    assert r.decision == "hold"
    assert any("sample ratio mismatch" in x for x in r.reasons)


def test_too_few_users_hold(cfg):
    r = readout(cfg, traffic(cfg, users=150, ramp=45, days=8))
    assert r.decision == "hold"
    assert any("fewer than 100" in x for x in r.reasons), r.reasons


def test_hit_at_k_counts_clicks_within_the_top_k(cfg):
    user = next(f"u{i}" for i in range(100) if assign(cfg, f"u{i}").arm == "control")
    items = [f"i{j}" for j in range(10)]
    base = {"kind": "exposure", "time": START.isoformat(), "user": user, "arm": "control",
            "served": "control", "in_ramp": True, "ramp": None, "model": cfg.model,
            "version": "1", "latency_ms": 5.0, "items": items, "scores": [0] * 10}
    records = [{**base, "request_id": "a"}, {**base, "request_id": "b"},
               {"kind": "feedback", "request_id": "a", "user": user, "clicked": ["i7"]},
               {"kind": "feedback", "request_id": "b", "user": user, "clicked": ["i2"]},
               {"kind": "feedback", "request_id": "zzz", "user": user, "clicked": ["i2"]}]
    r = readout(cfg, records, ks=(5, 10), min_users=1)
    assert r.arms["control"].ctr.value == 1.0
    assert r.arms["control"].hits[5].value == 0.5 and r.arms["control"].hits[10].value == 1.0
    assert r.feedback_unmatched == 1


def test_text_html_and_json_carry_the_decision(cfg, tmp_path):
    r = readout(cfg, traffic(cfg, ramp=10, days=0.5))
    text = render_text(r)
    assert "recommendation: HOLD" in text and "hit@10" in text and "sample ratio" in text
    page = render_html(r)
    assert "HOLD" in page and "<table>" in page
    assert json.loads(json.dumps(r.to_dict()))["decision"] == "hold"


def test_an_unknown_guardrail_metric_is_refused_with_its_key():
    raw = yaml.safe_load(CONFIG.read_text())
    raw["guardrails"][0]["metric"] = "p95_latency"
    with pytest.raises(ConfigError, match=r"guardrails\[0\]\.metric: 'p95_latency'"):
        parse_ab_config(raw)


def test_a_log_without_the_model_is_one_clear_error(cfg):
    with pytest.raises(DataError, match="no exposures of model 'hllm'"):
        readout(cfg, [{"kind": "exposure", "model": "other", "user": "1"}], log="x")


def test_cli_reads_a_written_log_and_exits_2_on_a_missing_one(cfg, tmp_path):
    log = ExposureLog(tmp_path / "log", flush_seconds=0.1)
    for record in traffic(cfg, users=600, ramp=1, days=1.5):
        log.append(record)
    log.close()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "hllm.cli", "ab", "readout", "--ab-config",
                          str(CONFIG), "--exposure-log", str(tmp_path / "log"), "--html",
                          str(tmp_path / "readout.html")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "recommendation: " in run.stdout and (tmp_path / "readout.html").is_file()
    assert "MLflow: not logged" in run.stderr
    missing = subprocess.run([sys.executable, "-m", "hllm.cli", "ab", "readout", "--ab-config",
                              str(CONFIG), "--exposure-log", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ") and "nope" in missing.stderr
