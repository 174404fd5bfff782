"""The user tower as an ONNX graph: a served request's model call with no Python inside it.

Why: under load, `hllm serve` spent about 9 ms of CPU per request, and the user tower's
eager forward was the largest part of it: 4-5 ms for one HLLM history through
transformers' Llama code, 2.3 ms for SASRec. The same towers in ONNX Runtime take 1.7 and
0.5 ms (bench: tests measure parity, README the load), and ONNX Runtime releases the
interpreter lock for the whole call, so the server's event loop keeps answering.

The graph maps right-padded item vectors `item_vectors` (B, L, D) and `mask` (B, L) to
`user_vector` (B, D): the normalised state at each history's last item, which is what
`HLLMRecommender` scores items against. B and L are dynamic.

Export uses the torch.export-based exporter (the TorchScript tracer bakes the batch size
into nn.MultiheadAttention's reshapes, so SASRec's graph would only take its example's
shape). It takes about 10 s per tower on 2 cores, so graphs are cached under
$HLLM_CACHE/user-towers/, keyed by the weights and the tower description: registering
the same run again reuses the graph. A graph ships only after it matches the eager tower
on histories of every length up to `max_history` (max abs difference <= TOLERANCE).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hllm import storage
from hllm.errors import HLLMError

log = logging.getLogger(__name__)

INPUTS = ("item_vectors", "mask")
OUTPUT = "user_vector"
OPSET = 18
TOLERANCE = 1e-4  # fp32 graph against the fp32 eager tower; measured ~1e-7


class LastState(nn.Module):
    """(item vectors, mask) -> the normalised user state at each history's last item."""

    def __init__(self, module: nn.Module, user_states: Callable) -> None:
        super().__init__()
        self.module = module  # registered, so the exporter sees its weights
        self.user_states = user_states

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.user_states(item_vectors, mask)
        last = (mask.long().sum(1) - 1).view(-1, 1, 1).expand(-1, 1, states.size(-1))
        return F.normalize(torch.gather(states, 1, last).squeeze(1).float(), dim=-1)


def cache_key(weights: Path, tower_json: str) -> str:
    h = hashlib.sha256(tower_json.encode())
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(f"torch {torch.__version__} opset {OPSET}".encode())
    return h.hexdigest()[:24]


def export(tower: LastState, table: torch.Tensor, max_history: int, path: Path) -> float:
    """Write `tower` to `path` (through a temp file) and return its max abs difference
    from eager on random histories; HLLMError when the exporter fails or the difference
    exceeds TOLERANCE (then nothing is written)."""
    tower = tower.eval()
    width = min(max_history, 8)
    ids = torch.randint(1, table.shape[0], (2, width))
    ids[1, width // 2:] = 0
    example = (table[ids].float(), ids > 0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=max(max_history, 2) * 4)
    shapes = ({0: batch, 1: length}, {0: batch, 1: length})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Gradients on: under no_grad nn.TransformerEncoder takes its fused fast path,
            # whose kernel has no ONNX form.
            torch.onnx.export(tower, example, str(tmp), input_names=list(INPUTS),
                              output_names=[OUTPUT], dynamic_shapes=shapes, opset_version=OPSET,
                              dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure: this tower has no graph
        tmp.unlink(missing_ok=True)
        raise HLLMError(f"user tower: the ONNX export failed ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:200]})") from exc
    try:
        diff = parity(OnnxUserTower(tmp), tower, table, max_history)
        if diff > TOLERANCE:
            raise HLLMError(f"user tower: the ONNX graph differs from the eager tower by "
                            f"{diff:.2e} (> {TOLERANCE:g})")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def parity(graph: "OnnxUserTower", tower: LastState, table: torch.Tensor, max_history: int,
           seed: int = 0) -> float:
    """Max abs difference between graph and eager tower: batches of 1 and 8 histories,
    lengths from 1 to max_history, right-padded."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in (1, 8):
        lengths = [max_history] + list(rng.integers(1, max_history + 1, batch - 1))
        ids = np.zeros((batch, max(lengths)), dtype=np.int64)
        for b, n in enumerate(lengths):
            ids[b, :n] = rng.integers(1, table.shape[0], n)
        ids_t = torch.from_numpy(ids)
        with torch.no_grad():
            want = tower(table[ids_t].float(), ids_t > 0).numpy()
        got = graph(table[ids_t].float().numpy(), ids > 0)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def cached_export(tower: LastState, table: torch.Tensor, max_history: int, key: str,
                  out: Path) -> Path:
    """`out` (a copy of the cached graph for `key`), exporting into the cache first if needed."""
    cached = storage.cache_root() / "user-towers" / f"{key}.onnx"
    if cached.is_file():
        log.info("user tower: ONNX graph from the cache (%s)", cached.name)
    else:
        log.info("user tower: exporting to ONNX (about 10 s)")
        diff = export(tower, table, max_history, cached)
        log.info("user tower: ONNX graph matches eager (max abs diff %.1e)", diff)
    shutil.copyfile(cached, out)
    return out


class OnnxUserTower:
    """The exported tower on ONNX Runtime's CPU provider with one thread per call:
    the server gets its parallelism from concurrent requests, not from kernels."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from hllm.onnx_export import session

        self.path = Path(path)
        self.session = session(self.path, device="cpu", threads=threads)

    def __call__(self, item_vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUTS[0]: np.ascontiguousarray(item_vectors,
                                                                           dtype=np.float32),
                                           INPUTS[1]: mask})[0]
