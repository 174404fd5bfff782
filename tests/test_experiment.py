"""A/B configs refuse what ops could not run; assignment is stable, salted and on target."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hllm.assignment import assign, bucket
from hllm.errors import ConfigError
from hllm.experiment import check_layer, load_ab_config, parse_ab_config

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "ab" / "hllm-rollout.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_shipped_example_is_valid():
    cfg = load_ab_config(EXAMPLE)
    assert cfg.allocation == {"control": 45.0, "treatment": 45.0, "holdout": 10.0}
    assert [s.percent for s in cfg.ramp] == [1, 10, 45]
    assert cfg.control.uri("hllm") == "models:/hllm@champion"


@pytest.mark.parametrize("edit, field, words", [
    (lambda c: c["allocation"].update(holdout=20), "allocation", "must sum to 100, got 110"),
    (lambda c: c["ramp"].insert(2, {"percent": 5, "days": 1}), "ramp[2].percent",
     "does not increase"),
    (lambda c: c.update(end="2026-11-30"), "end", "is not after start 2026-12-01"),
    (lambda c: c.update(treatment={"version": 0}), "treatment.version", "a positive integer"),
    (lambda c: c.update(treatment={"alias": "challanger"}), "treatment.alias",
     "'challanger' is not an alias the platform sets (known: champion, challenger"),
    (lambda c: c["bucketing"].update(salt=""), "bucketing.salt", "required"),
    (lambda c: c.update(colour="blue"), "colour", "unknown field"),
    (lambda c: c["gate"].update(min_uplift={"recall@10": 0.01}), "gate.min_uplift",
     "no entry for the primary metric"),
    (lambda c: c["gate"].update(baseline_margin="strict"), "gate.baseline_margin",
     "point or interval"),
    (lambda c: c["gate"].update(task="regression"), "gate.task", "one of ranking, ctr"),
    (lambda c: c["gate"].update(promote="after_readout"), "gate.promote",
     "one of on_pass, after_experiment, got 'after_readout'"),
    (lambda c: c["gate"]["segments"].update(coldest={"min_uplift": 0.0}), "gate.segments.coldest",
     "unknown segment (known: overall, warm, long_tail, cold)"),
    (lambda c: c["gate"]["segments"].update(cold={"uplift": 0.0}), "gate.segments.cold.uplift",
     "unknown rule (known: min_uplift, tolerance)"),
    (lambda c: c["gate"]["segments"].update(warm={"tolerance": -1}), "gate.segments.warm.tolerance",
     ">= 0"),
])
def test_bad_configs_name_the_field(edit, field, words):
    raw = example()
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_ab_config(raw, source="exp.yaml")
    message = str(info.value)
    assert message.startswith("exp.yaml: invalid A/B config")
    assert f"  - {field}: " in message and words in message, message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case, words", [
    ("invalid date", "start: an ISO date (YYYY-MM-DD), got '2026-02-30'"),
    ("duplicate key", "duplicate key 'allocation' (first on line"),
    ("missing --others", "--others"),
])
def test_ab_validate_names_the_problem_in_one_line(tmp_path, case, words):
    text = EXAMPLE.read_text()
    args = []
    if case == "invalid date":
        text = text.replace("start: 2026-12-01", "start: 2026-02-30")
    elif case == "duplicate key":
        text += "\nallocation: {control: 50, treatment: 50, holdout: 0}\n"
    else:
        args = ["--others", str(tmp_path / "no-such-dir")]
    (tmp_path / "exp.yaml").write_text(text)
    assert text != EXAMPLE.read_text() or args
    done = _cli("ab", "validate", str(tmp_path / "exp.yaml"), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert words in done.stderr and "valid (" not in done.stdout


def test_ab_validate_warns_of_a_treatment_alias_when_promotion_waits(tmp_path):
    """after_experiment with treatment {alias: challenger}: the next registration would swap
    the arm, so validate says so, but still passes (it is legal); pinned, it says nothing."""
    raw = example()
    raw["gate"]["promote"] = "after_experiment"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    warned = _cli("ab", "validate", str(tmp_path / "exp.yaml"))
    assert warned.returncode == 0 and "valid (" in warned.stdout, warned.stderr[-1500:]
    assert "warning: " in warned.stderr and "treatment: {alias: challenger} moves" in warned.stderr
    raw["treatment"] = {"version": 3}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    pinned = _cli("ab", "validate", str(tmp_path / "exp.yaml"))
    assert pinned.returncode == 0 and "warning" not in pinned.stderr, pinned.stderr[-1500:]
    assert load_ab_config(EXAMPLE).gate.promote == "on_pass"  # the shipped default: `make run`


def test_validate_refuses_a_file_as_out_and_reads_percent_coverage(tmp_path):
    data = ROOT.parent / "shared" / "data" / "ml-100k"
    (tmp_path / "taken").write_text("not a directory")
    done = _cli("validate", "--data", str(data), "--out", str(tmp_path / "taken"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "a file, not a directory" in done.stderr
    assert (tmp_path / "taken").read_text() == "not a directory"
    done = _cli("validate", "--data", str(data), "--out", str(tmp_path / "v"),
                "--text-coverage", "90")
    assert done.returncode == 2 and "0.9, or a percentage such as 90%, got '90'" in done.stderr
    assert not (tmp_path / "v").exists()


def test_every_problem_is_reported_at_once():
    raw = example()
    raw["allocation"]["holdout"] = 20
    raw["end"] = "2026-01-01"
    with pytest.raises(ConfigError) as info:
        parse_ab_config(raw)
    assert "allocation:" in str(info.value) and "end:" in str(info.value)


def test_overlapping_experiments_in_one_layer_are_refused():
    first = parse_ab_config(example(), source="a.yaml")
    other = copy.deepcopy(example())
    other.update(name="other-test", start="2026-12-10", end="2027-01-10")
    other["layer"]["slice"] = [50, 100]
    second = parse_ab_config(other, source="b.yaml")
    with pytest.raises(ConfigError, match=r"b.yaml: layer.slice \[50.0, 100.0\] of layer "
                                          r"'home-feed-ranking' overlaps experiment 'hllm-rollout'"):
        check_layer(second, [first])
    # Disjoint slices, another layer, or later dates are all fine.
    first_half = copy.deepcopy(example())
    first_half["layer"]["slice"] = [0, 50]
    check_layer(second, [parse_ab_config(first_half)])
    other["layer"]["name"] = "search-ranking"
    check_layer(parse_ab_config(other), [first])
    other.update(start="2026-12-21", end="2027-01-10")
    other["layer"]["name"] = "home-feed-ranking"
    check_layer(parse_ab_config(other), [first])


def test_buckets_are_fixed_across_code_versions():
    # Golden values of sha256(salt + "\x1f" + unit)[:8] mod 10000: if this changes,
    # every running experiment would silently reshuffle its users.
    assert [bucket(u, "s", 10_000) for u in ("1", "42", "user-7")] == [7698, 2248, 3258]


def test_assignment_is_stable_across_processes():
    code = ("from hllm.experiment import load_ab_config; from hllm.assignment import assign; "
            f"c = load_ab_config({str(EXAMPLE)!r}); "
            "print(','.join(assign(c, str(u)).arm for u in range(200)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    cfg = load_ab_config(EXAMPLE)
    assert outs == {",".join(assign(cfg, str(u)).arm for u in range(200)) + "\n"}


def test_split_matches_the_allocation_chi_square():
    from scipy.stats import chisquare

    cfg = load_ab_config(EXAMPLE)
    n = 100_000
    counts = Counter(assign(cfg, f"user-{u}").arm for u in range(n))
    observed = [counts[a] for a in ("control", "treatment", "holdout")]
    expected = [n * cfg.allocation[a] / 100 for a in ("control", "treatment", "holdout")]
    assert chisquare(observed, expected).pvalue > 0.001, observed
    # A 50/50 hypothesis is clearly rejected: the test has power.
    assert chisquare(observed, [n * 0.5, n * 0.4, n * 0.1]).pvalue < 1e-6


def test_ramp_stage_treats_only_its_share():
    cfg = load_ab_config(EXAMPLE)
    served = Counter(assign(cfg, f"u{u}", ramp_percent=10).serve for u in range(50_000))
    assert 0.09 < served["treatment"] / 50_000 < 0.11


def test_a_new_salt_reshuffles_users():
    raw = example()
    a = parse_ab_config(raw)
    raw["bucketing"]["salt"] = "another-salt"
    b = parse_ab_config(raw)
    same = sum(assign(a, str(u)).arm == assign(b, str(u)).arm for u in range(10_000))
    # Independent hashes agree with probability .45^2 + .45^2 + .1^2 = 0.415.
    assert 0.38 < same / 10_000 < 0.45
