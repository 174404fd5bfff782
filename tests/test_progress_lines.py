"""Every long operation reports progress when stderr is not a terminal (as under pytest, in a
pod or in a kfp.local step): a log line with done/total, rate and time left.

The interval is set to 0 so a line comes at every unit of work; the operations themselves are
the real ones on tiny inputs. (Knowledge extraction has its own test in test_msr_knowledge.)
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys

import pytest
import torch

import hllm.progress

LINE = re.compile(r"^(?P<desc>.+): [\d,]+/[\d,]+ \w+ \(\d+%\), [\d.]+ \w+/s, .+ left$")


@pytest.fixture
def progress_lines(monkeypatch, caplog):
    """The progress lines logged while the test runs, as {desc: [line, ...]}."""
    assert not sys.stderr.isatty()
    monkeypatch.setattr(hllm.progress, "INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="hllm.progress")

    def lines() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for record in caplog.records:
            if record.name == "hllm.progress" and (m := LINE.match(record.getMessage())):
                found.setdefault(m["desc"], []).append(record.getMessage())
        return found

    return lines


def tiny_item_llm():
    from hllm.config import cpu_tiny
    from hllm.models.item_llm import ItemLLM

    torch.manual_seed(0)
    # A small token budget: many batches, so a line after each.
    return ItemLLM(dataclasses.replace(cpu_tiny().item_llm, batch_tokens=64)).eval()


TEXTS = [{"title": f"Movie number {i} " * (1 + i % 5), "genre": "Drama"} for i in range(40)]


def test_item_embedding(progress_lines):
    item_llm = tiny_item_llm()
    item_llm.encode_all(item_llm.tokenize(TEXTS), device=torch.device("cpu"), progress=False)
    assert progress_lines()["embed items"][0].startswith("embed items: ")


def test_frozen_layer_states_for_fine_tuning(progress_lines):
    from hllm.models.prefix_cache import compute_prefix_states

    item_llm = tiny_item_llm()
    compute_prefix_states(item_llm, item_llm.tokenize(TEXTS), 1, device=torch.device("cpu"))
    assert "item states below layer 1" in progress_lines()


def test_onnx_parity_embedding(tmp_path, progress_lines):
    from hllm.onnx_export import export_item_llm_model, onnx_embed, session

    item_llm = tiny_item_llm()
    export_item_llm_model(item_llm, tmp_path)
    onnx_embed(session(tmp_path / "item_llm.onnx", device="cpu"), item_llm.tokenize(TEXTS),
               batch_size=8)
    assert len(progress_lines()["onnx embed"]) == 4  # 5 batches of 8: a line before the last


def test_training_epochs(toy_data, tmp_path, progress_lines):
    from hllm.config import load_config
    from hllm.train import train

    cfg = load_config("cpu-tiny", None, {"train.epochs": 1})
    train(cfg, "sasrec", str(toy_data), str(tmp_path / "run"))
    assert progress_lines()["epoch 1/1"][0].startswith("epoch 1/1: 1/")


def test_feature_materialisation(toy_data, tmp_path, monkeypatch, progress_lines):
    import hllm.features
    from hllm.features import build_features

    monkeypatch.setattr(hllm.features, "ONLINE_WRITE_ROWS", 7)
    build = build_features(str(toy_data), tmp_path / "run", validation=None)
    lines = progress_lines()
    assert lines["materialize"][0].startswith("materialize: 1/")
    users = build.counts["users"]
    assert len(lines["online user_history"]) == -(-users // 7) - 1


def test_msr_training_epochs(progress_lines):
    from test_msr_train import _cfg, synthetic_rows

    from hllm.msr.data import encode
    from hllm.msr.train import build_model, train_msr

    enc = encode(synthetic_rows(n_users=12, per_user=30))
    cfg = _cfg()
    train_msr(build_model(cfg, enc), enc, dataclasses.replace(cfg.train, epochs=1, batch_size=16),
              progress=False)
    assert progress_lines()["epoch 0"][0].startswith("epoch 0: 1/")
