"""From a raw log or a pre-split folder to a `Dataset`: read, filter, map ids, split.

Pipeline for a log (csv, tsv, parquet, recbole):
    read -> ids to positions -> keep rating >= min_rating -> dedupe -> k-core -> id maps
    -> split -> carve valid
Pipeline for a pre-split folder (split-csv, lightgcn):
    read each file -> keep rating >= min_rating (split-csv only) -> dedupe each file
    -> id maps over all files -> carve valid from train if the folder has none and valid > 0

Raw ids are replaced early by their positions in the sorted distinct ids (UInt32). Positions
sort as the raw ids do, so dedupe, k-core and every split pick the same rows as they would on
raw ids, but on integer keys: on a 16M-row log with string ids this halved `data prepare`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import filters, splits
from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap, positions
from recsys.data.io import LOG_FORMATS, log_format, read_lightgcn, read_log, read_split_csv
from recsys.errors import DataError

PRESPLIT_FORMATS = ("split-csv", "lightgcn")
FORMATS = LOG_FORMATS + PRESPLIT_FORMATS
QUANTILES = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "p99": 0.99, "max": 1.0}


def prepare_dataset(
    source: str | Path,
    format: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    time_col: str | None = None,
    min_rating: float | None = None,
    kcore: int = 0,
    split: str | None = None,
    valid: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Build a `Dataset` from an interaction log or a pre-split benchmark folder.

    Args:
        source: a log file, or a folder for split-csv (train.csv, valid.csv?, test.csv?) and
            lightgcn (train.txt, test.txt).
        format: csv | tsv | parquet | recbole | split-csv | lightgcn. None picks it from the
            file's extension, or, for a folder, from whether it holds train.csv or train.txt.
        user_col, item_col, rating_col, time_col: column names, as in `read_log`.
        min_rating: keep only interactions rated at least this (needs `rating_col`).
        kcore: keep the k-core: users and items with at least `kcore` interactions (0: all).
            Logs only; a pre-split folder is used exactly as published.
        split: how to hold out the test split:
            "random:F"  per user, a random fraction F to train (at least one), rest to test;
            "last:N"    per user, the latest N interactions to test (needs time_col);
            "time:F"    a global cut at the F quantile of time, the later part to test;
            "given"     the folder's own files. None means "given" for pre-split formats and
                        "random:0.8" for logs; pre-split formats accept only "given".
        valid: the fraction of each user's training interactions carved out for validation,
            the same way the test split was made: "random" -> random per user; "last:N" -> per
            user the latest max(1, round(valid * n)) of n, always leaving one in train;
            "time" -> a global cut at the (1 - valid) quantile of training time. A folder
            without a validation file (lightgcn, or split-csv without valid.csv) gets a random
            per-user carve. 0 means no validation split; a split-csv valid.csv ignores it.
        seed: seeds the one generator behind every random split.

    Returns:
        The dataset: id maps sorted by raw id (integer ids stay integers) and a binary CSR
        matrix per split; `meta` records the source, its format and every option.

    Raises:
        DataError: a bad file, folder, column, value or option, or nothing left to train on.
    """
    source = Path(source)
    fmt = source_format(source, format)
    split = resolve_split(split, fmt, time_col)
    check_options(min_rating, rating_col, kcore, valid, fmt)
    rng = np.random.default_rng(seed)
    if fmt in PRESPLIT_FORMATS:
        frames, listed_users = presplit_frames(
            source, fmt, user_col, item_col, rating_col, time_col, min_rating
        )
        frames, user_vocab, item_vocab = encoded(frames, listed_users)
        if "valid" not in frames and valid > 0:
            frames["train"], frames["valid"] = splits.random_split(frames["train"], 1 - valid, rng)
    else:
        log = read_log(source, fmt, user_col, item_col, rating_col, time_col)
        frames, user_vocab, item_vocab = encoded({"log": log})
        log = filtered_log(frames["log"], source, min_rating, kcore)
        log, user_vocab = compacted(log, "user_id", user_vocab)
        log, item_vocab = compacted(log, "item_id", item_vocab)
        frames = split_frames(log, split, valid, rng)
    users, items = IdMap(user_vocab, "user"), IdMap(item_vocab, "item")
    shape = (len(users), len(items))
    mats = {name: interaction_matrix(df, shape) for name, df in frames.items()}
    meta = {
        "source": str(source.resolve()),
        "format": fmt,
        "user_col": user_col,
        "item_col": item_col,
        "rating_col": rating_col,
        "time_col": time_col,
        "min_rating": min_rating,
        "kcore": kcore,
        "split": split,
        "valid": valid,
        "seed": seed,
    }
    return Dataset(mats["train"], mats.get("valid"), mats.get("test"), users, items, meta)


