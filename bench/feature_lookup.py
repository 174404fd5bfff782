"""Feast online lookup latency: one user's 50-item history plus those items' embeddings.

    python bench/feature_lookup.py --data ../shared/data/ml-100k

Builds the feature repo (item embeddings from the cpu-default frozen Item LLM, through
the embedding cache), then times, per request, the two online reads serving does:
`user_history` for one user, then `item_embedding` for the items in that history.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import numpy as np

from hllm.features import add_items, build_features, item_llm_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    from feast import FeatureStore

    ids, vectors = item_llm_embeddings(args.data, args.preset)
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        built = build_features(args.data, run, embeddings=vectors, embedding_ids=ids)
        print(f"features build (write, apply, materialize): {time.perf_counter() - t0:.1f} s, "
              f"{built.counts}")
        store = FeatureStore(repo_path=str(built.repo))
        users = sorted({str(u) for u in range(1, built.counts["users"] + 1)})
        rng = random.Random(0)
        history_ms, items_ms, total_ms, sizes = [], [], [], []
        for i in range(args.requests + 10):  # the first 10 warm connections and caches up
            user = rng.choice(users)
            t0 = time.perf_counter()
            hist = store.get_online_features(features=["user_history:item_ids"],
                                             entity_rows=[{"user_id": user}]).to_dict()
            t1 = time.perf_counter()
            items = hist["item_ids"][0] or []
            emb = store.get_online_features(features=["item_embedding:embedding"],
                                            entity_rows=[{"item_id": it} for it in items]).to_dict()
            t2 = time.perf_counter()
            assert len(emb["embedding"]) == len(items)
            if i >= 10:
                history_ms.append(1000 * (t1 - t0))
                items_ms.append(1000 * (t2 - t1))
                total_ms.append(1000 * (t2 - t0))
                sizes.append(len(items))
        # Cold start: new items (ml-100k titles under new ids) embedded, pushed, then read.
        new = os.path.join(run, "new_items.csv")
        with open(new, "w") as f:
            f.write("item_id,title\n" + "".join(f"new-{i},Toy Story {i}\n" for i in range(20)))
        t0 = time.perf_counter()
        added = add_items(new, run, embed_preset=args.preset)
        got = store.get_online_features(features=["item_embedding:embedding"],
                                        entity_rows=[{"item_id": i} for i in added.item_ids]).to_dict()
        cold = time.perf_counter() - t0
        assert all(len(v) == added.embedding_dim for v in got["embedding"])

    def pct(xs: list[float]) -> str:
        return f"p50 {np.percentile(xs, 50):6.2f} ms   p99 {np.percentile(xs, 99):6.2f} ms"

    print(f"{args.requests} requests, history length median {statistics.median(sizes):.0f} "
          f"(max {max(sizes)}), SQLite online store:")
    print(f"  user_history           {pct(history_ms)}")
    print(f"  item_embedding (x len) {pct(items_ms)}")
    print(f"  both                   {pct(total_ms)}")
    print(f"add-items: {len(added.item_ids)} new items embedded, pushed and read back online "
          f"in {cold:.1f} s (Item LLM load included)")


if __name__ == "__main__":
    main()
