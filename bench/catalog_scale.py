"""Catalog scale: exact cosine top-10 against the HNSW index, 10^4 to 10^6 items, one run.

    python bench/catalog_scale.py [--sizes 10000,100000,1000000] [--queries 200] [--width 576] [--seed 0]

For each catalog size: the index build time (hllm.catalog_index.build_index, on every
core, as `hllm register` builds it), the index's bytes on disk and the process RSS, and per
request (one user vector, k=10, a 50-item history excluded) p50 and p99 for
  * exact: what the pyfunc does below `exact_max_items`: normalised table, one matmul,
    padding and history set to -inf, torch.topk;
  * index: hllm.catalog_index.search, the pyfunc's path above it (over-fetch, drop);
timed alternately query by query in this process, on one thread (torch.set_num_threads(1),
faiss.omp_set_num_threads(1)): the model server answers each request on one thread. Then
recall@10 of the index against exact. The bar at 10^6 items: index p50 <= 10 ms with
recall@10 >= 0.95, measured beside exact on 2 cores.

The vectors (--vectors clustered, the default). I.i.d. Gaussian vectors in 576-d have no
neighbourhood structure: every item is nearly equidistant from every query, which no
embedding catalog looks like and which is the worst case for any index (available as
--vectors gaussian). Text embeddings are anisotropic (random pairs have a mean cosine
around 0.2-0.3, not 0), put most of their variance in a few tens of directions with a
decaying spectrum, and group by topic. So an item here is
    centre[c] + spread * z  (64-d, z's variances falling as 1/rank), mapped into the width
    by a fixed orthonormal basis, + isotropic noise (40% of the variance) + a shared offset
    (mean cosine 0.25 between random items),
with one topic centre per 100 items, so larger catalogs are denser, as real ones are.
Queries relate to items as the model's user vectors do: training pulls a user vector
towards the next item's vector, so a query is a target item plus one more within-topic
step of the same structure; its history is 25 other items of the target's topic and 25
from anywhere, all excluded, so the over-fetch is exercised. The mean exact top-1 and
top-10 cosines are printed beside the timings: how far the neighbourhood stands out.

Progress goes to stderr (a bar on a terminal, log lines otherwise); the table to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hllm.catalog_index import IndexParams, build_index, save_index, search  # noqa: E402
from hllm.progress import Progress  # noqa: E402

K = 10
HISTORY = 50
RANK = 64             # latent directions carrying the structured part of each vector
ITEMS_PER_TOPIC = 100
NOISE_SHARE = 0.4     # of each vector's variance, spread evenly over every dimension
MEAN_COSINE = 0.25    # between two random items: the shared offset
WARMUP = 5            # requests per size not timed (first-touch of pages, caches)
CORES = len(os.sched_getaffinity(0))


@dataclass
class Catalog:
    table: np.ndarray            # (N+1, width) float32; row 0 is padding (zeros)
    queries: np.ndarray          # (Q, width) float32, L2-normalised
    histories: list[list[int]]   # table rows each query excludes
    targets: np.ndarray          # (Q,) the row each query was made from


def clustered(n: int, width: int, queries: int, rng: np.random.Generator) -> Catalog:
    """Topic clusters in a 64-d subspace with a falling spectrum, plus noise and an offset."""
    rank = min(RANK, width)
    topics = max(8, n // ITEMS_PER_TOPIC)
    basis = np.linalg.qr(rng.standard_normal((width, rank), dtype=np.float32))[0].T  # (r, width)
    spread = 0.7 * np.sqrt(_spectrum(rank))
    structured = rank * (1 + 0.49)  # E|centre + spread*z|^2: centres N(0, I), spread^2 sums to 0.49 r
    sigma = np.sqrt(NOISE_SHARE / (1 - NOISE_SHARE) * structured / width)
    offset = rng.standard_normal(width, dtype=np.float32)
    offset *= np.sqrt(MEAN_COSINE / (1 - MEAN_COSINE) * structured / (1 - NOISE_SHARE)) \
        / np.linalg.norm(offset)
    centres = rng.standard_normal((topics, rank), dtype=np.float32)

    def step(size: int) -> np.ndarray:  # one within-topic move: latent spread + noise
        return (spread * rng.standard_normal((size, rank), dtype=np.float32)) @ basis \
            + sigma * rng.standard_normal((size, width), dtype=np.float32)

    topic = rng.integers(0, topics, n)
    table = np.zeros((n + 1, width), dtype=np.float32)
    for start in range(0, n, 65_536):
        part = topic[start: start + 65_536]
        table[1 + start: 1 + start + len(part)] = centres[part] @ basis + offset + step(len(part))
    targets = rng.integers(1, n + 1, queries)
    q = table[targets] + step(queries)
    members = _members(topic)
    histories = []
    for t in targets:
        near = [int(i) + 1 for i in members[topic[t - 1]] if i + 1 != t]
        near = [int(i) for i in rng.permutation(near)[: HISTORY // 2]]
        anywhere = rng.integers(1, n + 1, HISTORY - len(near)).tolist()
        histories.append([i for i in near + anywhere if i != t])
    return Catalog(table, _unit(q), histories, targets)


def gaussian(n: int, width: int, queries: int, rng: np.random.Generator) -> Catalog:
    """I.i.d. N(0, I): no structure at all, the worst case (not what embeddings look like)."""
    table = np.zeros((n + 1, width), dtype=np.float32)
    for start in range(1, n + 1, 65_536):
        stop = min(start + 65_536, n + 1)
        table[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32)
    targets = rng.integers(1, n + 1, queries)
    q = table[targets] + rng.standard_normal((queries, width), dtype=np.float32)
    histories = [[int(i) for i in rng.integers(1, n + 1, HISTORY) if i != t] for t in targets]
    return Catalog(table, _unit(q), histories, targets)


def _spectrum(rank: int) -> np.ndarray:
    lam = 1.0 / np.arange(1, rank + 1, dtype=np.float32)
    return lam * rank / lam.sum()  # mean 1


def _members(topic: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(topic, kind="stable")
    bounds = np.searchsorted(topic[order], np.arange(topic.max() + 2))
    return [order[bounds[c]: bounds[c + 1]] for c in range(topic.max() + 1)]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def exact_top_k(items: torch.Tensor, query: torch.Tensor, history: list[int], k: int):
    """The pyfunc's exact path for one user: cosine to every row, padding and history masked."""
    scores = query @ items.T
    scores[0] = -torch.inf
    scores[torch.as_tensor(history, dtype=torch.long)] = -torch.inf
    return torch.topk(scores, k)