def source_format(source: Path, format: str | None) -> str:
    """The format named, else the one a folder's files or a file's extension implies."""
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if format is not None and format not in FORMATS:
        raise DataError(
            f"{source}: unknown format {format!r} (expected one of: {', '.join(FORMATS)})"
        )
    if format in PRESPLIT_FORMATS and not source.is_dir():
        raise DataError(f"{source}: format {format!r} needs a folder, got a file")
    if format is None and source.is_dir():
        if (source / "train.csv").is_file():
            return "split-csv"
        if (source / "train.txt").is_file():
            return "lightgcn"
        raise DataError(f"{source}: a folder without train.csv (split-csv) or train.txt (lightgcn)")
    return format if format is not None else log_format(source, None)


def resolve_split(split: str | None, fmt: str, time_col: str | None) -> str:
    """The split spec to use, checked: "random:F", "last:N", "time:F" or "given"."""
    if split is None:
        return "given" if fmt in PRESPLIT_FORMATS else "random:0.8"
    kind, _, value = split.partition(":")
    if fmt in PRESPLIT_FORMATS and split != "given":
        raise DataError(f"split {split!r}: a {fmt} folder is already split; use split 'given'")
    if split == "given" and fmt not in PRESPLIT_FORMATS:
        raise DataError("split 'given' needs a pre-split folder (format split-csv or lightgcn)")
    if kind in ("last", "time") and time_col is None:
        raise DataError(f"split {split!r} orders by time; pass time_col")
    if split != "given" and split_value(kind, value) is None:
        raise DataError(
            f"split {split!r}: expected random:F or time:F with 0 < F <= 1, last:N with N >= 1, "
            "or given"
        )
    return split


def split_value(kind: str, value: str) -> float | int | None:
    """The number in a split spec ("0.8" of "random:0.8"), or None if it is not valid."""
    try:
        if kind == "last":
            n = int(value)
            return n if n >= 1 else None
        if kind in ("random", "time"):
            frac = float(value)
            return frac if 0 < frac <= 1 else None
    except ValueError:
        return None
    return None


def check_options(
    min_rating: float | None, rating_col: str | None, kcore: int, valid: float, fmt: str
) -> None:
    """DataError for options that cannot apply to this source."""
    if min_rating is not None and rating_col is None:
        raise DataError(f"min_rating={min_rating} needs ratings; pass rating_col")
    if min_rating is not None and fmt == "lightgcn":
        raise DataError(f"min_rating={min_rating}: lightgcn files have no ratings")
    if kcore < 0:
        raise DataError(f"kcore must be >= 0, got {kcore}")
    if kcore > 1 and fmt in PRESPLIT_FORMATS:
        raise DataError(f"kcore={kcore}: a {fmt} folder is used as published; k-core needs a log")
    if not 0 <= valid < 1:
        raise DataError(f"valid must be in [0, 1), got {valid}")


def presplit_frames(
    source: Path,
    fmt: str,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    time_col: str | None,
    min_rating: float | None,
) -> tuple[dict[str, pl.DataFrame], pl.Series | None]:
    """Each file's deduplicated interactions, and (lightgcn) every user id the files list."""
    if fmt == "lightgcn":
        frames = read_lightgcn(source)
        listed_users = frames.pop("users")["user_id"]
    else:
        frames = read_split_csv(source, user_col, item_col, rating_col, time_col)
        listed_users = None
    if min_rating is not None:
        frames = {name: filters.threshold(df, min_rating) for name, df in frames.items()}
        if frames["train"].height == 0:
            raise DataError(
                f"{source}: no training interactions left after min_rating={min_rating}"
            )
    return {name: filters.dedupe(df) for name, df in frames.items()}, listed_users


def filtered_log(
    log: pl.DataFrame, source: Path, min_rating: float | None, kcore: int
) -> pl.DataFrame:
    """The log thresholded at `min_rating`, deduplicated and cut to its `kcore`-core."""
    if min_rating is not None:
        log = filters.threshold(log, min_rating)
    log = filters.kcore(filters.dedupe(log, by_pair=True), kcore)
    if log.height == 0:
        applied = [f"min_rating={min_rating}"] * (min_rating is not None) + [f"kcore={kcore}"]
        raise DataError(f"{source}: no interactions left after {' and '.join(applied)}")
    return log


