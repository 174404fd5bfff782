"""The gate's paired bootstrap at catalog-platform scale: peak memory and time.

    python bench/bootstrap_memory.py                 # 1M users, 2,000 resamples
    python bench/bootstrap_memory.py --users 100000

Peak memory is what tracemalloc sees numpy allocate (numpy reports its buffers to it),
measured per call. Side by side in one run: the blocked bootstrap the gate uses
(`hllm.evaluate.paired_bootstrap`) and the all-at-once draw it replaced, the latter at
`--naive-samples` resamples only (at 2,000 it needs samples x users x 16 bytes: 32 GB at
1M users), with its 2,000-resample peak extrapolated linearly, and the two intervals
checked equal at the size both ran.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from hllm.evaluate import paired_bootstrap, per_user_metric

GiB = 1 << 30


def measured(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak, seconds


def all_at_once(a: np.ndarray, b: np.ndarray, samples: int, seed: int = 0) -> dict[str, float]:
    """The bootstrap as it was: every resample's indices in one samples x users array."""
    pa, pb = per_user_metric(a, "ndcg@10"), per_user_metric(b, "ndcg@10")
    idx = np.random.default_rng(seed).integers(0, len(pa), size=(samples, len(pa)))
    lo, hi = np.quantile((pa[idx] - pb[idx]).mean(1), [(1 - 0.95) / 2, (1 + 0.95) / 2])
    return {"diff": float(pa.mean() - pb.mean()), "low": float(lo), "high": float(hi)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--naive-samples", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.integers(1, 2000, args.users).astype(float)  # ranks of two models
    b = np.maximum(1, a + rng.integers(-30, 30, args.users)).astype(float)

    small_blocked, peak_small, t_small = measured(
        lambda: paired_bootstrap(a, b, samples=args.naive_samples))
    small_naive, peak_naive, t_naive = measured(lambda: all_at_once(a, b, args.naive_samples))
    full, peak_full, t_full = measured(lambda: paired_bootstrap(a, b, samples=args.samples))
    naive_full = peak_naive * args.samples / args.naive_samples

    print(f"{args.users:,} users; peak numpy memory (tracemalloc) and wall time, 2 cores")
    print("| bootstrap | resamples | peak | seconds |")
    print("|---|---|---|---|")
    print(f"| all at once (before) | {args.naive_samples:,} | {peak_naive / GiB:.2f} GiB | "
          f"{t_naive:.1f} |")
    print(f"| blocked (the gate's) | {args.naive_samples:,} | {peak_small / GiB:.3f} GiB | "
          f"{t_small:.1f} |")
    print(f"| all at once (before), extrapolated | {args.samples:,} | {naive_full / GiB:.1f} GiB "
          "| - |")
    print(f"| blocked (the gate's) | {args.samples:,} | {peak_full / GiB:.3f} GiB | {t_full:.1f} |")
    print(f"blocked peak at {args.samples:,} resamples: {peak_full / GiB:.3f} GiB "
          f"({naive_full / peak_full:.0f}x less than all at once); intervals at "
          f"{args.naive_samples:,} resamples equal bit for bit: {small_blocked == small_naive}")
    print(f"interval at {args.samples:,}: {full}")


if __name__ == "__main__":
    main()
