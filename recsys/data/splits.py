"""Named train/held-out splits of an interaction frame, each returning (train_df, held_df).

Each split sorts its input first, so the result depends only on the rows and the seed, never
on the order polars' threads happened to produce them in.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.errors import DataError


def random_split(
    df: pl.DataFrame, train_frac: float, rng: np.random.Generator
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, a random `train_frac` of their interactions for training, the rest held out.

    A user with n interactions keeps floor(train_frac * n + 0.5) of them in train (half rounds
    up), and always at least one.

    Args:
        df: (n, ...) interactions with `user_id`, `item_id`.
        train_frac: in (0, 1].
        rng: the caller's generator; the same seed gives the same split.

    Returns:
        (train_df, held_df), both sorted by user then item.
    """
    check_fraction("train_frac", train_frac)
    df = df.sort("user_id", "item_id", maintain_order=True)
    # One random key per row, drawn in sorted order; a user's train rows are their smallest keys.
    keyed = df.with_columns(_key=pl.Series(rng.random(df.height)))
    shuffled_pos = pl.col("_key").rank("ordinal").over("user_id")
    in_train = keyed.select(shuffled_pos <= per_user_count(train_frac)).to_series()
    return df.filter(in_train), df.filter(~in_train)


def last_split(df: pl.DataFrame, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the latest `n` interactions held out (leave-n-out).

    Users with n or fewer interactions keep them all in train. Equal timestamps are ordered by
    item id, so "latest" is well defined.

    Args:
        df: (m, ...) interactions with `user_id`, `item_id`, `timestamp`.
        n: how many to hold out per user, >= 1.

    Returns:
        (train_df, held_df), both sorted by user, then time, then item.
    """
    if n < 1:
        raise DataError(f"last split needs n >= 1, got {n}")
    return split_latest_per_user(df, pl.lit(n))


def last_fraction_split(df: pl.DataFrame, held_frac: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the latest max(1, round(held_frac * n)) of n interactions held out.

    Users with a single interaction keep it in train, and every user keeps at least one.
    This carves validation out of a `last:N` training set.
    """
    check_fraction("held_frac", held_frac)
    n_held = pl.max_horizontal(1, (held_frac * pl.len() + 0.5).floor().cast(pl.Int64))
    n_held = pl.min_horizontal(n_held, pl.len() - 1).over("user_id")
    return split_latest_per_user(df, n_held)


def split_latest_per_user(df: pl.DataFrame, n_held: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split off each user's latest `n_held` rows; users with <= n_held rows keep all."""
    require_timestamp(df)
    df = df.sort("user_id", "timestamp", "item_id", maintain_order=True)
    from_end = pl.len().over("user_id") - pl.int_range(pl.len()).over("user_id")
    held = df.select((from_end <= n_held) & (pl.len().over("user_id") > n_held)).to_series()
    return df.filter(~held), df.filter(held)


def time_split(df: pl.DataFrame, frac: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One global cut in time: train is what happened before the `frac` quantile of timestamps.

    With n interactions sorted by time, the cut is the timestamp of the one at position
    m = max(1, floor(frac * n + 0.5)); train is everything strictly earlier, so interactions
    tied with the cut are all held out and nothing in train happens at or after a held one.

    Args:
        df: (n, ...) interactions with `timestamp`.
        frac: in (0, 1]; 1 keeps everything in train.

    Returns:
        (train_df, held_df), both sorted by time, then user, then item.
    """
    check_fraction("frac", frac)
    require_timestamp(df)
    df = df.sort("timestamp", "user_id", "item_id", maintain_order=True)
    m = max(1, int(np.floor(frac * df.height + 0.5)))
    if m >= df.height:
        return df, df.clear()
    in_train = df["timestamp"] < df["timestamp"][m]
    return df.filter(in_train), df.filter(~in_train)


def per_user_count(frac: float) -> pl.Expr:
    """max(1, floor(frac * n_user + 0.5)), evaluated per user."""
    return pl.max_horizontal(1, (frac * pl.len() + 0.5).floor()).over("user_id")


def check_fraction(name: str, frac: float) -> None:
    """DataError unless 0 < frac <= 1."""
    if not 0 < frac <= 1:
        raise DataError(f"{name} must be in (0, 1], got {frac}")


def require_timestamp(df: pl.DataFrame) -> None:
    """DataError unless `df` has a `timestamp` column."""
    if "timestamp" not in df.columns:
        raise DataError("a time-based split needs a timestamp column; pass time_col")
