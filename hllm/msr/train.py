"""Train a multi-scenario backbone alone or with LLM4MSR, and compare them on one split.

    python -m hllm.msr compare --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml

Features (each with the config key that controls it):
* AdamW + BCE on all scenarios mixed in each batch          train.lr, train.weight_decay
* early stopping on validation AUC; the best epoch is kept  train.patience, train.epochs
* device-agnostic: tensors follow `device`, never .cuda()   --device
* same seed -> the backbone inside LLM4MSR starts from the same weights as the backbone
  alone, so the comparison isolates the meta networks      train.seed
* deterministic kernels: a run repeats bit for bit, on any
  number of CPU threads                                    train.deterministic
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from hllm.determinism import deterministic_algorithms
from hllm.errors import ConfigError
from hllm.msr.backbones import BACKBONES, build_backbone
from hllm.msr.config import MSRConfig, MSRTrainConfig
from hllm.msr.data import Encoded, MSRRows, encode, load_rows, require_auc_cells
from hllm.msr.evaluate import evaluate_msr
from hllm.msr.meta import ACTIVATIONS, LLM4MSR, bce_loss
from hllm.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_auc: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, valid auc
    seconds: float = 0.0


def build_model(cfg: MSRConfig, enc: Encoded, scenario_knowledge: torch.Tensor | None = None,
                user_knowledge: torch.Tensor | None = None) -> nn.Module:
    """The backbone, wrapped in LLM4MSR when knowledge tables are given."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    backbone = build_backbone(m.backbone, enc.cardinalities, enc.field_names, m)
    if scenario_knowledge is None and user_knowledge is None:
        return backbone
    if scenario_knowledge is None or user_knowledge is None:
        raise ValueError("LLM4MSR needs both scenario and user knowledge tables")
    if m.meta_activation not in ACTIVATIONS:
        raise ConfigError(f"model.meta_activation: {m.meta_activation!r} is not one of "
                          f"{', '.join(ACTIVATIONS)}")
    return LLM4MSR(backbone, scenario_knowledge, user_knowledge, meta_hidden=m.meta_hidden,
                   user_layers=m.meta_user_layers, scenario_layers=m.meta_scenario_layers,
                   init_scale=m.meta_init_scale, activation=m.meta_activation)


def train_msr(model: nn.Module, enc: Encoded, cfg: MSRTrainConfig, *,
              device: torch.device | str = "cpu", progress: bool | None = None) -> TrainResult:
    """Fit on enc.tensors["train"], early-stop on validation AUC, leave the best weights loaded."""
    with deterministic_algorithms(cfg.deterministic):
        return _train_msr(model, enc, cfg, device=device, progress=progress)


def _train_msr(model: nn.Module, enc: Encoded, cfg: MSRTrainConfig, *,
               device: torch.device | str, progress: bool | None) -> TrainResult:
    device = torch.device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    train = enc.tensors["train"]
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = sys.stderr.isatty() if progress is None else progress
    best_auc, best_epoch, best_state, stale = -1.0, -1, None, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        starts = range(0, len(train), cfg.batch_size)
        total, n = 0.0, 0
        with Progress(len(starts), f"epoch {epoch}", "batch", bar=progress) as shown:
            for s in starts:
                batch = {k: v.to(device) for k, v in train.batch(perm[s: s + cfg.batch_size]).items()}
                _, logit = model(batch)
                loss = bce_loss(logit, batch["label"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(logit)
                n += len(logit)
                shown.update(1)
                if shown.bar is not None:
                    shown.bar.set_postfix(loss=f"{total / n:.4f}")
        valid = evaluate_msr(model, enc.tensors["valid"], enc.scenarios, device, cfg.eval_batch_size)
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "valid_auc": valid["auc"],
                        "valid_logloss": valid["logloss"]})
        log.info("epoch %d  train loss %.4f  valid AUC %.4f  logloss %.4f", epoch, total / max(n, 1),
                 valid["auc"], valid["logloss"])
        if valid["auc"] > best_auc:
            best_auc, best_epoch, stale = valid["auc"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(best_epoch, best_auc, history, time.perf_counter() - start)


def run_variant(cfg: MSRConfig, enc: Encoded, *, knowledge: tuple[torch.Tensor, torch.Tensor] | None,
                device: torch.device | str = "cpu", progress: bool | None = None) -> dict:
    """Train one model (backbone, or backbone + LLM4MSR) and evaluate it on valid and test."""
    model = build_model(cfg, enc, *(knowledge or (None, None)))
    result = train_msr(model, enc, cfg.train, device=device, progress=progress)
    return {"model": cfg.model.backbone + ("+llm4msr" if knowledge else ""),
            "best_epoch": result.best_epoch, "train_seconds": round(result.seconds, 2),
            "params": sum(p.numel() for p in model.parameters()),
            "valid": evaluate_msr(model, enc.tensors["valid"], enc.scenarios, device),
            "test": evaluate_msr(model, enc.tensors["test"], enc.scenarios, device),
            "history": result.history}


def compare(cfg: MSRConfig, data_uri: str, *, backbones: tuple[str, ...] | None = None,
            device: torch.device | str = "cpu", progress: bool | None = None,
            rows: MSRRows | None = None) -> dict:
    """Each backbone alone and with LLM4MSR, on the same split, through the same evaluator."""
    from hllm.msr.knowledge import build_knowledge

    names = backbones or (cfg.model.backbone,)
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:  # before the knowledge step, which may run the LLM
        raise ConfigError(f"unknown backbone(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(BACKBONES)})")
    rows = rows or load_rows(data_uri, cfg.data)
    require_auc_cells(rows)
    enc = encode(rows)
    scen, users = build_knowledge(rows, enc, cfg.knowledge, device=device, progress=progress)
    knowledge = (scen.vectors, users.vectors)
    runs = []
    for name in names:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=name))
        runs.append(run_variant(c, enc, knowledge=None, device=device, progress=progress))
        runs.append(run_variant(c, enc, knowledge=knowledge, device=device, progress=progress))
    return {"knowledge": {"scenario": vars(scen.stats), "user": vars(users.stats)}, "runs": runs}
