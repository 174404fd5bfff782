"""Presets, YAML overrides and --set: typed, and every bad key reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hllm.config import PRESETS, load_config, parse_set
from hllm.errors import ConfigError

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    cfg = load_config(name)
    assert cfg.preset == name


def test_yaml_base_and_set_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: cpu-tiny\ntrain:\n  epochs: 7\nitem_llm:\n  pooling: mean\n")
    cfg = load_config(None, path, parse_set(["train.lr=3e-4", "data.text_fields=title,genre"]))
    assert (cfg.preset, cfg.train.epochs, cfg.train.lr) == ("cpu-tiny", 7, 3e-4)
    assert cfg.item_llm.pooling == "mean" and cfg.data.text_fields == ("title", "genre")


def test_all_bad_keys_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", None, {"train.lrr": 1, "nope.x": 1, "train.epochs": "many"})
    text = str(err.value)
    assert "unknown key 'lrr' in train" in text
    assert "unknown section 'nope'" in text
    assert "'train.epochs': invalid literal" in text or "'train.epochs'" in text


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'gpu-huge'"):
        load_config("gpu-huge")


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")))
def test_shipped_yaml_configs_load(path):
    cfg = load_config(None, path)
    assert cfg.preset in PRESETS


def test_values_out_of_range_are_all_refused_at_once_before_anything_is_written(tmp_path,
                                                                                 capsys):
    """`--set train.epochs=-1` used to train nothing and exit 0; batch_size=0 and lr=-5 ended
    in tracebacks after config.yaml was written. Now every bad value is named, exit 2."""
    from hllm.cli import main

    out = tmp_path / "run"
    code = main(["train", "--preset", "cpu-tiny", "--data", str(tmp_path / "never-read"),
                 "--out", str(out), "--set", "train.epochs=-1", "--set", "train.batch_size=0",
                 "--set", "train.lr=-5", "--set", "train.warmup_ratio=2",
                 "--set", "train.strategy=zero"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    for words in ("'train.epochs': -1, must be >= 1", "'train.batch_size': 0, must be >= 1",
                  "'train.lr': -5.0, must be > 0", "'train.warmup_ratio': 2.0, must be in [0, 1]",
                  "'train.strategy': 'zero', must be one of ddp, fsdp"):
        assert words in err, err


def test_every_preset_and_shipped_config_is_in_range():
    from hllm.config import check_values

    for preset in PRESETS.values():
        check_values(preset())
    shipped = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert shipped
    for path in shipped:
        load_config(None, path)


@pytest.mark.parametrize("load", ["run", "msr", "ab"])
def test_a_tab_indented_yaml_is_named_in_one_line(tmp_path, load):
    """PyYAML says "found character '\\t' that cannot start any token": the operator is
    told the file, the line and what to do instead."""
    from hllm.experiment import load_ab_config
    from hllm.msr.config import load_msr_config

    path = tmp_path / "tabs.yaml"
    path.write_text("train:\n\tepochs: 2\n")
    read = {"run": lambda: load_config("cpu-tiny", path),
            "msr": lambda: load_msr_config(None, path),
            "ab": lambda: load_ab_config(path)}[load]
    with pytest.raises(ConfigError) as info:
        read()
    assert str(info.value) == (f"{path}: line 2, column 1: a tab indents this line; "
                               "YAML indents with spaces only")


def test_yaml_that_does_not_parse_names_the_place(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML: line 3, column 1: "
                                          r"expected ',' or ']'"):
        load_config("cpu-tiny", path)
