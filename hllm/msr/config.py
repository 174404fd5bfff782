"""MSRConfig: frozen dataclasses and presets for the multi-scenario (LLM4MSR) slice.

Kept separate from hllm.config.Config because the MSR task (pointwise CTR over
scenarios) shares no section with the sequential HLLM recommender. The same rules
hold: presets are functions, YAML files name a `base` preset, unknown keys fail and
every bad key is reported at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hllm.config import (SMOLLM2, ValueRules, check_values, flatten, resolve_config, tiny_llama,
                         to_plain)
from hllm.config import replace as replace_sections
from hllm.errors import ConfigError


@dataclass(frozen=True)
class MSRDataConfig:
    """How interactions become multi-scenario CTR rows and a global time split."""

    # auto: the table's `scenario` column if any, else genre groups | genre-group | column
    scenario_rule: str = "auto"
    label_threshold: float = 4.0  # rating >= this is a click (ml-100k: 55.4% positives)
    # time: one global time order, the oldest 80% train, next 10% validation, the rest test;
    # random: rows shuffled with split_seed first (the HAMUR / Scenario-Wise-Rec benchmarks)
    split: str = "time"
    split_seed: int = 0
    train_frac: float = 0.8
    valid_frac: float = 0.1
    user_fields: tuple[str, ...] = ("age", "gender", "occupation")  # categorical, when present
    item_fields: tuple[str, ...] = ("release_year",)


@dataclass(frozen=True)
class MSRModelConfig:
    """Backbone and meta-network sizes. Small: the meta generator emits d*d weights per layer."""

    backbone: str = "star"  # star | mmoe | shared-bottom | ple (hllm.msr.backbones)
    embed_dim: int = 16  # per field: user, item, scenario, each categorical field
    hidden: tuple[int, ...] = (64, 32)  # STAR FCN / shared bottom / expert widths; last = d of h
    dropout: float = 0.1
    aux_hidden: int = 16  # STAR auxiliary network on the scenario indicator
    num_experts: int = 4  # MMoE experts; PLE shared experts per level
    ple_specific_experts: int = 2  # PLE experts owned by each scenario, per level
    ple_levels: int = 1  # PLE extraction layers (1 = CGC)
    tower_hidden: int = 16  # MMoE / shared-bottom / PLE per-scenario tower
    # LLM4MSR meta networks (see hllm.msr.meta for the wiring)
    meta_hidden: int = 64  # generator MLP width
    meta_user_layers: int = 1  # user-level meta layers stacked at the bottom
    meta_scenario_layers: int = 2  # scenario-level meta layers applied in parallel
    meta_init_scale: float = 0.1  # generated weights start small: LLM4MSR starts near the backbone
    meta_activation: str = "relu"  # relu (the paper) | tanh | identity: on the meta residual


@dataclass(frozen=True)
class KnowledgeConfig:
    """The frozen LLM that turns prompts into knowledge vectors."""

    path: str | None = SMOLLM2  # alias, local HF dir or s3:// prefix; None = random `arch`
    arch: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs when path is None
    tokenizer: str = "auto"  # auto: the model's own; bytes: UTF-8 bytes (tiny tests)
    pooling: str = "last"  # last: final state of the last prompt token | mean | answer (after generating)
    chat_template: bool = True  # wrap prompts as a user turn (instruct models) when available
    max_prompt_tokens: int = 384  # prompts are cut from the left-most side of the history
    batch_size: int = 8
    items_per_scenario: int = 3  # user prompt: most recent liked and disliked titles per scenario
    generate_text: bool = False  # also store greedy answers (interpretability); slow on CPU
    max_new_tokens: int = 64  # answer length for generate_text and pooling=answer
    seed: int = 0  # only for random-init models (tests)


@dataclass(frozen=True)
class MSRTrainConfig:
    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3  # LLM4MSR README: results are sensitive to the learning rate; search it
    weight_decay: float = 1e-5
    patience: int = 2  # epochs without validation AUC improvement
    eval_batch_size: int = 4096
    seed: int = 42
    num_threads: int = 0  # 0 = torch default
    # torch.use_deterministic_algorithms while training: multi-threaded CPU runs are then
    # bit-identical across processes (without it, identical runs differed by up to ~0.004 AUC).
    deterministic: bool = True


@dataclass(frozen=True)
class MSRConfig:
    preset: str = "custom"
    data: MSRDataConfig = field(default_factory=MSRDataConfig)
    model: MSRModelConfig = field(default_factory=MSRModelConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    train: MSRTrainConfig = field(default_factory=MSRTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))  # tuples as lists: YAML-safe


def cpu_default() -> MSRConfig:
    """ml-100k on 2 CPU cores: frozen SmolLM2-135M knowledge, STAR backbone, ~seconds/epoch."""
    return MSRConfig(preset="cpu-default")


def cpu_tiny() -> MSRConfig:
    """A random 2-layer width-32 Llama and a byte tokenizer: knowledge in milliseconds, for tests."""
    return MSRConfig(
        preset="cpu-tiny",
        model=MSRModelConfig(embed_dim=8, hidden=(32, 16), meta_hidden=32, dropout=0.0),
        knowledge=KnowledgeConfig(path=None, arch=tiny_llama(), tokenizer="bytes",
                                  chat_template=False, max_prompt_tokens=256),
        train=MSRTrainConfig(epochs=3, batch_size=128, lr=5e-3, patience=2),
    )


PRESETS: dict[str, Callable[[], MSRConfig]] = {"cpu-default": cpu_default, "cpu-tiny": cpu_tiny}


def replace(cfg: MSRConfig, overrides: dict[str, Any]) -> MSRConfig:
    """Dotted-key overrides ({"train.lr": 1e-3}); every bad key reported in one ConfigError."""
    return replace_sections(cfg, overrides, "MSR configuration")


# What each value must be, checked before any data is read (hllm.config.check_values).
# The choices mirror hllm.msr.backbones.BACKBONES, hllm.msr.meta.ACTIVATIONS and
# hllm.msr.data.SCENARIO_RULES (a test keeps them equal; importing those here would
# import torch and the models into every config read).
MSR_RULES = ValueRules(
    at_least={"train.epochs": 1, "train.batch_size": 1, "train.eval_batch_size": 1,
              "train.patience": 0, "train.num_threads": 0, "train.weight_decay": 0,
              "model.embed_dim": 1, "model.aux_hidden": 1, "model.num_experts": 1,
              "model.ple_specific_experts": 1, "model.ple_levels": 1, "model.tower_hidden": 1,
              "model.meta_hidden": 1, "model.meta_user_layers": 0,
              "model.meta_scenario_layers": 0, "model.meta_init_scale": 0,
              "knowledge.max_prompt_tokens": 1, "knowledge.batch_size": 1,
              "knowledge.items_per_scenario": 0, "knowledge.max_new_tokens": 1},
    above={"train.lr": 0, "data.train_frac": 0},
    between={"model.dropout": (0, 0.99), "data.train_frac": (0, 1), "data.valid_frac": (0, 1)},
    one_of={"model.backbone": ("star", "mmoe", "shared-bottom", "ple"),
            "model.meta_activation": ("relu", "tanh", "identity"),
            "data.scenario_rule": ("auto", "genre-group", "column"),
            "data.split": ("time", "random"),
            "knowledge.pooling": ("last", "mean", "answer")},
)


def load_msr_config(preset: str | None = None, config_file: str | Path | None = None,
                    overrides: dict[str, Any] | None = None) -> MSRConfig:
    """preset <- YAML file <- overrides, as hllm.config.load_config; values checked."""
    cfg = resolve_config(PRESETS, preset, config_file, overrides, "MSR configuration")
    check_values(cfg, MSR_RULES)
    if cfg.data.train_frac + cfg.data.valid_frac >= 1:
        raise ConfigError(f"invalid configuration:\n  'data.train_frac' + 'data.valid_frac': "
                          f"{cfg.data.train_frac} + {cfg.data.valid_frac}, must be < 1 "
                          "(the rest is the test split)")
    return cfg


def config_from_dict(tree: dict[str, Any]) -> MSRConfig:
    """Rebuild an MSRConfig saved by `MSRConfig.to_dict` (a run directory's config.yaml)."""
    tree = dict(tree)
    preset = tree.pop("preset", "custom")
    return replace(MSRConfig(preset=preset), flatten(tree))