def split_frames(
    log: pl.DataFrame, split: str, valid: float, rng: np.random.Generator
) -> dict[str, pl.DataFrame]:
    """{"train", "test", and "valid" if valid > 0}: the log split by `split`, then train by valid."""
    kind, _, value = split.partition(":")
    frames: dict[str, pl.DataFrame] = {}
    if kind == "random":
        train, frames["test"] = splits.random_split(log, float(value), rng)
        if valid > 0:
            train, frames["valid"] = splits.random_split(train, 1 - valid, rng)
    elif kind == "last":
        train, frames["test"] = splits.last_split(log, int(value))
        if valid > 0:
            train, frames["valid"] = splits.last_fraction_split(train, valid)
    else:
        train, frames["test"] = splits.time_split(log, float(value))
        if valid > 0:
            train, frames["valid"] = splits.time_split(train, 1 - valid)
    frames["train"] = train
    return frames


def encoded(
    frames: dict[str, pl.DataFrame], listed_users: pl.Series | None = None
) -> tuple[dict[str, pl.DataFrame], pl.Series, pl.Series]:
    """The frames with raw ids replaced by positions, and the sorted distinct ids themselves.

    Args:
        frames: {name: frame with raw `user_id`, `item_id`}.
        listed_users: more user ids to keep in the vocabulary (users without interactions).

    Returns:
        (frames with `user_id`, `item_id` UInt32 positions into the vocabularies, user
        vocabulary, item vocabulary); each vocabulary sorted, String if any source is String.
    """
    vocabs = {
        "user_id": sorted_ids([df["user_id"] for df in frames.values()] + [listed_users]),
        "item_id": sorted_ids([df["item_id"] for df in frames.values()]),
    }
    frames = {
        name: df.with_columns(
            positions(vocab, df[col].cast(vocab.dtype)) for col, vocab in vocabs.items()
        )
        for name, df in frames.items()
    }
    return frames, vocabs["user_id"], vocabs["item_id"]


def compacted(log: pl.DataFrame, col: str, vocab: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """`log` with positions in `col` renumbered over the ids it still uses, and those ids.

    Filtering drops ids; the renumbering keeps their order, so positions still sort as raw ids.
    """
    codes = log[col].to_numpy()
    used = np.zeros(len(vocab), bool)
    used[codes] = True
    renumbered = (np.cumsum(used, dtype=np.int64) - 1).astype(np.uint32)[codes]
    return log.with_columns(pl.Series(col, renumbered)), vocab.filter(pl.Series(used))


def sorted_ids(columns: list[pl.Series | None]) -> pl.Series:
    """The distinct raw ids across `columns`, sorted; String if any column is String."""
    present = [c for c in columns if c is not None]
    if len({c.dtype for c in present}) > 1:
        present = [c.cast(pl.String) for c in present]
    return pl.concat(present).unique().sort()


def interaction_matrix(df: pl.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    """`shape` float32 CSR with a 1 at each (`user_id`, `item_id`) position pair of `df`."""
    user_idx = df["user_id"].to_numpy()
    item_idx = df["item_id"].to_numpy()
    ones = np.ones(len(user_idx), np.float32)
    return sp.csr_matrix((ones, (user_idx, item_idx)), shape=shape)


def describe(ds: Dataset) -> dict:
    """A JSON-ready summary of a dataset: sizes, sparsity and the spread of degrees in train.

    Returns:
        {"users", "items": int, "interactions": {split: int}, "train_density": float,
        "users_without_train", "items_without_train": int, "user_degree",
        "item_popularity": {"min", "p25", "p50", "p75", "p90", "p99", "max": float}}.
    """
    user_degree = np.diff(ds.train.indptr)
    item_popularity = np.bincount(ds.train.indices, minlength=ds.n_items)
    return {
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": {name: int(ds.split(name).nnz) for name in ds.split_names},
        "train_density": float(ds.train.nnz / max(1, ds.n_users * ds.n_items)),
        "users_without_train": int((user_degree == 0).sum()),
        "items_without_train": int((item_popularity == 0).sum()),
        "user_degree": quantiles(user_degree),
        "item_popularity": quantiles(item_popularity),
    }


def quantiles(values: np.ndarray) -> dict[str, float]:
    """min, 25/50/75/90/99th percentiles (linear interpolation) and max, as plain floats."""
    if len(values) == 0:
        return {name: 0.0 for name in QUANTILES}
    points = np.quantile(values, list(QUANTILES.values()))
    return {name: float(v) for name, v in zip(QUANTILES, points, strict=True)}
