"""LLM4MSR serving cost: backbone + meta networks against the backbone alone.

    python bench/msr_latency.py --data ../shared/data/ml-100k [--config configs/msr/cpu-default.yaml]

Knowledge vectors come from the cache `hllm msr knowledge` filled (computed here once
if missing); the LLM never runs at request time, which the bench checks. A request
scores one user's candidates in one scenario (100 test rows, and a single row);
the two models are timed interleaved, request by request, in one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hllm.cli_help import add_set_argument  # noqa: E402
from hllm.config import parse_set  # noqa: E402
from hllm.msr.config import load_msr_config  # noqa: E402
from hllm.msr.data import encode, load_rows  # noqa: E402
from hllm.msr.knowledge import build_knowledge  # noqa: E402
from hllm.msr.train import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--config", default="configs/msr/cpu-default.yaml")
    add_set_argument(parser)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one request, one core: how a CTR server is usually sized
    cfg = load_msr_config(None, args.config, parse_set(args.set))
    rows = load_rows(args.data, cfg.data)
    enc = encode(rows)
    build_knowledge(rows, enc, cfg.knowledge)  # fills the cache if this machine lacks it
    scen, users = build_knowledge(rows, enc, cfg.knowledge)
    assert scen.stats.llm_forward_calls == 0 and users.stats.llm_forward_calls == 0
    torch.manual_seed(0)
    models = {"backbone": build_model(cfg, enc).eval(),
              "backbone+llm4msr": build_model(cfg, enc, scen.vectors, users.vectors).eval()}
    test = enc.tensors["test"]
    rng = np.random.default_rng(0)
    print(f"{cfg.model.backbone}, knowledge from cache ({scen.stats.path}), 1 thread, "
          f"{args.requests} requests per size")
    for size in (1, 100):
        ms = {name: [] for name in models}
        for i in range(args.requests + 20):  # the first 20 warm up
            start = int(rng.integers(0, len(test) - size))
            batch = test.batch(torch.arange(start, start + size))
            for name, model in models.items():
                t0 = time.perf_counter()
                with torch.inference_mode():
                    torch.sigmoid(model(batch)[1])
                if i >= 20:
                    ms[name].append(1000 * (time.perf_counter() - t0))
        base = np.percentile(ms["backbone"], 50)
        for name, xs in ms.items():
            p50, p99 = np.percentile(xs, 50), np.percentile(xs, 99)
            print(f"  {size:>3} rows  {name:<17} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  "
                  f"p50 ratio {p50 / base:.2f}x")


if __name__ == "__main__":
    main()
