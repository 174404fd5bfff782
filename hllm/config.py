"""Run configuration: frozen dataclasses, named presets, YAML files and `--set` overrides.

A preset is a function returning a `Config`; a YAML file names a `base` preset and
overrides a few keys; `--set section.key=value` overrides last. Unknown keys and
wrongly typed values are collected and reported together in one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from hllm.errors import ConfigError
from hllm.yaml_file import load_yaml

T = TypeVar("T")  # a config dataclass made of sections (Config, hllm.msr.config.MSRConfig)
SMOLLM2 = "smollm2-135m"  # alias resolved by hllm.models.pretrained to a local HF directory
GEMMA3 = "gemma3-270m"  # Gemma 3 270M base, same mechanism; needs `make gemma` first


@dataclass(frozen=True)
class DataConfig:
    """How raw tables become per-user sequences and a leave-one-out split."""

    format: str = "auto"  # auto | recbole | csv | parquet
    text_fields: tuple[str, ...] = ()  # empty: every non-id column of the item table
    k_core: int = 0  # 0 = off; the HLLM paper filters users and items to 5-core
    dedupe: bool = True  # drop exact repeats of (user, item, timestamp)
    max_history: int = 50  # items the user model sees (train windows and eval history)
    min_user_interactions: int = 3  # fewer cannot give train + validation + test
    # Hold the newest fraction of items (by first interaction) out of training and
    # validation: they appear only as test targets, which makes a measurable cold segment.
    cold_items: float = 0.0


@dataclass(frozen=True)
class ItemLLMConfig:
    """The Item LLM: item text -> one embedding."""

    path: str | None = None  # local dir, s3:// prefix, or the alias "smollm2-135m"
    init: str = "pretrained"  # pretrained | random (same architecture, fresh weights)
    arch: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs when path is None
    tokenizer: str = "auto"  # auto: the model's own; "bytes": UTF-8 bytes (tiny tests)
    pooling: str = "item_token"  # item_token (learned [ITEM] slot) | mean
    trainable: str = "full"  # full | frozen | top-k
    top_k_layers: int = 2  # used when trainable == "top-k"
    # top-k: compute the frozen layers' output once per item and cache it, so a step runs
    # only the top k layers (hllm.models.prefix_cache); false runs every layer every step.
    prefix_cache: bool = True
    prompt: str = "Compress the following sentence into embedding: "
    field_separator: str = " "  # the reference code uses "" (fields run together)
    max_text_len: int = 64  # tokens per item, BOS included, [ITEM] slot excluded
    batch_tokens: int = 4096  # token budget per packed batch when embedding all items
    packed: bool = True  # packed variable-length batches; False = padded (for comparison)
    pack_len: int = 512  # tokens per packed row; sdpa/eager pay for a dense row x row mask,
    # so keep it near 2x the item length there; flash-attention varlen does not care
    gradient_checkpointing: bool = False
    standardize: bool = True  # frozen only: centre/scale cached embeddings per dimension
    trust_remote_code: bool = False


@dataclass(frozen=True)
class UserLLMConfig:
    """The User LLM: a causal decoder over item embeddings."""

    path: str | None = None
    init: str = "random"  # random (from arch) | pretrained (from path)
    arch: dict[str, Any] = field(default_factory=dict)
    item_proj: str = "auto"  # auto: linear when widths differ or the Item LLM is frozen; linear | mlp | none
    input_dropout: float = 0.0  # dropout on the item vectors the User LLM reads
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass(frozen=True)
class SASRecConfig:
    """The ID-based baseline (Kang & McAuley 2018), trained with the same InfoNCE."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """One loop for every model; see hllm.train."""

    epochs: int = 10
    batch_size: int = 32  # sequences per optimizer step per process, before accumulation
    grad_accum: int = 1  # effective batch = batch_size * grad_accum * world_size
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    num_negatives: int = 512  # global pool per step, split across ranks and all-gathered
    nce_threshold: float = 0.99  # negatives this similar to the positive are masked out
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0
    precision: str = "auto"  # auto: bf16 autocast where supported (CUDA with bf16); fp32 | bf16
    patience: int = 3  # epochs without validation NDCG@10 improvement before stopping
    eval_batch_size: int = 256
    checkpoint_every: int = 0  # steps; 0 = only at the end of each epoch
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    log_every: int = 10  # optimizer steps between loss lines in log.jsonl
    seed: int = 42
    num_threads: int = 0  # torch intra-op threads; 0 = torch default
    # Deterministic kernels (hllm.determinism): auto = on for CPU training, where two runs
    # then agree bit for bit (without, HLLM's N@10 differed in the fifth decimal), off on
    # CUDA | on | off
    deterministic: str = "auto"
    # Data parallelism under torchrun: ddp (every rank holds the whole model) | fsdp (FSDP2
    # full shard: each transformer layer, each tower and the rest sharded over the ranks).
    # Activation checkpointing stays item_llm/user_llm.gradient_checkpointing.
    strategy: str = "ddp"
    # FSDP parameter dtype for compute: auto (bf16 when train.precision resolves to bf16 on
    # CUDA, else fp32) | bf16 | fp32. Sharded master weights and optimizer states stay fp32.
    fsdp_mixed_precision: str = "auto"
    fsdp_reduce_dtype: str = "fp32"  # gradient reduce-scatter dtype under bf16: fp32 | bf16
    compile: bool = False  # torch.compile each transformer layer of both towers (GPU)
    fused_adamw: bool = True  # the fused AdamW kernel when every parameter is on CUDA (else ignored)
    attn_implementation: str = "auto"  # auto: flash_attention_2 for the packed Item LLM when
    # flash-attn is importable, on CUDA in bf16; else sdpa | sdpa | eager | flash_attention_2


@dataclass(frozen=True)
class Config:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    item_llm: ItemLLMConfig = field(default_factory=ItemLLMConfig)
    user_llm: UserLLMConfig = field(default_factory=UserLLMConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))


def to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- presets

def tiny_llama(hidden: int = 32, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, intermediate_size=2 * hidden, vocab_size=260,
                max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)


def cpu_tiny() -> Config:
    """Random 2-layer, width-32 towers and a byte tokenizer: seconds on CPU, for tests."""
    return Config(
        preset="cpu-tiny",
        data=DataConfig(max_history=20),
        item_llm=ItemLLMConfig(arch=tiny_llama(), init="random", tokenizer="bytes",
                               trainable="full", prompt="", max_text_len=48),
        user_llm=UserLLMConfig(arch=tiny_llama()),
        sasrec=SASRecConfig(hidden=32, layers=2, heads=2, dropout=0.0),
        train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, num_negatives=64, patience=2),
    )


def cpu_default() -> Config:
    """The embedded default: pretrained SmolLM2-135M as a frozen Item LLM on 2 CPU cores.

    Fine-tuning 135M parameters end to end on 2 cores does not fit the 15-minute
    budget (about 26 items/s forward only), so the Item LLM is frozen, its item
    embeddings are computed once and cached, and a linear projection, the [ITEM]
    read-out and a small User LLM are trained. The GPU presets train both tiers.
    """
    return Config(
        preset="cpu-default",
        data=DataConfig(max_history=50),
        item_llm=ItemLLMConfig(path=SMOLLM2, pooling="mean", trainable="frozen",
                               max_text_len=48, batch_tokens=2048,
                               # On CPU (sdpa, dense block mask) short rows win: packing
                               # ~30-token items two per row runs 1.23x padded; 512 ran 0.74x.
                               pack_len=64),
        user_llm=UserLLMConfig(arch=dict(hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4,
                                         intermediate_size=512, vocab_size=8,
                                         max_position_embeddings=128, rms_norm_eps=1e-6),
                               # An MLP adapts the frozen vectors better than a linear map
                               # (ml-100k test N@10 0.087 vs 0.083 at 30 epochs).
                               item_proj="mlp"),
        sasrec=SASRecConfig(hidden=64, layers=2, heads=2, dropout=0.2),
        # ~6 s per epoch once item embeddings are cached. Validation NDCG@10 swings by
        # ~0.02 between epochs at this LR, so patience is generous.
        train=TrainConfig(epochs=40, batch_size=64, lr=1e-3, num_negatives=1024, patience=10,
                          warmup_ratio=0.05),
    )


def cpu_finetune() -> Config:
    """SmolLM2-135M's top layer and the [ITEM] slot trained end to end with the User LLM, on CPU.

    The 29 frozen layers run once per item (hllm.models.prefix_cache); a step runs the
    last layer for the batch's distinct items, with a query at the [ITEM] slot only.
    """
    base = cpu_default()
    return replace(base, {
        "preset": "cpu-finetune",
        "item_llm.pooling": "item_token", "item_llm.trainable": "top-k",
        "item_llm.top_k_layers": 1, "item_llm.prefix_cache": True,
        # A step embeds nearly the whole catalog (1,682 items) through the top layer, so
        # bigger batches cost less per epoch: 128 windows/step, 19 steps, ~65 s per epoch.
        "train.epochs": 14, "train.patience": 5, "train.batch_size": 128,
    })


def _llama_1b() -> dict[str, Any]:
    # TinyLlama-1.1B shapes (the paper's HLLM-1B uses TinyLlama for both tiers).
    return dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, intermediate_size=5632, vocab_size=32000,
                max_position_embeddings=2048, rms_norm_eps=1e-5)


def hllm_1b() -> Config:
    """HLLM-1B as in the paper: both tiers TinyLlama-1.1B, trained end to end on GPU.

    Point item_llm.path and user_llm.path at a TinyLlama directory (local or s3://);
    `arch` documents the shapes and is used only with `init: random` and no path.
    """
    return Config(
        preset="hllm-1b",
        data=DataConfig(k_core=5, max_history=50),
        item_llm=ItemLLMConfig(arch=_llama_1b(), trainable="full", max_text_len=256,
                               gradient_checkpointing=True, batch_tokens=16384),
        user_llm=UserLLMConfig(arch=_llama_1b(), init="pretrained", item_proj="none",
                               gradient_checkpointing=True),
        train=TrainConfig(epochs=5, batch_size=8, lr=1e-4, num_negatives=512, patience=5,
                          warmup_ratio=0.1, precision="auto"),
    )


def hllm_7b() -> Config:
    """HLLM-7B shapes (Baichuan2-7B / Llama-7B class) for both tiers; multi-GPU only.

    13B trainable parameters need ~195 GiB of fp32 weights, gradients and Adam states, so
    the towers are sharded with FSDP (`bench/train_step_mfu.py --derive-memory`: ~63 GiB
    per rank on 8 GPUs at these settings).
    """
    arch = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
                max_position_embeddings=4096, rms_norm_eps=1e-6)
    base = hllm_1b()
    return replace(base, {"preset": "hllm-7b", "item_llm.arch": arch, "user_llm.arch": arch,
                          "train.batch_size": 4, "train.strategy": "fsdp"})


PRESETS: dict[str, Callable[[], Config]] = {
    "cpu-tiny": cpu_tiny,
    "cpu-default": cpu_default,
    "cpu-finetune": cpu_finetune,
    "hllm-1b": hllm_1b,
    "hllm-7b": hllm_7b,
}


# ---------------------------------------------------------------- overrides

def replace(cfg: T, overrides: dict[str, Any], what: str = "configuration") -> T:
    """Apply dotted-key overrides ({"train.lr": 3e-4}) to a config of sections (Config,
    MSRConfig, ...); report every bad key at once."""
    errors: list[str] = []
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    root = [f.name for f in dataclasses.fields(cfg)]
    sections = [n for n in root if dataclasses.is_dataclass(getattr(cfg, n))]
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            if section not in root or section in sections:
                errors.append(f"'{key}': not a top-level key (use section.key, e.g. train.lr)")
                continue
            top[section] = value
            continue
        sub = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(sub):
            errors.append(f"'{key}': unknown section '{section}' (known: {', '.join(sections)})")
            continue
        fields = {f.name: f for f in dataclasses.fields(sub)}
        if name not in fields:
            errors.append(f"'{key}': unknown key '{name}' in {section} "
                          f"(known: {', '.join(fields)})")
            continue
        try:
            nested.setdefault(section, {})[name] = _coerce(value, _field_type(type(sub), name))
        except (TypeError, ValueError) as exc:
            errors.append(f"'{key}': {exc}")
    if errors:
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(errors))
    for section, values in nested.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **top)


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn YAML / --set values into the declared type, or raise with a readable reason."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0]) for v in value)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"expected a string, got {value!r}")
        return str(value)
    return value


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=v` strings -> {"a.b": parsed v}; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not dotted.endswith(".arch"):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def read_config_file(config_file: str | Path) -> tuple[str | None, dict[str, Any]]:
    """A YAML config file as (its `base` preset, its values flattened to dotted keys)."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    loaded = load_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = loaded.pop("base", None)
    return base, flatten(loaded)


# What a value must be for training to mean something: checked on every resolved config,
# so `--set train.epochs=-1` is refused before a file is written instead of training
# nothing and exiting 0, and `train.batch_size=0` is not a ZeroDivisionError later.
AT_LEAST = {"train.epochs": 1, "train.batch_size": 1, "train.grad_accum": 1,
            "train.num_negatives": 1, "train.eval_batch_size": 1, "train.weight_decay": 0,
            "train.checkpoint_every": 0, "train.max_steps": 0, "train.num_threads": 0,
            "train.log_every": 1,
            "train.patience": 0, "data.max_history": 1,
            "train.max_grad_norm": 0}  # 0: no clipping (bench/ml1m.py's published setting)
ABOVE = {"train.lr": 0, "train.logit_scale_init": 0,
         "train.logit_scale_max": 0}
BETWEEN = {"train.warmup_ratio": (0, 1), "train.nce_threshold": (-1, 1)}
ONE_OF = {"train.precision": ("auto", "fp32", "bf16"),
          "train.deterministic": ("auto", "on", "off"),
          "train.strategy": ("ddp", "fsdp"),
          "train.fsdp_mixed_precision": ("auto", "bf16", "fp32"),
          "train.fsdp_reduce_dtype": ("fp32", "bf16"),
          "train.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2")}


