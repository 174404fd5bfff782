"""Knowledge extraction: deterministic, padding-independent, and cached (no LLM on a second call)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from hllm.msr import knowledge as K
from hllm.msr.config import cpu_tiny
from hllm.msr.data import MSRRows, SCENARIO_DESCRIPTIONS

pytestmark = pytest.mark.fast  # seconds, no training runs: part of make test-fast

PROMPTS = {"a": "short prompt", "b": "a somewhat longer prompt about films", "c": "x"}


@pytest.fixture
def cfg():
    return dataclasses.replace(cpu_tiny().knowledge, batch_size=2)


def test_vectors_are_deterministic_for_a_fixed_model_and_prompt(cfg, tmp_path, monkeypatch):
    first = K.extract_knowledge(PROMPTS, cfg, progress=False)
    assert first.vectors.shape == (3, cfg.arch["hidden_size"])
    monkeypatch.setenv("HLLM_CACHE", str(tmp_path / "fresh"))  # force a recompute with a new model
    second = K.extract_knowledge(PROMPTS, cfg, progress=False)
    assert not second.stats.cache_hit
    torch.testing.assert_close(first.vectors, second.vectors, rtol=0, atol=0)


def test_left_padding_does_not_change_a_prompts_vector(cfg):
    llm = K.FrozenLLM(cfg)
    alone = K.extract_knowledge({"c": PROMPTS["c"]}, cfg, llm=llm, progress=False).vectors[0]
    # batch_size 3: "x" is left-padded to the length of the longest prompt
    batched = K.extract_knowledge(PROMPTS, dataclasses.replace(cfg, batch_size=3), llm=llm,
                                  progress=False).vectors[2]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_mean_pooling_differs_from_last_token(cfg):
    llm = K.FrozenLLM(cfg)
    last = K.extract_knowledge(PROMPTS, cfg, llm=llm, progress=False).vectors
    mean = K.extract_knowledge(PROMPTS, dataclasses.replace(cfg, pooling="mean"), llm=llm,
                               progress=False).vectors
    assert not torch.isnan(mean).any() and not torch.allclose(last, mean)


def test_second_call_runs_no_llm_inference(cfg, monkeypatch):
    first = K.extract_knowledge(PROMPTS, cfg, progress=False)
    assert not first.stats.cache_hit and first.stats.llm_forward_calls == 2  # 3 prompts, batch 2
    calls = K.LLM_FORWARD_CALLS

    def no_llm(*_a, **_k):
        raise AssertionError("the LLM must not even be loaded on a cache hit")

    monkeypatch.setattr(K, "FrozenLLM", no_llm)
    second = K.extract_knowledge(PROMPTS, cfg, progress=False)
    assert second.stats.cache_hit and second.stats.llm_forward_calls == 0
    assert K.LLM_FORWARD_CALLS == calls
    assert second.keys == list(PROMPTS)
    torch.testing.assert_close(first.vectors, second.vectors, rtol=0, atol=0)
    # a changed prompt is a different cache entry
    with pytest.raises(AssertionError, match="must not even be loaded"):
        K.extract_knowledge({**PROMPTS, "c": "y"}, cfg, progress=False)


def test_generated_text_is_optional_and_cached(cfg):
    cfg = dataclasses.replace(cfg, generate_text=True, max_new_tokens=4)
    out = K.extract_knowledge({"a": "hi"}, cfg, progress=False)
    assert set(out.texts) == {"a"}
    again = K.extract_knowledge({"a": "hi"}, cfg, progress=False)
    assert again.stats.cache_hit and again.texts == out.texts


def _answer_mean(llm: K.FrozenLLM, ids: list[int], new: list[int]) -> torch.Tensor:
    """What pooling="answer" should give, from one unpadded forward pass over prompt + answer."""
    seq = torch.tensor([ids + new])
    with torch.no_grad():
        h = llm.model.base_model(input_ids=seq).last_hidden_state[0]
    return h[len(ids) - 1: len(ids) + len(new)].mean(0)  # the cue, then every answer token read back


def test_answer_pooling_averages_the_states_read_while_writing_the_answer(cfg):
    cfg = dataclasses.replace(cfg, pooling="answer", max_new_tokens=5, batch_size=3)
    llm = K.FrozenLLM(cfg)
    got = K.extract_knowledge(PROMPTS, cfg, llm=llm, progress=False)
    assert set(got.texts) == set(PROMPTS) and got.stats.answer_tokens == 3 * 5
    for row, key in enumerate(PROMPTS):
        ids = llm.encode(PROMPTS[key], cfg)
        new = llm.model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                                 pad_token_id=llm.pad_id)[0, len(ids):].tolist()
        # the fifth token written is never read back, so four answer states plus the cue
        torch.testing.assert_close(got.vectors[row], _answer_mean(llm, ids, new[:4]), atol=1e-4, rtol=1e-4)
    last = K.extract_knowledge(PROMPTS, dataclasses.replace(cfg, pooling="last"), llm=llm, progress=False)
    assert not torch.allclose(got.vectors, last.vectors)
    # the answer length is part of the cache key; the same settings hit the cache with the texts
    assert K.cache_path(PROMPTS, cfg) != K.cache_path(PROMPTS, dataclasses.replace(cfg, max_new_tokens=6))
    again = K.extract_knowledge(PROMPTS, cfg, progress=False)
    assert again.stats.cache_hit and again.texts == got.texts


def test_answer_pooling_stops_at_the_end_token_whatever_the_batch(cfg):
    cfg = dataclasses.replace(cfg, pooling="answer", max_new_tokens=6)
    llm = K.FrozenLLM(cfg)
    ids = llm.encode(PROMPTS["c"], cfg)
    new = llm.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                             pad_token_id=llm.pad_id)[0, len(ids):].tolist()
    end = new[2]
    llm.model.generation_config.eos_token_id = end  # the prompt's answer now ends at its third token
    stop = new.index(end)
    alone = K.extract_knowledge({"c": PROMPTS["c"]}, cfg, llm=llm, progress=False)
    assert alone.stats.answer_tokens == stop + 1  # the end token counts as written
    torch.testing.assert_close(alone.vectors[0], _answer_mean(llm, ids, new[:stop]), atol=1e-4, rtol=1e-4)
    # beside prompts that write on, the finished row is fed padding: its vector must not move
    batched = K.extract_knowledge(PROMPTS, dataclasses.replace(cfg, batch_size=3), llm=llm, progress=False)
    torch.testing.assert_close(batched.vectors[2], alone.vectors[0], atol=1e-4, rtol=1e-4)


def _rows() -> MSRRows:
    train = pd.DataFrame({"user_id": ["1", "1", "1", "2"], "item_id": ["10", "11", "12", "10"],
                          "scenario": ["family", "family", "action", "action"], "label": [1, 0, 1, 1],
                          "timestamp": [1, 2, 3, 4]})
    test = pd.DataFrame({"user_id": ["1", "3"], "item_id": ["13", "10"], "scenario": ["thriller", "family"],
                         "label": [1, 0], "timestamp": [9, 10]})
    items = pd.DataFrame({"item_id": ["10", "11", "12", "13"], "movie_title": ["Toy Story", "Fargo", "Heat", "Secret"],
                          "release_year": ["1995", "1996", "1995", "1999"]})
    users = pd.DataFrame({"user_id": ["1", "2", "3"], "age": ["20s", "30s", "40s"], "gender": ["M", "F", "M"],
                          "occupation": ["student", "writer", "doctor"]})
    return MSRRows({"train": train, "valid": test.iloc[:0], "test": test},
                   ["family", "action", "thriller", "drama_comedy"], users, items)


def test_user_prompts_use_training_history_only():
    prompts = K.user_prompts(_rows(), ["1", "3"])
    p1 = prompts["1"]
    assert "Profile: age 20s, gender M, occupation student" in p1
    assert "- family (2 rated, 1 liked): liked Toy Story (1995); disliked Fargo (1996)" in p1
    assert "- thriller: no ratings yet" in p1
    assert "Secret" not in p1  # a test-period item never reaches the prompt
    assert "occupation doctor" in prompts["3"] and prompts["3"].count("no ratings yet") == 4


def test_scenario_prompts_describe_every_scenario():
    prompts = K.scenario_prompts(list(SCENARIO_DESCRIPTIONS))
    assert len(prompts) == 4
    for name, text in prompts.items():
        assert all(desc in text for desc in SCENARIO_DESCRIPTIONS.values())
        assert f"Consider the scenario '{name}'" in text


def test_smollm2_two_prompts_deterministic_with_chat_template():
    from hllm.models.pretrained import SMOLLM2_ALIASES

    cfg = dataclasses.replace(cpu_tiny().knowledge, path=next(iter(sorted(SMOLLM2_ALIASES))),
                              arch={}, tokenizer="auto", chat_template=True, batch_size=2)
    llm = K.FrozenLLM(cfg)
    ids = llm.encode("Hello")
    assert llm.tok.decode(ids).endswith("<|im_start|>assistant\n")  # readout = the answer cue
    prompts = {"a": "Describe family films.", "b": "Describe thrillers in one sentence."}
    one = K.extract_knowledge(prompts, cfg, llm=llm, progress=False)
    two = K.extract_knowledge({"b": prompts["b"]}, dataclasses.replace(cfg, batch_size=1), llm=llm,
                              progress=False)
    assert one.vectors.shape == (2, 576)
    torch.testing.assert_close(one.vectors[1], two.vectors[0], atol=1e-4, rtol=1e-4)


def test_extraction_logs_progress_when_stderr_is_not_a_terminal(cfg, monkeypatch, caplog):
    import logging

    import hllm.progress

    monkeypatch.setattr(hllm.progress, "INTERVAL_S", 0.0)  # a line at every batch
    with caplog.at_level(logging.INFO, logger="hllm.progress"):
        K.extract_knowledge(PROMPTS, cfg, progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("knowledge: 2/3 prompts (67%), ") and lines[0].endswith(" left")
    assert lines[-1].startswith("knowledge: 3 prompts in ")
