"""An MSR run directory: train one model, save everything needed to serve, explain and gate it.

    hllm msr train --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml --out runs/msr
    hllm msr train ... --backbone-only --out runs/star          # the baseline the gate compares to

RUN/
  config.yaml            resolved MSRConfig + {"run": {model, dataset, llm4msr}}
  model.safetensors      weights (LLM4MSR: the knowledge tables are buffers inside)
  encoding.json          id/field vocabularies, scenario names, knowledge user order,
                         per-user and per-item field values (a request needs only ids)
  metrics.json           test + valid AUC/logloss overall and per scenario, split_sha256,
                         data_sha256, timings, per-epoch history, knowledge cache stats
  test_predictions.npz   label, probability, scenario of every test row (gate bootstrap)
  knowledge.json         user knowledge texts, when generation was on (hllm explain)

The directory is written in RUN.staged and swapped in whole: a failure leaves no
half-written run that `hllm msr register` could pick up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from hllm import strict_json
from hllm.atomic import swap_dir
from hllm.errors import ConfigError, DataError
from hllm.lineage import data_sha256
from hllm.msr.config import MSRConfig, config_from_dict
from hllm.msr.data import (SPLITS, Encoded, MSRRows, encode, index_rows, load_rows,
                           require_auc_cells)
from hllm.msr.evaluate import evaluate_msr, predict
from hllm.msr.train import build_model, train_msr

log = logging.getLogger(__name__)

ROW_KEY = ("user_id", "item_id", "scenario", "label", "timestamp")


def split_fingerprint(rows: MSRRows) -> str:
    """sha256 over every split's rows (ids, scenario, label, time): same value = same split."""
    h = hashlib.sha256()
    for split in SPLITS:
        frame = rows.splits[split][list(ROW_KEY)].astype(str)
        h.update(split.encode() + b"\x1d")
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def model_label(cfg: MSRConfig, llm4msr: bool) -> str:
    return cfg.model.backbone + ("+llm4msr" if llm4msr else "")


