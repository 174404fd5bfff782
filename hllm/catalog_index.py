"""Top-k over a large item catalog: exact cosine up to `exact_max_items`, an HNSW index above.

Scores in this project are cosines: the pyfunc (hllm.pyfunc_model) normalises the user
vector and every item vector and takes `user_vec @ items.T` over the whole table, then
top-k. That reads every item vector once per request: 6.7 MB for ml-100k's 1,682 items,
but 2.3 GB for 10^6 items of the SmolLM2 HLLM's width (576, fp32). Above `exact_max_items` items (default EXACT_MAX_ITEMS, set by
`hllm register --exact-max-items`) registration builds this index over the L2-normalised
item vectors, so inner product is cosine and the scores mean what exact scores mean, and
ships it as the `catalog.faiss` artifact of the pyfunc version; the pyfunc searches it
when the artifact is there.

Why HNSW (IndexHNSWFlat, M=32, efConstruction=40, efSearch=256), measured with
bench/catalog_scale.py at 10^6 items of width 576 (clustered low-rank-plus-noise vectors,
queries near a target item, a 50-item history excluded; its docstring says why), recall@10
against exact:
  * HNSW M=32: efSearch 64 -> 0.877, 128 -> 0.949, 192 -> 0.965, 256 -> 0.978. The bar
    is 0.95; 256 clears it with room for other catalogs, and its per-request time is
    still a small part of the 10 ms budget (README, "The model server", for the figures).
    At 10^5 items efSearch 64 already gives 0.989: larger catalogs need the larger value.
  * IVF-Flat on the same vectors (nlist=4096, nprobe up to 64, so 1.6% of the catalog
    scanned per query) stayed at 0.85 even without a history to exclude: an item's neighbours straddle many
    cells in this geometry, so recall grows slowly with nprobe while the scan grows fast.
  * M=16 needs a larger efSearch for the same recall (0.970 vs 0.991 at efSearch 64 on
    10^5 items); the M=32 graph is 256 MB at 10^6 items, a ninth of the vectors it
    indexes, so memory does not argue for fewer links.
The cost is the build: HNSW inserts one vector at a time, on every core, once per
registration (IVF trains faster but could not reach the recall).

Exclusion (the user's history and item 0, the padding row) is an over-fetch: search
k + len(history) + 1 neighbours, drop excluded ids, keep the first k. The index holds
every table row, padding included, so its ids are table rows and no id map is stored.

Saved with faiss.write_index (FAISS's own binary format, no pickle) and checked on load
against the item table it serves: its width, its row count and its metric.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hllm.errors import DataError, first_line
from hllm.progress import Progress

EXACT_MAX_ITEMS = 100_000  # above this many items, registration builds the index
INDEX_FILE = "catalog.faiss"  # the pyfunc artifact's name
PADDING = 0  # table row 0 is padding: never recommended


@dataclass(frozen=True)
class IndexParams:
    """HNSW settings; see the module docstring for why these values."""

    m: int = 32                # links per node: recall per visited node vs graph memory
    ef_construction: int = 40  # FAISS's default; build time grows linearly with it
    ef_search: int = 256       # candidates kept while searching: recall vs latency


def exact_scoring(num_items: int, exact_max_items: int = EXACT_MAX_ITEMS) -> bool:
    """True when the catalog is small enough to score every item per request."""
    return num_items <= exact_max_items


def _faiss():
    import faiss

    return faiss


def unit_rows(vectors) -> np.ndarray:
    """(N, D) float32 copy with each row L2-normalised (a zero row stays zero)."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise DataError(f"item vectors must be a (rows, width) matrix, got shape {x.shape}")
    _faiss().normalize_L2(x)
    return x


def build_index(vectors, params: IndexParams = IndexParams(), *, progress: bool | None = None,
                chunk: int = 16_384):
    """An inner-product HNSW index over the normalised rows of `vectors` (row i = item i)."""
    faiss = _faiss()
    x = unit_rows(vectors)
    index = faiss.IndexHNSWFlat(x.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.hnsw.efSearch = params.ef_search  # written with the index: the file is the setting
    with Progress(len(x), "catalog index", unit="item", bar=progress) as bar:
        for start in range(0, len(x), chunk):
            index.add(x[start: start + chunk])
            bar.update(min(chunk, len(x) - start))
    return index


def save_index(index, path: Path) -> Path:
    """Write `index` to `path` with FAISS's own serialiser."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _faiss().write_index(index, str(path))
    return path


def load_index(path: Path, width: int, rows: int):
    """Read an index and check it serves this table: `rows` vectors of `width`, inner product."""
    faiss = _faiss()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such catalog index file")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: not a FAISS index ({first_line(exc)}); register the model "
                        "again to rebuild it") from None
    problems = []
    if index.d != width:
        problems.append(f"it indexes {index.d}-d vectors but the item table is {width}-d")
    if index.ntotal != rows:
        problems.append(f"it holds {index.ntotal:,} vectors but the item table has {rows:,} rows")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problems.append("its metric is not inner product")
    if problems:
        raise DataError(f"{path}: built for another item table: {'; '.join(problems)}. "
                        "Register the model again to rebuild it")
    return index


def search(index, queries, ks: Sequence[int], exclude: Sequence[Collection[int]]
           ) -> list[tuple[list[int], list[float]]]:
    """Top-k table rows and cosines per query, history and padding left out.

    queries: (B, D) user vectors, L2-normalised by the caller; ks[b] and exclude[b] are
    row b's k and the table rows it must not get back. Over-fetches k + |exclude| + 1 so
    that dropping them still leaves k; an approximate search can return fewer.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise DataError(f"queries of shape {tuple(q.shape)} do not fit a {index.d}-d index")
    if len(ks) != len(q) or len(exclude) != len(q):
        raise ValueError(f"{len(q)} queries but {len(ks)} k values and {len(exclude)} exclusions")
    skip = [set(e) | {PADDING} for e in exclude]
    fetch = min(max((k + len(s) for k, s in zip(ks, skip)), default=0), index.ntotal)
    if fetch <= 0:
        return [([], []) for _ in ks]
    scores, ids = index.search(q, fetch)
    out = []
    for row_ids, row_scores, k, s in zip(ids.tolist(), scores.tolist(), ks, skip):
        kept = [(i, v) for i, v in zip(row_ids, row_scores) if i >= 0 and i not in s][:max(k, 0)]
        out.append(([i for i, _ in kept], [v for _, v in kept]))
    return out


def write_catalog_index(vectors, out: Path, exact_max_items: int = EXACT_MAX_ITEMS,
                        params: IndexParams = IndexParams()) -> Path | None:
    """Build and save the index when the catalog (rows minus padding) exceeds the threshold."""
    if exact_max_items < 0:
        raise ValueError(f"exact_max_items must be >= 0, got {exact_max_items}")
    if exact_scoring(len(vectors) - 1, exact_max_items):
        return None
    return save_index(build_index(vectors, params), Path(out) / INDEX_FILE)
