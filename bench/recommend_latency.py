"""`hllm recommend` latency: one user, a 50-item history, ranked over every ml-100k item.

    python bench/recommend_latency.py --data ../shared/data/ml-100k [--run runs/latest/hllm]

Serves the same MLflow pyfunc `hllm register` logs (saved to a local directory here, so
no registry round trip is timed), with its cached item table, and reads each user's
history from the Feast SQLite online store, as `hllm recommend` does. Without --run, a
cpu-default HLLM is trained for one epoch first (the Item LLM embeddings are cached, so
this is quick after `make run`). Per request: A/B assignment, online history read, the
User LLM over the history, scores against all items, top-10.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hllm.assignment import assign  # noqa: E402
from hllm.experiment import load_ab_config  # noqa: E402
from hllm.features import build_features  # noqa: E402
from hllm.serving import OnlineHistory, top_k  # noqa: E402


def saved_pyfunc(run: Path, out: Path):
    import mlflow.pyfunc

    from hllm.pyfunc_model import HLLMRecommender, signature
    from hllm.ranking_registration import check_run_dir, rebuild_model_dir

    config, metrics = check_run_dir(run)
    artifacts = rebuild_model_dir(run, config, metrics, out / "artifacts")
    mlflow.pyfunc.save_model(str(out / "model"), python_model=HLLMRecommender(),
                             artifacts=artifacts, signature=signature())
    return mlflow.pyfunc.load_model(str(out / "model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--run", help="a finished HLLM run (default: train cpu-default 1 epoch)")
    parser.add_argument("--ab-config", default="configs/ab/hllm-rollout.yaml")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else tmp / "hllm"
        if not args.run:
            from hllm.config import load_config
            from hllm.train import train

            t0 = time.perf_counter()
            train(load_config("cpu-default", overrides={"train.epochs": 1}), "hllm", args.data, run,
                  progress=False)
            print(f"trained cpu-default HLLM for 1 epoch in {time.perf_counter() - t0:.0f} s")
        model = saved_pyfunc(run, tmp)
        build_features(args.data, tmp / "features")
        history_of = OnlineHistory(tmp / "features")
        cfg = load_ab_config(args.ab_config)
        users = [u for u in map(str, range(1, 944)) if len(history_of(u)) == 50]
        num_items = len(model.unwrap_python_model().item_ids) - 1
        rng = random.Random(0)
        lookup_ms, rank_ms, total_ms = [], [], []
        for i in range(args.requests + 10):  # the first 10 warm caches up
            user = rng.choice(users)
            t0 = time.perf_counter()
            assign(cfg, user)
            history = history_of(user)
            t1 = time.perf_counter()
            ids, _ = top_k(model, history, 10)
            t2 = time.perf_counter()
            assert len(ids) == 10
            if i >= 10:
                lookup_ms.append(1000 * (t1 - t0))
                rank_ms.append(1000 * (t2 - t1))
                total_ms.append(1000 * (t2 - t0))

    def pct(xs: list[float]) -> str:
        return f"p50 {np.percentile(xs, 50):6.2f} ms   p99 {np.percentile(xs, 99):6.2f} ms"

    print(f"{args.requests} requests, users with a 50-item history, {num_items} items ranked, CPU:")
    print(f"  assignment + online history   {pct(lookup_ms)}")
    print(f"  pyfunc top-10 over all items  {pct(rank_ms)}")
    print(f"  recommend (both)              {pct(total_ms)}")


if __name__ == "__main__":
    main()
