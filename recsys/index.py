"""FAISS inner-product index over final item embeddings, with seen items filtered out.

Exact `IndexFlatIP` by default; `ivf` and `hnsw` trade exactness for speed on large catalogues
(`recall_vs_exact` says how much). Seen items are removed by over-fetching: a query for a user
with s seen items asks for k + s results, so k unseen items always survive, however many the
user has seen.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp

from recsys.atomic import atomic_write
from recsys.errors import RunError

INDEX_KINDS = ("flat", "ivf", "hnsw")


def build_index(
    item_emb: np.ndarray,
    kind: str = "flat",
    nlist: int | None = None,
    hnsw_m: int = 32,
    nprobe: int = 16,
) -> faiss.Index:
    """An inner-product index holding `item_emb` (n_items, d) float32; row i has id i."""
    item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    n, d = item_emb.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(d), d, min(nlist, n), faiss.METRIC_INNER_PRODUCT
        )
        index.train(item_emb)
        index.nprobe = nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown index kind {kind!r} (choose from: {', '.join(INDEX_KINDS)})")
    index.add(item_emb)
    return index


def search(
    index: faiss.Index,
    user_vecs: np.ndarray,
    k: int,
    seen: sp.csr_matrix | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query, excluding each user's seen items.

    Args:
        user_vecs: (B, d) float32 query vectors.
        seen: CSR of seen items; `rows` gives each query's row in it (dense user indices).
    Returns:
        items (B, k) int64 and scores (B, k) float32; -1 / -inf pad a user with fewer than k
        unseen items.
    """
    user_vecs = np.ascontiguousarray(user_vecs, dtype=np.float32)
    if seen is not None and not seen.has_sorted_indices:
        seen = seen.sorted_indices()  # is_seen searches each row's indices
    n_items = index.ntotal
    k = min(k, n_items)
    n_seen = np.zeros(len(user_vecs), np.int64) if seen is None else np.diff(seen.indptr)[rows]
    out_items = np.full((len(user_vecs), k), -1, np.int64)
    out_scores = np.full((len(user_vecs), k), -np.inf, np.float32)
    # Group queries by over-fetch depth (powers of two), so one heavy user doesn't slow the rest.
    need = np.maximum(k + n_seen, 1)
    depth = np.minimum(2 ** np.ceil(np.log2(need)).astype(np.int64), n_items)
    for d in np.unique(depth):
        group = np.flatnonzero(depth == d)
        scores, items = index.search(user_vecs[group], int(d))
        keep = items >= 0
        if seen is not None:
            keep &= ~is_seen(seen, rows[group], items)
        # the first k kept results of each row, in FAISS's (descending score) order
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, 1)
        out_items[group] = np.where(kept, np.take_along_axis(items, order, 1), -1)
        out_scores[group] = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf)
    return out_items, out_scores


def is_seen(seen: sp.csr_matrix, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(B, d) bool: items[j, c] is in row rows[j] of `seen` (sorted indices); False for -1.

    One vectorised membership test for the whole batch: (row j, item) pairs as keys j·n + item,
    which the rows' own seen entries give in sorted order, searched with searchsorted.
    """
    starts, lengths = seen.indptr[rows], np.diff(seen.indptr)[rows]
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(items.shape, bool)
    first = np.cumsum(lengths) - lengths  # where each row's entries start in the gathered keys
    positions = np.repeat(starts - first, lengths) + np.arange(total)
    n = seen.shape[1]
    keys = np.repeat(np.arange(len(rows), dtype=np.int64) * n, lengths) + seen.indices[positions]
    queries = np.arange(len(rows), dtype=np.int64)[:, None] * n + np.maximum(items, 0)
    found = np.searchsorted(keys, queries)
    return (keys[np.minimum(found, total - 1)] == queries) & (items >= 0)


def recall_vs_exact(
    index: faiss.Index, item_emb: np.ndarray, queries: np.ndarray, k: int = 20
) -> float:
    """Fraction of the exact top-k that `index` returns (1.0 for the flat index)."""
    exact = faiss.IndexFlatIP(item_emb.shape[1])
    exact.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(truth, got)]))


def save_index(index: faiss.Index, path: str | Path) -> None:
    atomic_write(path, lambda p: faiss.write_index(index, str(p)))


def load_index(path: str | Path) -> faiss.Index:
    """An index file read by FAISS; callers check its digest first (FAISS trusts its input)."""
    if not Path(path).is_file():
        raise RunError(f"{path}: no such index file")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise RunError(f"{path}: unreadable index ({str(e).splitlines()[0][:160]})") from None
