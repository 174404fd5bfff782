"""Stage 1 of LLM4MSR: prompts -> a frozen causal LM -> knowledge vectors, cached once.

Two kinds of prompt (MODELS.md B.2; the paper's wording was not retrievable, these are ours):

* scenario-level, one per scenario: every scenario is described, then the LLM is asked
  about *this* scenario: its audience, and how it relates to / differs from the others;
* user-level, one per user: profile plus the movies the user liked and disliked in each
  scenario (training period only, so no label from validation/test leaks in), asking
  for the user's interests across scenarios.

Readout (MODELS.md B.1 says "last hidden state", token not confirmed): by default the
final-layer hidden state of the **last prompt token** (pooling="last"). With the chat
template on, that token ends "<|im_start|>assistant\\n", the state from which the LLM
would start its answer, so it summarises the question as the model reads it.
pooling="mean" averages the final states of all real tokens instead. pooling="answer"
is the paper's route (its ChatGLM2 answers, then the hidden state): the LLM first writes
its answer greedily (up to `max_new_tokens`), and the vector is the mean final-layer state
over the tokens it read while writing it: the answer cue, then each token it wrote
before its end token (the last one written is never read back). It costs
the generation (tens of decoding steps per batch) and stores the answers as texts.

Batching: prompts sorted by length, left-padded (the last real token then sits at the
same column for every row), with explicit position ids counting real tokens only, so a
prompt's vector does not depend on what it is batched with (up to float rounding).

Cache: storage.cache_root()/msr-knowledge/<sha256(model identity, readout settings,
every key and prompt text)>.safetensors. A second call with the same model and prompts
loads that file and never loads or runs the LLM; `KnowledgeStats` says which happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hllm import storage
from hllm.data.item_text import ByteTokenizer
from hllm.errors import ConfigError
from hllm.msr.config import KnowledgeConfig
from hllm.models.pretrained import resolve_model_dir
from hllm.msr.data import SCENARIO_DESCRIPTIONS, Encoded, MSRRows
from hllm.progress import Progress

log = logging.getLogger(__name__)

POOLINGS = ("last", "mean", "answer")

# Total LLM forward passes (batches) in this process: tests assert it does not move on a cache hit.
LLM_FORWARD_CALLS = 0


@dataclass
class KnowledgeStats:
    prompts: int
    cache_hit: bool
    llm_forward_calls: int  # forward passes (batches) run for this call; 0 on a cache hit
    seconds: float
    path: str
    prompt_tokens: int = 0  # prompt tokens fed to the LLM (0 on a cache hit)
    answer_tokens: int = 0  # tokens the LLM wrote for pooling="answer" (0 otherwise)

    @property
    def tokens_per_second(self) -> float:
        """Prompt plus answer tokens over the wall time (0 on a cache hit)."""
        return (self.prompt_tokens + self.answer_tokens) / self.seconds if self.seconds else 0.0


@dataclass
class Knowledge:
    keys: list[str]
    vectors: torch.Tensor  # (N, hidden) float32, row i belongs to keys[i]
    stats: KnowledgeStats
    texts: dict[str, str] | None = None  # the answers the LLM wrote (generate_text or pooling=answer)


# ---------------------------------------------------------------- prompts

def scenario_prompts(scenarios: Sequence[str], descriptions: dict[str, str] | None = None,
                     domain: str = "movie") -> dict[str, str]:
    """One prompt per scenario: all scenarios described, then a question about this one."""
    descriptions = descriptions or SCENARIO_DESCRIPTIONS
    listing = "\n".join(f"- {s}: {descriptions.get(s, s)}" for s in scenarios)
    return {s: (f"A {domain} recommender serves {len(scenarios)} scenarios, each a group of "
                f"films:\n{listing}\n\nConsider the scenario '{s}' ({descriptions.get(s, s)}). "
                "Describe who watches it and why, and how it is similar to and different from "
                "each of the other scenarios, so that a user's taste in one scenario can inform "
                "recommendations in the others.")
            for s in scenarios}


def user_prompts(rows: MSRRows, users: Sequence[str], items_per_scenario: int = 5) -> dict[str, str]:
    """One prompt per user from the training split: profile + liked/disliked titles per scenario."""
    train = rows.splits["train"]
    titles = _item_titles(rows.items)
    profiles = rows.users.set_index("user_id") if "user_id" in rows.users.columns else None
    profile_cols = [c for c in ("age", "gender", "occupation") if profiles is not None and c in profiles.columns]
    grouped = {u: g for u, g in train.groupby("user_id", sort=False)}
    out: dict[str, str] = {}
    for user in users:
        parts = []
        if profiles is not None and user in profiles.index and profile_cols:
            row = profiles.loc[user]
            parts.append("Profile: " + ", ".join(f"{c} {row[c]}" for c in profile_cols if str(row[c])))
        history = grouped.get(user)
        lines = []
        for scen in rows.scenarios:
            part = history[history["scenario"] == scen] if history is not None else None
            if part is None or part.empty:
                lines.append(f"- {scen}: no ratings yet")
                continue
            recent = part.iloc[::-1]  # most recent first
            liked = [titles.get(i, i) for i in recent.loc[recent["label"] == 1, "item_id"][:items_per_scenario]]
            disliked = [titles.get(i, i) for i in recent.loc[recent["label"] == 0, "item_id"][:items_per_scenario]]
            lines.append(f"- {scen} ({len(part)} rated, {int(part['label'].sum())} liked): "
                         f"liked {'; '.join(liked) or 'none'}; disliked {'; '.join(disliked) or 'none'}")
        parts.append("Movies this user rated, per scenario:\n" + "\n".join(lines))
        parts.append("Infer this user's interests across the scenarios: which scenarios they "
                     "prefer, what they like within each, and what their taste in one scenario "
                     "suggests about the others.")
        out[user] = "A user of a movie website.\n" + "\n".join(parts)
    return out


def _item_titles(items: pd.DataFrame) -> dict[str, str]:
    col = next((c for c in ("movie_title", "title", "name") if c in items.columns), None)
    if col is None:
        return {}
    year = items["release_year"] if "release_year" in items.columns else None
    return {i: (f"{t} ({y})" if year is not None and y else t)
            for i, t, y in zip(items["item_id"], items[col], year if year is not None else [""] * len(items))}


# ---------------------------------------------------------------- the frozen LLM

def model_identity(cfg: KnowledgeConfig) -> dict:
    """What decides the vectors besides the prompts: hashed into the cache key."""
    ident = {"pooling": cfg.pooling, "chat_template": cfg.chat_template,
             "max_prompt_tokens": cfg.max_prompt_tokens, "tokenizer": cfg.tokenizer}
    if cfg.pooling == "answer":  # the answer's length decides its vector
        ident["max_new_tokens"] = cfg.max_new_tokens
    if cfg.path is None:
        return {**ident, "arch": cfg.arch, "seed": cfg.seed}
    directory = resolve_model_dir(cfg.path)
    weights = sorted(p.name + ":" + str(p.stat().st_size) for p in directory.glob("*.safetensors"))
    return {**ident, "path": cfg.path, "config": (directory / "config.json").read_text(),
            "weights": weights}


def cache_path(prompts: dict[str, str], cfg: KnowledgeConfig) -> Path:
    h = hashlib.sha256(json.dumps(model_identity(cfg), sort_keys=True).encode())
    for key, text in prompts.items():
        h.update(key.encode() + b"\x1f" + text.encode() + b"\x1e")
    return storage.cache_root() / "msr-knowledge" / f"{h.hexdigest()[:24]}.safetensors"


class FrozenLLM:
    """A causal LM in eval mode with no gradients, plus its tokenizer; loaded only on a miss."""

    def __init__(self, cfg: KnowledgeConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        self.cfg = cfg
        if cfg.path is None:
            if not cfg.arch:
                raise ConfigError("knowledge.path is None: give knowledge.arch (LlamaConfig fields)")
            torch.manual_seed(cfg.seed)  # a random model is only reproducible through its seed
            self.model = LlamaForCausalLM(LlamaConfig(**cfg.arch))
        else:
            directory = resolve_model_dir(cfg.path)
            self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                              trust_remote_code=False)
        self.model.eval().requires_grad_(False)
        if cfg.tokenizer == "bytes":
            self.tok, self.pad_id, self.bos = None, ByteTokenizer.pad_id, ByteTokenizer()
        else:
            if cfg.tokenizer == "auto" and cfg.path is None:
                raise ConfigError("knowledge.tokenizer: auto needs knowledge.path; use bytes for a random model")
            src = resolve_model_dir(cfg.path if cfg.tokenizer == "auto" else cfg.tokenizer)
            self.tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
            pad = self.tok.pad_token_id
            self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)

    def encode(self, prompt: str, cfg: KnowledgeConfig | None = None) -> list[int]:
        cfg = cfg or self.cfg  # per-call settings: one loaded model serves several readouts
        if self.tok is None:
            ids = self.bos.encode(prompt)
        else:
            templated = bool(cfg.chat_template and self.tok.chat_template)
            text = (self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True) if templated else prompt)
            # The template already holds its special tokens; a bare prompt gets the model's own.
            ids = self.tok(text, add_special_tokens=not templated)["input_ids"]
        limit = cfg.max_prompt_tokens
        if len(ids) > limit:  # keep the head (role, profile) and the tail (question, answer cue)
            head = min(32, limit // 4)
            ids = ids[:head] + ids[len(ids) - (limit - head):]
        return list(ids)

    def batch(self, seqs: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):  # left padding: every row ends at column width - 1
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "position_ids": pos.to(device)}

    @torch.no_grad()
    def vectors(self, batch: dict[str, torch.Tensor], pooling: str = "last") -> torch.Tensor:
        global LLM_FORWARD_CALLS
        LLM_FORWARD_CALLS += 1
        out = self.model.base_model(**batch, use_cache=False)  # no LM head: states only
        h = out.last_hidden_state.float()  # (B, L, D)
        if pooling == "last":
            return h[:, -1]  # left-padded: the last column is every row's last real token
        mask = batch["attention_mask"].bool()[..., None]
        return torch.where(mask, h, 0.0).sum(1) / mask.sum(1)  # where: pad rows may be nan

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
        global LLM_FORWARD_CALLS
        LLM_FORWARD_CALLS += 1
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.pad_id)
        return self.decode(out[:, batch["input_ids"].size(1):])

    @torch.no_grad()
    def answer_vectors(self, batch: dict[str, torch.Tensor], max_new_tokens: int
                       ) -> tuple[torch.Tensor, list[str], int]:
        """The mean final-layer state while the LLM writes its greedy answer, the answers,
        and how many answer tokens were written (up to each row's end token)."""
        global LLM_FORWARD_CALLS
        LLM_FORWARD_CALLS += 1
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.pad_id, output_hidden_states=True,
                                  return_dict_in_generate=True)
        # Step t's final-layer states belong to the tokens fed at step t: the whole prompt
        # at t = 0 (its last column, every row's answer cue, under left padding), then the
        # answer token written at step t - 1. The last token written is never fed back.
        steps = [out.hidden_states[0][-1][:, -1:]] + [s[-1] for s in out.hidden_states[1:]]
        states = torch.cat(steps, 1).float()  # (B, T, D)
        new = out.sequences[:, batch["input_ids"].size(1):]  # (B, T)
        is_end = torch.isin(new, torch.tensor(sorted(self.end_ids), dtype=new.dtype, device=new.device))
        first = torch.ones_like(new[:, :1], dtype=torch.bool)
        # the answer proper: every token written up to and including the row's first end token
        # (a finished row is fed padding until the whole batch is done)
        answer = torch.cat([first, is_end.cumsum(1)[:, :-1] == 0], 1)
        # The cue, then each answer token fed back, the end token excepted: a row that ends
        # early gets the same vector alone as beside rows that go on writing.
        keep = torch.cat([first, (answer & ~is_end)[:, :-1]], 1)
        vectors = (states * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return vectors, self.decode(new.masked_fill(~answer, self.pad_id)), int(answer.sum())

    @property
    def end_ids(self) -> set[int]:
        """Token ids that end an answer: the generation config's EOS (one or several)."""
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.model.config.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])

    def decode(self, new: torch.Tensor) -> list[str]:
        if self.tok is None:
            return [bytes(t for t in row.tolist() if t < 256).decode("utf-8", "replace") for row in new]
        return self.tok.batch_decode(new, skip_special_tokens=True)


