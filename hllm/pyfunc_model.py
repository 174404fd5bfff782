"""The trained recommender as an MLflow pyfunc: item-id histories in, top-k item ids out.

Serving needs only the user tower and the item vectors, so the model carries
  * config.yaml and the run's best weights (model.safetensors),
  * item_table.safetensors: every item's vector exactly as evaluation computed it
    (Item LLM + projection for HLLM, the id embedding for SASRec), so no item text
    and no Item LLM are needed at serving time,
  * items.json: the raw item id of each table row,
  * tower.json: which model, its user tower's transformer config, max history,
  * catalog.faiss, only for catalogs over `exact_max_items` items: an HNSW index over
    the normalised item vectors (hllm.catalog_index),
  * user_tower.onnx, unless registered with `--user-tower eager`: the user tower as an
    ONNX graph (hllm.user_tower_onnx), checked against the eager tower at export. It is
    used when onnxruntime is installed; without it the eager tower answers.
Scoring follows hllm.evaluate step by step (right-padded histories of the last
`max_history` items, batches of `eval_batch_size`, cosine scores, item 0 and the
history masked), so a batch of test histories reproduces the run's ranks exactly with
the eager tower; through user_tower.onnx the user vectors agree to about 1e-7, so only
items tied that closely can swap places.
With catalog.faiss the same user vectors search the index instead of scoring every
item: approximate top-k (recall@10 against exact is what bench/catalog_scale.py and
tests/test_catalog_index.py measure), with cosines as scores.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import yaml

from hllm.catalog_index import EXACT_MAX_ITEMS, INDEX_FILE, load_index, search, write_catalog_index
from hllm.config import config_from_dict
from hllm.errors import ConfigError, HLLMError

log = logging.getLogger(__name__)
USER_TOWER_FILE = "user_tower.onnx"  # the user tower as ONNX (hllm.user_tower_onnx)
USER_TOWERS = ("onnx", "eager")  # how a version serves its user tower

DEFAULT_K = 10


def signature():
    """Input: `history` (raw item ids, oldest first) and optional per-row `k`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(Array(DataType.string), "history"),
                     ColSpec(DataType.long, "k", required=False)])
    outputs = Schema([ColSpec(Array(DataType.string), "item_ids"),
                      ColSpec(Array(DataType.double), "scores")])
    params = ParamSchema([ParamSpec("k", DataType.long, DEFAULT_K),
                          ParamSpec("exclude_history", DataType.boolean, True)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def write_artifacts(run_dir: Path, out: Path, model, cfg, model_name: str,
                    item_raw_ids: list[str], exact_max_items: int = EXACT_MAX_ITEMS,
                    user_tower: str = "onnx") -> dict[str, str]:
    """Files the pyfunc needs, written under `out`; returns MLflow's artifacts mapping.

    Catalogs of more than `exact_max_items` items also get catalog.faiss; user_tower
    "onnx" adds user_tower.onnx ("eager": serve the tower through PyTorch only). A tower
    that does not export, or whose graph does not match PyTorch, is registered without
    the graph, with a warning: an optimisation failing must not block a release.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from hllm.models.hllm import HLLM

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    shutil.copyfile(run_dir / "best" / "model.safetensors", out / "model.safetensors")
    model.eval()
    with torch.no_grad():
        table = model.all_item_vectors(len(item_raw_ids) - 1, torch.device("cpu"))
    save_file({"vectors": table.detach().cpu().contiguous()}, str(out / "item_table.safetensors"))
    (out / "items.json").write_text(json.dumps({"item_ids": item_raw_ids}))
    tower: dict[str, Any] = {"model": model_name, "max_history": cfg.data.max_history,
                             "batch_size": cfg.train.eval_batch_size}
    if isinstance(model, HLLM):
        tower["user_llm_config"] = model.user_llm.backbone.config.to_dict()
    tower_json = json.dumps(tower, indent=2, default=str)
    (out / "tower.json").write_text(tower_json)
    names = ["config.yaml", "model.safetensors", "item_table.safetensors", "items.json", "tower.json"]
    if write_catalog_index(table.detach().float().cpu().numpy(), out, exact_max_items) is not None:
        names.append(INDEX_FILE)
    if user_tower == "onnx":
        from hllm import user_tower_onnx

        # Rebuilt from the shipped files, as the server rebuilds it: parity is checked
        # against the very tower the eager path would serve.
        weights = load_file(str(out / "model.safetensors"))
        module, user_states = _user_tower(tower, cfg, weights, len(item_raw_ids) - 1)
        try:
            user_tower_onnx.cached_export(
                user_tower_onnx.LastState(module, user_states), table.detach().float().cpu(),
                cfg.data.max_history,
                user_tower_onnx.cache_key(out / "model.safetensors", tower_json),
                out / USER_TOWER_FILE)
            names.append(USER_TOWER_FILE)
        except HLLMError as exc:  # the version still serves, through PyTorch
            log.warning("%s; registering without %s: the eager tower will serve",
                        exc, USER_TOWER_FILE)
    elif user_tower not in USER_TOWERS:
        raise ConfigError(f"user_tower must be one of {', '.join(USER_TOWERS)}, "
                          f"got {user_tower!r}")
    return {name: str(out / name) for name in names}


def _user_tower(tower: dict[str, Any], cfg, weights: dict, num_items: int):
    """A callable (item_vecs, mask) -> states, rebuilt from the stored config and weights."""
    import torch

    if tower["model"] == "sasrec":
        from hllm.models.sasrec import SASRec

        model = SASRec(cfg.sasrec, num_items, cfg.data.max_history + 1,
                       cfg.train.logit_scale_init, cfg.train.logit_scale_max)
        model.load_state_dict(weights)
        return model.eval(), model.user_states

    from hllm.models.user_llm import UserLLM

    arch = {k: v for k, v in tower["user_llm_config"].items()
            if k not in ("architectures", "transformers_version", "_name_or_path", "dtype",
                         "torch_dtype", "output_hidden_states", "return_dict")}
    user_llm = UserLLM(replace(cfg.user_llm, path=None, init="random", arch=arch,
                               gradient_checkpointing=False))
    prefix = "user_llm."
    user_llm.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    user_llm.to(torch.float32)
    return user_llm.eval(), user_llm


def _onnx_tower(path: Path):
    """The shipped ONNX user tower, or None (with a warning) where onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401 - optional at serving time: the eager tower answers
    except ImportError:
        log.warning("%s: onnxruntime is not installed; serving the eager user tower", path.name)
        return None
    from hllm.user_tower_onnx import OnnxUserTower

    return OnnxUserTower(path)


class HLLMRecommender(mlflow.pyfunc.PythonModel):
    """Top-k next items for each history; scores are cosine similarities.

    Every item is scored when the version has no catalog.faiss; with it, the index is
    searched and the normalised copy of the table (as large as the index) is not made.
    """

    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file

        art = context.artifacts
        saved = yaml.safe_load(Path(art["config.yaml"]).read_text())
        saved.pop("run", None)
        cfg = config_from_dict(saved)
        self.tower_info = json.loads(Path(art["tower.json"]).read_text())
        self.item_ids: list[str] = json.loads(Path(art["items.json"]).read_text())["item_ids"]
        self.index = {raw: i for i, raw in enumerate(self.item_ids) if i > 0}
        self.table = load_file(art["item_table.safetensors"])["vectors"]
        self.catalog = None  # the HNSW index, when the version ships one
        self.items = None    # normalised table: exact scoring only
        if INDEX_FILE in art:
            self.catalog = load_index(Path(art[INDEX_FILE]), width=self.table.shape[1],
                                      rows=len(self.item_ids))
        else:
            self.items = torch.nn.functional.normalize(self.table.float(), dim=-1)
        weights = load_file(art["model.safetensors"])
        self.module, self.user_states = _user_tower(self.tower_info, cfg, weights,
                                                    len(self.item_ids) - 1)
        self.max_history = int(self.tower_info["max_history"])
        self.batch_size = int(self.tower_info["batch_size"])
        self.onnx_tower = None
        self.table_np = self.table.float().numpy()
        if USER_TOWER_FILE in art:
            self.onnx_tower = _onnx_tower(Path(art[USER_TOWER_FILE]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        params = params or {}
        default_k = int(params.get("k", DEFAULT_K))
        frame = pd.DataFrame(model_input)
        if "history" not in frame.columns:
            raise ValueError("input needs a `history` column: lists of raw item ids")
        ks = ([default_k if pd.isna(k) else int(k) for k in frame["k"]] if "k" in frame.columns
              else [default_k] * len(frame))
        answers = self.recommend([list(h) for h in frame["history"]], ks,
                                 bool(params.get("exclude_history", True)))
        return pd.DataFrame({"item_ids": [a[0] for a in answers],
                             "scores": [a[1] for a in answers]})

    def recommend(self, histories: list[list[str]], ks: list[int], exclude: bool = True
                  ) -> list[tuple[list[str], list[float]]]:
        """(item ids, scores) per history: what `predict` returns, without pandas on the way.

        The server calls this directly; a DataFrame in and out costs about 1 ms a call.
        """
        import torch

        hists = [[self.index[str(i)] for i in h if str(i) in self.index]
                 for h in histories]  # unknown (cold-start) ids cannot be scored
        answers: list[tuple[list[str], list[float]]] = [([], []) for _ in hists]
        rows = [r for r, h in enumerate(hists) if h]
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start: start + self.batch_size]
                user_vec = self._user_vectors([hists[r][-self.max_history:] for r in chunk])
                if self.catalog is not None:
                    self._from_index(user_vec, chunk, hists, ks, exclude, answers)
                    continue
                scores = user_vec @ self.items.T  # (B, N+1) cosines, as hllm.evaluate
                scores[:, 0] = -torch.inf
                for b, r in enumerate(chunk):
                    row = scores[b]
                    if exclude:
                        row[torch.as_tensor(hists[r], dtype=torch.long)] = -torch.inf
                    k = min(max(ks[r], 0), len(self.item_ids) - 1 - (
                        len(set(hists[r])) if exclude else 0))
                    top = torch.topk(row, k)
                    answers[r] = ([self.item_ids[i] for i in top.indices.tolist()],
                                  top.values.tolist())
        return answers

    def _from_index(self, user_vec, chunk: list[int], hists: list[list[int]], ks: list[int],
                    exclude: bool, answers: list) -> None:
        """Approximate top-k for the rows in `chunk` from catalog.faiss (padding never returned)."""
        skip = [hists[r] if exclude else [] for r in chunk]
        found = search(self.catalog, user_vec.numpy(), [ks[r] for r in chunk], skip)
        for r, (ids, scores) in zip(chunk, found):
            answers[r] = ([self.item_ids[i] for i in ids], scores)

    def _user_vectors(self, hists: list[list[int]], eager: bool = False):
        """(B, D) normalised user vectors, computed exactly as hllm.evaluate.user_ranks does:
        by the ONNX graph when the version ships one (unless `eager`), else by PyTorch."""
        import torch
        import torch.nn.functional as F

        width = max(len(h) for h in hists)
        ids = np.zeros((len(hists), width), dtype=np.int64)
        for b, h in enumerate(hists):
            ids[b, : len(h)] = h
        if self.onnx_tower is not None and not eager:
            return torch.from_numpy(self.onnx_tower(self.table_np[ids], ids > 0))
        ids_t = torch.from_numpy(ids)
        mask = ids_t > 0
        with torch.no_grad():
            states = self.user_states(self.table[ids_t], mask)
        last = mask.sum(1) - 1
        return F.normalize(states[torch.arange(len(hists)), last].float(), dim=-1)


def pip_requirements(catalog_index: bool = False, user_tower_onnx: bool = False) -> list[str]:
    """Pinned to what trained the model; hllm itself travels as code_paths.

    catalog_index: the version ships catalog.faiss, so serving needs faiss-cpu too;
    user_tower_onnx: it ships user_tower.onnx, served by onnxruntime.
    """
    pins = ["torch", "transformers", "safetensors", "numpy", "pandas", "pyyaml", "mlflow"]
    if catalog_index:
        pins.append("faiss-cpu")
    if user_tower_onnx:
        pins.append(onnx_runtime_dist())
    return [f"{name}=={version(name)}" for name in pins]


def onnx_runtime_dist() -> str:
    """The onnxruntime build installed here, GPU or CPU (both run on CPU), for pins."""
    try:
        version("onnxruntime-gpu")
        return "onnxruntime-gpu"
    except PackageNotFoundError:
        return "onnxruntime"