@dataclass(frozen=True)
class ValueRules:
    """What each dotted key's value must be: >= (at_least), > (above), within [low, high]
    (between) or one of a set (one_of). Keys a config does not have are skipped."""

    at_least: dict[str, float] = field(default_factory=dict)
    above: dict[str, float] = field(default_factory=dict)
    between: dict[str, tuple[float, float]] = field(default_factory=dict)
    one_of: dict[str, tuple[Any, ...]] = field(default_factory=dict)


RUN_RULES = ValueRules(AT_LEAST, ABOVE, BETWEEN, ONE_OF)


def check_values(cfg: T, rules: ValueRules = RUN_RULES) -> T:
    """Every value out of its range or set, reported together in one ConfigError."""
    values = flatten(cfg.to_dict())
    errors = []
    for key, low in rules.at_least.items():
        if key in values and values[key] < low:
            errors.append(f"'{key}': {values[key]!r}, must be >= {low}")
    for key, low in rules.above.items():
        if key in values and not values[key] > low:
            errors.append(f"'{key}': {values[key]!r}, must be > {low}")
    for key, (low, high) in rules.between.items():
        if key in values and not low <= values[key] <= high:
            errors.append(f"'{key}': {values[key]!r}, must be in [{low}, {high}]")
    for key, allowed in rules.one_of.items():
        if key in values and values[key] not in allowed:
            errors.append(f"'{key}': {values[key]!r}, must be one of {', '.join(map(str, allowed))}")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Resolve preset <- YAML file <- --set overrides, in that order; values checked."""
    return check_values(resolve_config(PRESETS, preset, config_file, overrides))


def resolve_config(presets: dict[str, Callable[[], T]], preset: str | None,
                   config_file: str | Path | None, overrides: dict[str, Any] | None,
                   what: str = "configuration") -> T:
    """preset (default cpu-default, or the YAML's `base`) <- YAML file <- overrides."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        base, file_values = read_config_file(config_file)
        preset = preset or base
    name = preset or "cpu-default"
    if name not in presets:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(presets)})")
    return replace(replace(presets[name](), file_values, what), overrides or {}, what)


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved by `Config.to_dict` (the run directory's config.yaml)."""
    tree = dict(tree)
    preset = tree.pop("preset", "custom")
    return replace(Config(preset=preset), flatten(tree))