def writes_answers(cfg: KnowledgeConfig) -> bool:
    """Whether the LLM writes answers, whose texts are cached beside the vectors."""
    return cfg.generate_text or cfg.pooling == "answer"


def extract_knowledge(prompts: dict[str, str], cfg: KnowledgeConfig, *,
                      device: torch.device | str = "cpu", progress: bool | None = None,
                      llm: FrozenLLM | None = None) -> Knowledge:
    """Knowledge vectors for {key: prompt}, from the cache when the model and prompts match."""
    if cfg.pooling not in POOLINGS:
        raise ConfigError(f"knowledge.pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}")
    start = time.perf_counter()
    keys = list(prompts)
    path = cache_path(prompts, cfg)
    texts_path = path.with_suffix(".json")
    need_texts = writes_answers(cfg) and not texts_path.exists()
    if path.exists() and not need_texts:
        with safe_open(str(path), framework="pt") as f:
            vectors = f.get_tensor("vectors")
        texts = json.loads(texts_path.read_text()) if texts_path.exists() else None
        stats = KnowledgeStats(len(keys), True, 0, time.perf_counter() - start, str(path))
        log.info("knowledge for %d prompts loaded from cache %s", len(keys), path.name)
        return Knowledge(keys, vectors, stats, texts)

    device = torch.device(device)
    llm = llm or FrozenLLM(cfg)
    llm.model.to(device)
    calls_before = LLM_FORWARD_CALLS
    seqs = [llm.encode(prompts[k], cfg) for k in keys]
    order = sorted(range(len(keys)), key=lambda i: len(seqs[i]))
    vectors = torch.empty(len(keys), llm.model.config.hidden_size)
    texts: dict[str, str] = {}
    written = 0
    shown = Progress(len(keys), "knowledge", "prompt", bar=progress)
    for s in range(0, len(order), cfg.batch_size):
        idx = order[s: s + cfg.batch_size]
        batch = llm.batch([seqs[i] for i in idx], device)
        if cfg.pooling == "answer":
            got, answers, n = llm.answer_vectors(batch, cfg.max_new_tokens)
            vectors[idx] = got.cpu()
            texts.update((keys[i], text) for i, text in zip(idx, answers))
            written += n
        else:
            vectors[idx] = llm.vectors(batch, cfg.pooling).cpu()
            if cfg.generate_text:
                texts.update((keys[i], text) for i, text in zip(idx, llm.generate(batch, cfg.max_new_tokens)))
        shown.update(len(idx))
    shown.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"vectors": vectors.contiguous()}, str(tmp), metadata={"keys": json.dumps(keys)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry
    if texts:
        texts_path.write_text(json.dumps(texts, indent=1, ensure_ascii=False))
    stats = KnowledgeStats(len(keys), False, LLM_FORWARD_CALLS - calls_before,
                           time.perf_counter() - start, str(path), sum(len(s) for s in seqs), written)
    log.info("knowledge for %d prompts computed in %.1fs (%d prompt + %d answer tokens, %.0f tokens/s), "
             "cached at %s", len(keys), stats.seconds, stats.prompt_tokens, stats.answer_tokens,
             stats.tokens_per_second, path)
    return Knowledge(keys, vectors, stats, texts or None)


def build_knowledge(rows: MSRRows, enc: Encoded, cfg: KnowledgeConfig, *,
                    device: torch.device | str = "cpu", progress: bool | None = None
                    ) -> tuple[Knowledge, Knowledge]:
    """Scenario vectors (row i = enc.scenarios[i]) and user vectors (row i = enc.knowledge_users[i])."""
    llm = None
    scen_prompts = scenario_prompts(enc.scenarios)
    user_p = user_prompts(rows, enc.knowledge_users, cfg.items_per_scenario)
    # Load the LLM once, and only when at least one of the two tables (or, with
    # generation on, their texts) misses the cache.
    paths = [cache_path(p, cfg) for p in (scen_prompts, user_p)]
    cached = all(p.exists() and (not writes_answers(cfg) or p.with_suffix(".json").exists())
                 for p in paths)
    if not cached:
        llm = FrozenLLM(cfg)
    scen = extract_knowledge(scen_prompts, cfg, device=device, progress=progress, llm=llm)
    users = extract_knowledge(user_p, cfg, device=device, progress=progress, llm=llm)
    return scen, users
