"""Filters on interaction frames (`user_id`, `item_id`, optional `rating`, `timestamp`).

All are vectorised polars expressions; none loops over rows in Python.
"""

from __future__ import annotations

import polars as pl

from recsys.errors import DataError


def dedupe(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (user, item) pair, in order of each pair's first appearance.

    A repeated pair keeps its highest rating (the user's strongest opinion of the item) and
    its latest timestamp (when the pair last happened), taken independently of each other.

    Args:
        df: (n, 2-4) interactions; `rating` and `timestamp` are optional.

    Returns:
        (n_pairs, same columns) frame with unique (`user_id`, `item_id`).
    """
    extra = [pl.col(c).max() for c in ("rating", "timestamp") if c in df.columns]
    if not extra:
        return df.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    return df.group_by("user_id", "item_id", maintain_order=True).agg(extra)


def threshold(df: pl.DataFrame, min_rating: float) -> pl.DataFrame:
    """The interactions rated at least `min_rating`: explicit ratings turned into positives.

    Raises:
        DataError: when `df` has no `rating` column.
    """
    if "rating" not in df.columns:
        raise DataError(f"min_rating={min_rating} needs a rating column, and the log has none")
    return df.filter(pl.col("rating") >= min_rating)


def kcore(df: pl.DataFrame, k: int) -> pl.DataFrame:
    """The k-core: repeatedly drop users and items with fewer than `k` interactions.

    Dropping a user can push an item below k (and back), so one pass is not enough; the loop
    stops when a pass drops nothing. The result is the unique largest subset in which every
    user and item has at least k interactions (possibly empty). Count rows, so dedupe first.

    Args:
        df: (n, ...) interactions.
        k: the minimum degree; k <= 1 keeps everything.

    Returns:
        The surviving rows of `df`, in their original order.
    """
    if k <= 1:
        return df
    enough = (pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k)
    while True:
        kept = df.filter(enough)
        if kept.height == df.height:
            return kept
        df = kept