def rss_gb() -> float:
    """This process's resident set now, in GB: table, normalised copy and index together."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # peak, where no /proc


def pct(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


def run_size(n: int, args, ef_values: list[int]) -> list[dict]:
    import faiss

    rng = np.random.default_rng(args.seed + n)
    t0 = time.perf_counter()
    cat = (clustered if args.vectors == "clustered" else gaussian)(n, args.width, args.queries, rng)
    log.info("%s items: vectors in %.0f s", f"{n:,}", time.perf_counter() - t0)
    items = torch.nn.functional.normalize(torch.from_numpy(cat.table), dim=-1)  # as the pyfunc
    faiss.omp_set_num_threads(CORES)
    t0 = time.perf_counter()
    index = build_index(cat.table, IndexParams())
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        index_bytes = save_index(index, Path(tmp) / "catalog.faiss").stat().st_size
    rss = rss_gb()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    queries = torch.from_numpy(cat.queries)
    rows = []
    for ef in ef_values:
        index.hnsw.efSearch = ef
        exact_ms, index_ms, recalls, top1, top10 = [], [], [], [], []
        with Progress(len(queries) + WARMUP, f"{n:,} items, efSearch {ef}", unit="request") as bar:
            for j in list(range(WARMUP)) + list(range(len(queries))):
                q, hist = queries[j], cat.histories[j]
                t0 = time.perf_counter()
                with torch.no_grad():
                    truth = exact_top_k(items, q, hist, K)
                t1 = time.perf_counter()
                (found, _), = search(index, cat.queries[j: j + 1], [K], [hist])
                t2 = time.perf_counter()
                bar.update()
                if bar.done <= WARMUP:
                    continue
                exact_ms.append(1000 * (t1 - t0))
                index_ms.append(1000 * (t2 - t1))
                recalls.append(len(set(found) & set(truth.indices.tolist())) / K)
                top1.append(float(truth.values[0]))
                top10.append(float(truth.values[K - 1]))
        rows.append({"items": n, "ef": ef, "build_s": build_s, "index_mb": index_bytes / 1e6,
                     "rss_gb": rss, "exact": pct(exact_ms),
                     "index": pct(index_ms), "recall": float(np.mean(recalls)),
                     "top1": float(np.mean(top1)), "top10": float(np.mean(top10))})
        log.info("%s items, efSearch %d: recall@10 %.4f", f"{n:,}", ef, rows[-1]["recall"])
    return rows


def report(rows: list[dict], args) -> None:
    print(f"\n{args.vectors} vectors, width {args.width}, {args.queries} requests per size "
          f"(k={K}, {HISTORY}-item history excluded), 1 thread per request, "
          f"index built on {CORES} threads; HNSW M={IndexParams().m}, "
          f"efConstruction={IndexParams().ef_construction}")
    head = (f"{'items':>10} {'efSearch':>8} {'build s':>8} {'index MB':>9} {'RSS GB':>7} "
            f"{'exact p50':>10} {'p99':>7} {'index p50':>10} {'p99':>7} {'speed-up':>8} "
            f"{'recall@10':>9} {'top-1 cos':>9} {'top-10 cos':>10}")
    print(head)
    for r in rows:
        print(f"{r['items']:>10,} {r['ef']:>8} {r['build_s']:>8.1f} {r['index_mb']:>9.0f} "
              f"{r['rss_gb']:>7.2f} {r['exact'][0]:>7.2f} ms {r['exact'][1]:>7.2f} "
              f"{r['index'][0]:>7.2f} ms {r['index'][1]:>7.2f} "
              f"{r['exact'][0] / r['index'][0]:>7.1f}x {r['recall']:>9.4f} "
              f"{r['top1']:>9.3f} {r['top10']:>10.3f}")
    big = [r for r in rows if r["items"] >= 1_000_000 and r["ef"] == IndexParams().ef_search]
    for r in big:
        met = r["index"][0] <= 10.0 and r["recall"] >= 0.95
        print(f"bar at {r['items']:,} items (index p50 <= 10 ms, recall@10 >= 0.95): "
              f"{'met' if met else 'NOT met'} (p50 {r['index'][0]:.2f} ms, "
              f"recall@10 {r['recall']:.4f})")


def int_list(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


log = logging.getLogger("catalog_scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int_list, default=[10_000, 100_000, 1_000_000],
                        help="catalog sizes, comma-separated (default 10000,100000,1000000)")
    parser.add_argument("--queries", type=int, default=200, help="timed requests per size")
    parser.add_argument("--width", type=int, default=576,
                        help="vector width (576: the SmolLM2-135M HLLM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vectors", choices=["clustered", "gaussian"], default="clustered")
    parser.add_argument("--ef-search", type=int_list, default=[IndexParams().ef_search],
                        help="efSearch values to time on the same index (default: the shipped one)")
    args = parser.parse_args()
    if min(args.sizes) < K + HISTORY + 1 or args.queries < 1 or args.width < 1:
        parser.error(f"sizes must be > {K + HISTORY}, queries and width >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it picked
    threads = torch.get_num_threads()
    rows = []
    for n in args.sizes:
        torch.set_num_threads(threads)
        rows += run_size(n, args, args.ef_search)
    report(rows, args)


if __name__ == "__main__":
    main()