def train_run(cfg: MSRConfig, data: str, out: str | Path, *, llm4msr: bool = True,
              device: str = "cpu", progress: bool | None = None,
              rows: MSRRows | None = None, knowledge_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the backbone (alone or with LLM4MSR), evaluate, write RUN/ atomically; metrics.

    knowledge_dir: vectors written by `hllm msr knowledge --out` (the pipeline's knowledge
    step); without it they come from the knowledge cache, or the LLM on a miss.
    """
    out = Path(out)
    t0 = time.perf_counter()
    rows = rows or load_rows(data, cfg.data)
    require_auc_cells(rows)
    enc = encode(rows)
    timings = {"load_data_s": time.perf_counter() - t0}
    knowledge, texts, kstats = None, None, {}
    if llm4msr and knowledge_dir is not None:
        from hllm.msr.features import load_knowledge

        scen_v, user_v, texts = load_knowledge(knowledge_dir, enc)
        source = ("feature store" if (Path(knowledge_dir) / "feature_repo").is_dir()
                  else "knowledge.safetensors")
        knowledge, kstats = (scen_v, user_v), {"source": f"{knowledge_dir} ({source})"}
    elif llm4msr:
        from hllm.msr.knowledge import build_knowledge

        t1 = time.perf_counter()
        scen, users = build_knowledge(rows, enc, cfg.knowledge, device=device, progress=progress)
        knowledge = (scen.vectors, users.vectors)
        texts = users.texts
        kstats = {"scenario": vars(scen.stats), "user": vars(users.stats)}
        timings["knowledge_s"] = time.perf_counter() - t1
    model = build_model(cfg, enc, *(knowledge or (None, None)))
    result = train_msr(model, enc, cfg.train, device=device, progress=progress)
    timings["train_s"] = result.seconds
    model.cpu()
    test_probs = predict(model, enc.tensors["test"], "cpu", cfg.train.eval_batch_size)
    metrics = {
        "model": model_label(cfg, llm4msr), "llm4msr": llm4msr,
        **evaluate_msr(model, enc.tensors["test"], enc.scenarios),
        "valid": evaluate_msr(model, enc.tensors["valid"], enc.scenarios),
        "scenarios": enc.scenarios, "best_epoch": result.best_epoch,
        "split_sha256": split_fingerprint(rows), "data_sha256": data_sha256(data),
        "params": sum(p.numel() for p in model.parameters()),
        "rows": {s: len(rows.splits[s]) for s in SPLITS},
        "timings": timings, "history": result.history, "knowledge": kstats,
    }
    staged = out.with_name(out.name + ".staged")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    run_info = {"model": metrics["model"], "dataset": str(data), "llm4msr": llm4msr}
    (staged / "config.yaml").write_text(yaml.safe_dump({"run": run_info, **cfg.to_dict()},
                                                       sort_keys=False))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(staged / "model.safetensors"))
    (staged / "encoding.json").write_text(json.dumps(encoding_record(rows, enc)))
    test = enc.tensors["test"]
    np.savez(staged / "test_predictions.npz", label=test.label.numpy(), probability=test_probs,
             scenario=test.scenario.numpy())
    if texts:
        (staged / "knowledge.json").write_text(json.dumps({"user": texts}, ensure_ascii=False, indent=1))
    (staged / "metrics.json").write_text(strict_json.dumps(metrics))
    swap_dir(staged, out)
    log.info("%s: test AUC %.4f logloss %.4f -> %s", metrics["model"], metrics["auc"],
             metrics["logloss"], out)
    return metrics


def encoding_record(rows: MSRRows, enc: Encoded) -> dict[str, Any]:
    """What a request needs to become model input: vocabularies and side tables by raw id."""
    users = rows.users.set_index("user_id") if "user_id" in rows.users.columns else pd.DataFrame()
    items = rows.items.set_index("item_id")
    user_fields = [f for f in rows.fields if f in users.columns]
    item_fields = [f for f in rows.fields if f not in user_fields and f in items.columns]
    return {
        "scenarios": enc.scenarios, "fields": list(enc.field_names),
        "cardinalities": enc.cardinalities, "knowledge_users": enc.knowledge_users,
        "vocab": {k: v for k, v in enc.vocab.items()},
        "user_fields": {f: {str(u): str(x) for u, x in users[f].items()} for f in user_fields},
        "item_fields": {f: {str(i): str(x) for i, x in items[f].items()} for f in item_fields},
    }


@dataclass
class MSRRun:
    """A saved run, rebuilt: the model in eval mode and what turns raw ids into its input."""

    path: Path
    config: MSRConfig
    info: dict[str, Any]
    metrics: dict[str, Any]
    encoding: dict[str, Any]
    model: nn.Module

    @property
    def scenarios(self) -> list[str]:
        return list(self.encoding["scenarios"])

    @cached_property
    def lookups(self) -> dict[str, dict[str, int]]:
        return lookups(self.encoding)  # built once per loaded run, not per request

    def batch(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Raw rows (user_id, item_id, scenario[, field columns]) -> a model batch."""
        return rows_to_batch(frame, self.encoding, source=str(self.path), index=self.lookups)

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.model.eval()
        return torch.sigmoid(self.model(self.batch(frame))[1]).numpy()


def rows_to_batch(frame: pd.DataFrame, encoding: dict[str, Any], source: str = "request",
                  index: dict[str, dict[str, int]] | None = None) -> dict[str, torch.Tensor]:
    """Map raw ids to indices the way training did (unseen -> 0); unknown scenarios are errors.

    Field columns the request does not carry come from the run's per-user and per-item
    tables. A user with no knowledge row (new since training) reads row 0's vector: a
    documented approximation until the knowledge features are refreshed.
    """
    missing = [c for c in ("user_id", "item_id", "scenario") if c not in frame.columns]
    if missing:
        raise ConfigError(f"{source}: request is missing column(s) {', '.join(missing)}; "
                          "need user_id, item_id and scenario")
    index = index or lookups(encoding)
    unknown = sorted(set(frame["scenario"].astype(str)) - set(index["scenario"]))
    if unknown:
        raise ConfigError(f"{source}: unknown scenario(s) {unknown}; the model knows "
                          f"{encoding['scenarios']}")
    users, items = frame["user_id"].astype(str), frame["item_id"].astype(str)
    looked_up = {f: (users.map(encoding["user_fields"][f]) if f in encoding["user_fields"]
                     else items.map(encoding["item_fields"].get(f, {}))).fillna("")
                 for f in encoding["fields"] if f not in frame.columns}
    batch = index_rows(frame.assign(**looked_up), encoding["vocab"], encoding["fields"],
                       index["scenario"], index["user_k"])
    return {**batch, "label": torch.zeros(len(frame))}


def lookups(encoding: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Scenario name -> index and user id -> knowledge row, from a run's encoding."""
    return {"scenario": {s: i for i, s in enumerate(encoding["scenarios"])},
            "user_k": {u: i for i, u in enumerate(encoding["knowledge_users"])}}


def load_run(path: str | Path) -> MSRRun:
    """Rebuild a saved MSR run on CPU; errors name the missing file."""
    path = Path(path)
    for name in ("config.yaml", "model.safetensors", "encoding.json", "metrics.json"):
        if not (path / name).is_file():
            raise ConfigError(f"{path}: no {name}; pass a run directory written by `hllm msr train`")
    saved = yaml.safe_load((path / "config.yaml").read_text())
    info = saved.pop("run", {})
    cfg = config_from_dict(saved)
    encoding = json.loads((path / "encoding.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    knowledge = None
    if info.get("llm4msr"):
        knowledge = (torch.zeros_like(weights["scenario_knowledge"]),
                     torch.zeros_like(weights["user_knowledge"]))
    enc = Encoded({}, encoding["cardinalities"], tuple(encoding["fields"]), encoding["scenarios"],
                  encoding["knowledge_users"])
    model = build_model(cfg, enc, *(knowledge or (None, None)))
    model.load_state_dict(weights)
    model.eval()
    metrics = json.loads((path / "metrics.json").read_text())
    return MSRRun(path, cfg, info, metrics, encoding, model)


def evaluate_run(run_dir: str | Path, out: str | Path | None = None, data: str | None = None
                 ) -> dict[str, Any]:
    """Score a saved run again from its weights on the data as it is now.

    Refuses a changed split (the metrics would not be comparable); writes metrics.json and
    test_predictions.npz under `out` (default: the run directory), the gate's evidence.
    """
    run = load_run(run_dir)
    data = data or run.info["dataset"]
    rows = load_rows(data, run.config.data)
    split = split_fingerprint(rows)
    if split != run.metrics["split_sha256"]:
        raise DataError(f"{data}: the split differs from the one {run_dir} was trained on "
                        f"(split_sha256 {split[:12]} != {run.metrics['split_sha256'][:12]})")
    cols = ["user_id", "item_id", "scenario", *rows.fields]
    result = {}
    for name in ("valid", "test"):
        frame = rows.splits[name]
        probs = run.predict(frame[cols])
        result[name] = (frame, probs)
    from hllm.msr.evaluate import msr_metrics

    scen_index = {s: i for i, s in enumerate(run.scenarios)}

    def scored(name: str) -> dict[str, float]:
        frame, probs = result[name]
        return msr_metrics(frame["label"].to_numpy(), probs, frame["scenario"].map(scen_index).to_numpy(),
                           run.scenarios)

    metrics = {**run.metrics, **scored("test"), "valid": scored("valid"), "evaluated_on": str(data)}
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame, probs = result["test"]
    np.savez(out / "test_predictions.npz", label=frame["label"].to_numpy(np.float32), probability=probs,
             scenario=frame["scenario"].map(scen_index).to_numpy(np.int64))
    (out / "metrics.json").write_text(strict_json.dumps(metrics))
    return metrics
