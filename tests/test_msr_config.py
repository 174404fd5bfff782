"""The MSR config's values are checked before any data is read, like the run config's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hllm.errors import ConfigError
from hllm.msr.config import MSR_RULES, PRESETS, load_msr_config

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_within_its_rules(preset):
    load_msr_config(preset)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "msr").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_msr_config_is_within_its_rules(path):
    load_msr_config(None, path)


def test_every_bad_value_is_named_together():
    with pytest.raises(ConfigError) as info:
        load_msr_config("cpu-tiny", overrides={"train.epochs": 0, "train.lr": -1.0,
                                               "model.backbone": "transformer",
                                               "model.dropout": 1.5, "knowledge.pooling": "max"})
    assert str(info.value).splitlines()[1:] == [
        "  'train.epochs': 0, must be >= 1",
        "  'train.lr': -1.0, must be > 0",
        "  'model.dropout': 1.5, must be in [0, 0.99]",
        "  'model.backbone': 'transformer', must be one of star, mmoe, shared-bottom, ple",
        "  'knowledge.pooling': 'max', must be one of last, mean, answer",
    ]


def test_the_splits_must_leave_rows_for_the_test():
    with pytest.raises(ConfigError, match=r"'data.train_frac' \+ 'data.valid_frac': 0.9 \+ 0.1, must be < 1"):
        load_msr_config("cpu-tiny", overrides={"data.train_frac": 0.9, "data.valid_frac": 0.1})


def test_the_choices_are_the_ones_the_code_has():
    from hllm.msr.backbones import BACKBONES
    from hllm.msr.data import SCENARIO_RULES
    from hllm.msr.meta import ACTIVATIONS

    assert MSR_RULES.one_of["model.backbone"] == tuple(BACKBONES)
    assert MSR_RULES.one_of["model.meta_activation"] == tuple(ACTIVATIONS)
    assert MSR_RULES.one_of["data.scenario_rule"] == SCENARIO_RULES


def test_msr_train_refuses_before_reading_data_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "hllm.cli", "msr", "train", "--preset", "cpu-tiny",
         "--set", "train.epochs=-1", "--data", str(tmp_path / "no-such-data"), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ})
    assert result.returncode == 2, result.stderr
    assert "'train.epochs': -1, must be >= 1" in result.stderr
    assert "no-such-data" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
