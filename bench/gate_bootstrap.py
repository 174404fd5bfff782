"""The gate's paired bootstraps at platform scale: ranking (memory) and CTR (time).

    python bench/gate_bootstrap.py                 # 1M users, 2,000 resamples; 200k CTR rows
    python bench/gate_bootstrap.py --users 100000 --ctr-rows 20000

Peak memory is what tracemalloc sees numpy allocate (numpy reports its buffers to it),
measured per call. Side by side in one run: the blocked bootstrap the gate uses
(`hllm.evaluate.paired_bootstrap`) and the all-at-once draw it replaced, the latter at
`--naive-samples` resamples only (at 2,000 it needs samples x users x 16 bytes: 32 GB at
1M users), with its 2,000-resample peak extrapolated linearly, and the two intervals
checked equal at the size both ran.

The CTR gate's AUC bootstrap (LLM4MSR) is timed against the version that sorted every
resample again, on `--ctr-rows` rows with tied scores, and checked equal bit for bit.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from hllm.evaluate import paired_bootstrap, per_user_metric
from hllm.msr.evaluate import auc, paired_auc_bootstrap

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


def resorting_auc_bootstrap(labels, pa, pb, samples: int, seed: int = 0) -> dict[str, float]:
    """The CTR bootstrap as it was: each resample's rows sorted again by `auc`."""
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, len(labels), size=len(labels))
        diffs[i] = auc(labels[idx], pa[idx]) - auc(labels[idx], pb[idx])
    lo, hi = np.nanquantile(diffs, [(1 - 0.95) / 2, (1 + 0.95) / 2])
    return {"diff": auc(labels, pa) - auc(labels, pb), "low": float(lo), "high": float(hi)}


def ctr(rows: int, samples: int) -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(rows) < 0.3).astype(float)
    pa = np.round(rng.random(rows) * 0.5 + labels * 0.2, 3)  # rounded: many ties
    pb = np.round(rng.random(rows) * 0.5 + labels * 0.15, 3)
    t = time.perf_counter()
    before = resorting_auc_bootstrap(labels, pa, pb, samples)
    t_before = time.perf_counter() - t
    t = time.perf_counter()
    now = paired_auc_bootstrap(labels, pa, pb, samples=samples)
    t_now = time.perf_counter() - t
    print(f"CTR AUC bootstrap, {rows:,} rows x {samples:,} resamples: sorting every resample "
          f"{t_before:.1f} s, sorted once {t_now:.1f} s ({t_before / t_now:.1f}x); "
          f"equal bit for bit: {before == now}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--naive-samples", type=int, default=100)
    parser.add_argument("--ctr-rows", type=int, default=200_000)
    parser.add_argument("--ctr-samples", type=int, default=200)
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
    ctr(args.ctr_rows, args.ctr_samples)


if __name__ == "__main__":
    main()
