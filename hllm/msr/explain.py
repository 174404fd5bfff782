"""`hllm explain --user ID --run RUN`: what LLM4MSR knows about a user and how it used it.

Three parts, each from something the run really holds:

1. behaviour: the user-level prompt's per-scenario lines (training period only), the
   same text the frozen LLM read;
2. knowledge summary: the LLM's own answer to that prompt: taken from the run's
   knowledge.json (or the Feast `user_knowledge` view) when generation was on during
   training, otherwise generated now with the run's frozen LLM (greedy, deterministic);
3. meta-layer weight: for the user's rows in each scenario, the size of each meta
   layer's residual relative to the backbone representation, mean ||delta_l|| / ||h||
   (scenario-level layers as applied, i.e. divided by their count). The largest is the
   layer that "weighed most" for this user.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from hllm.errors import ConfigError


@dataclass
class Explanation:
    user: str
    model: str
    behaviour: list[str]
    summary: str
    summary_source: str  # run | feast | generated
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> scenario -> ratio
    rows: dict[str, int] = field(default_factory=dict)  # scenario -> rows used
    top_layer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def render(self) -> str:
        scen = list(self.rows)
        lines = [f"user {self.user} ({self.model})", "", "Behaviour per scenario (training period):"]
        lines += [f"  {b}" for b in self.behaviour]
        lines += ["", f"Cross-scenario knowledge summary ({self.summary_source}):",
                  "  " + (self.summary.strip().replace("\n", "\n  ") or "(empty)"), "",
                  "Meta-layer weight, mean ||delta|| / ||h|| over the user's rows:",
                  "  " + f"{'layer':<18}" + "".join(f"{s[:12]:>13}" for s in scen) + f"{'all':>8}"]
        for layer, per in self.weights.items():
            lines.append("  " + f"{layer:<18}" + "".join(f"{per.get(s, float('nan')):>13.3f}" for s in scen)
                         + f"{per['all']:>8.3f}")
        lines.append("  " + f"{'rows':<18}" + "".join(f"{self.rows[s]:>13d}" for s in scen))
        kind = "personalised (user knowledge)" if self.top_layer.startswith("user") else \
            "scenario-level (scenario knowledge)"
        lines += ["", f"Weighed most: {self.top_layer}, {kind}, {self.weights[self.top_layer]['all']:.3f} "
                      "of ||h||"]
        return "\n".join(lines)


def _user_rows(rows, run, user: str) -> pd.DataFrame:
    """The user's rows in every split, and one unknown-item row for scenarios they never rated."""
    from hllm.msr.data import SPLITS

    frames = [rows.splits[s][rows.splits[s]["user_id"] == user] for s in SPLITS]
    mine = pd.concat(frames, ignore_index=True)[["user_id", "item_id", "scenario"]]
    missing = [s for s in run.scenarios if s not in set(mine["scenario"])]
    if not missing:
        return mine
    filler = pd.DataFrame({"user_id": user, "item_id": "", "scenario": missing})
    return pd.concat([mine, filler], ignore_index=True) if len(mine) else filler


def _summary(run, user: str, prompt: str, feature_repo: str | None, generate: bool,
             max_new_tokens: int) -> tuple[str, str]:
    path = run.path / "knowledge.json"
    if path.is_file():
        texts = json.loads(path.read_text()).get("user", {})
        if user in texts:
            return texts[user], "run"
    if feature_repo:
        text = _feast_text(feature_repo, user)
        if text:
            return text, "feast user_knowledge"
    if not generate:
        return "", "not generated (pass --generate or train with knowledge.generate_text)"
    from hllm.msr.knowledge import FrozenLLM

    llm = FrozenLLM(run.config.knowledge)
    batch = llm.batch([llm.encode(prompt)], torch.device("cpu"))
    return llm.generate(batch, max_new_tokens)[0], "generated now, greedy"


def _feast_text(feature_repo: str, user: str) -> str:
    """The generated text stored beside the user's knowledge vector in the online store."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    from hllm.features import feature_repo_dir

    store = FeatureStore(repo_path=str(feature_repo_dir(feature_repo)))
    found = store.get_online_features(features=["user_knowledge:text"],
                                      entity_rows=[{"user_id": user}]).to_dict()
    return str((found.get("text") or [""])[0] or "")


def explain(run_dir: str | Path, user: str, *, feature_repo: str | None = None,
            generate: bool = True, max_new_tokens: int = 64) -> Explanation:
    from hllm.msr.data import load_rows
    from hllm.msr.knowledge import user_prompts
    from hllm.msr.meta import LLM4MSR
    from hllm.msr.run import load_run

    run = load_run(run_dir)
    if not isinstance(run.model, LLM4MSR):
        raise ConfigError(f"{run_dir}: {run.info.get('model')} has no meta layers to explain; "
                          "pass a run trained with LLM4MSR (without --backbone-only)")
    user = str(user)
    if user not in set(run.encoding["knowledge_users"]):
        raise ConfigError(f"{run_dir}: user {user!r} has no knowledge vector in this run "
                          f"({len(run.encoding['knowledge_users'])} users known)")
    rows = load_rows(run.info["dataset"], run.config.data)
    prompt = user_prompts(rows, [user], run.config.knowledge.items_per_scenario)[user]
    behaviour = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
    summary, source = _summary(run, user, prompt, feature_repo, generate, max_new_tokens)

    frame = _user_rows(rows, run, user)
    batch = run.batch(frame)
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        h = run.model.backbone.representation(batch)
        run.model.refine(h, batch, trace)
    base = h.norm(dim=-1).clamp_min(1e-12)
    weights: dict[str, dict[str, float]] = {}
    for layer, delta in trace.items():
        ratio = delta.norm(dim=-1) / base
        per = {s: float(ratio[(frame["scenario"] == s).to_numpy()].mean()) for s in run.scenarios}
        weights[layer] = {**per, "all": float(ratio.mean())}
    counts = {s: int((frame["scenario"] == s).sum()) for s in run.scenarios}
    top = max(weights, key=lambda k: weights[k]["all"])
    return Explanation(user, run.info.get("model", ""), behaviour, summary, source, weights, counts, top)
