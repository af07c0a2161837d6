"""Read interaction logs (CSV, TSV, Parquet, RecBole atomic files) and pre-split benchmark folders.

Every reader returns polars frames with the columns `user_id`, `item_id` (raw ids: Int64 when
every id is a plain integer, else String), and `rating` (Float64) / `timestamp` (Int64, or
Float64 when some are fractional) only when asked for. Every bad input raises one-line
`DataError` naming the file, and the line where one is to blame; polars' own errors never leak.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.errors import DataError

LOG_FORMATS = ("csv", "tsv", "parquet", "recbole")
FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "recbole",
}
SPLIT_NAMES = ("train", "valid", "test")


def read_log(
    path: str | Path,
    format: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    time_col: str | None = None,
) -> pl.DataFrame:
    """Read one interaction log, one row per interaction.

    Args:
        path: the log file.
        format: csv | tsv | parquet | recbole; None picks it from the extension
            (.csv, .tsv/.tab, .parquet/.pq, .inter).
        user_col: column holding user ids. For recbole, names are matched without the
            `:token`/`:float` type suffix of the header.
        item_col: column holding item ids.
        rating_col: column holding ratings; None leaves `rating` out.
        time_col: column holding numeric timestamps; None leaves `timestamp` out.

    Returns:
        (n_interactions, 2-4) frame: `user_id`, `item_id` (Int64 or String), then `rating`
        (Float64) and `timestamp` (Int64 or Float64) when asked for, in file order.

    Raises:
        DataError: missing file, unknown format, unreadable file, missing column, no rows,
            empty id, or a rating/timestamp that is not a number (naming its line).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a log file")
    fmt = log_format(path, format)
    raw = read_table(path, fmt)
    wanted = {"user_id": user_col, "item_id": item_col, "rating": rating_col, "timestamp": time_col}
    for col in wanted.values():
        if col is not None and col not in raw.columns:
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(raw.columns)})")
    if raw.height == 0:
        raise DataError(f"{path}: no interactions")
    # Text formats are read as strings so each value's line can be named; Parquet keeps its
    # dtypes and counts data rows instead of lines.
    first_line = 2 if fmt != "parquet" else 1
    where = "line" if fmt != "parquet" else "row"
    columns = []
    for name in ("user_id", "item_id"):
        columns.append(id_column(raw[wanted[name]], path, where, first_line).rename(name))
    if rating_col is not None:
        rating = number_column(raw[rating_col], "rating", path, where, first_line)
        columns.append(rating.cast(pl.Float64))
    if time_col is not None:
        columns.append(number_column(raw[time_col], "timestamp", path, where, first_line))
    return pl.DataFrame(columns)


def log_format(path: Path, format: str | None) -> str:
    """The log format named by `format`, else the one implied by `path`'s extension."""
    if format is not None:
        if format not in LOG_FORMATS:
            raise DataError(
                f"{path}: unknown format {format!r} (expected one of: {', '.join(LOG_FORMATS)})"
            )
        return format
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMAT_BY_SUFFIX)
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r} "
            f"(known: {known}); pass a format"
        )
    return fmt


def read_table(path: Path, fmt: str) -> pl.DataFrame:
    """The file as a frame: all String columns for text formats, file dtypes for Parquet."""
    try:
        if fmt == "parquet":
            return pl.read_parquet(path)
        separator = "," if fmt == "csv" else "\t"
        # Tab-separated logs (RecBole's included) are never quoted; a stray " is data.
        quote_char = '"' if fmt == "csv" else None
        table = pl.read_csv(path, separator=separator, quote_char=quote_char, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise DataError(f"{path}: no interactions (the file is empty)") from None
    except (pl.exceptions.PolarsError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable {fmt} file ({reason})") from None
    if fmt == "recbole":
        # RecBole's header is typed: `user_id:token\titem_id:token\trating:float ...`.
        table = table.rename({c: c.split(":", 1)[0] for c in table.columns})
    return table


def id_column(values: pl.Series, path: Path, where: str, first_line: int) -> pl.Series:
    """Raw ids as Int64 when every one is a plain integer (no '007'), else as String."""
    if values.null_count():
        line = first_line + int(values.is_null().arg_true()[0])
        raise DataError(f"{path}: {where} {line}: empty {values.name}")
    if values.dtype.is_nested() or values.dtype == pl.Object:
        raise DataError(f"{path}: column {values.name!r} holds {values.dtype} values, not ids")
    if values.dtype.is_integer():
        as_int = values.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0:
            return as_int
        # beyond int64 (uint64 ids): kept exact as text
    text = values.cast(pl.String)
    if text.head(1).cast(pl.Int64, strict=False).null_count():
        return text  # "u0042": one id that is not an integer settles it, without parsing 16M
    as_int = text.cast(pl.Int64, strict=False)
    # Only ids that print back identically are integers: '007' and '7' must stay distinct.
    if as_int.null_count() == 0 and (as_int.cast(pl.String) == text).all():
        return as_int
    return text


def number_column(
    values: pl.Series, field: str, path: Path, where: str, first_line: int
) -> pl.Series:
    """Numeric values named `field`: Int64 when all are integers, else Float64.

    Raises:
        DataError: naming the first line whose value is empty or not a number.
    """
    if values.dtype.is_numeric():
        numbers = values
    elif values.dtype in (pl.Date, pl.Datetime) or isinstance(values.dtype, pl.Datetime):
        # Parquet logs often store datetimes; splits only need their order, so epoch seconds.
        return values.dt.epoch("s").rename(field)
    elif values.dtype.is_temporal() or values.dtype.is_nested():
        raise DataError(
            f"{path}: column {values.name!r} holds {values.dtype} values; it needs numbers, dates or "
            "datetimes"
        )
    else:
        text = values.cast(pl.String).str.strip_chars()
        numbers = text.cast(pl.Int64, strict=False)
        if numbers.null_count():
            numbers = text.cast(pl.Float64, strict=False)
    bad = numbers.is_null() | (numbers.is_nan() if numbers.dtype.is_float() else False)
    if bad.any():
        row = int(bad.arg_true()[0])
        value = "" if values[row] is None else values[row]
        raise DataError(f"{path}: {where} {first_line + row}: {field} {value!r} is not a number")
    return numbers.rename(field)


def read_split_csv(
    folder: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    time_col: str | None = None,
) -> dict[str, pl.DataFrame]:
    """Read a pre-split folder: `train.csv` (required), `valid.csv` and `test.csv` (optional).

    Args:
        folder: the folder holding the CSV files, each with a header.
        user_col, item_col, rating_col, time_col: as in `read_log`.

    Returns:
        {split name: frame as `read_log` returns it}, for each file present. Ids share one
        dtype across splits: String if any file has a non-integer id.
    """
    folder = existing_folder(folder)
    if not (folder / "train.csv").is_file():
        raise DataError(
            f"{folder}: no train.csv (a split-csv folder holds train.csv, "
            "and optionally valid.csv and test.csv)"
        )
    splits = {
        name: read_log(folder / f"{name}.csv", "csv", user_col, item_col, rating_col, time_col)
        for name in SPLIT_NAMES
        if (folder / f"{name}.csv").is_file()
    }
    return with_shared_id_dtypes(splits)


def read_lightgcn(folder: str | Path) -> dict[str, pl.DataFrame]:
    """Read a LightGCN-style folder: `train.txt` (required) and `test.txt` (optional).

    Each line is `user item item ...`, space separated 0-based integer ids; a line may name a
    user with no items. Parsed with polars string kernels, not a Python loop per line.

    Args:
        folder: the folder holding the text files.

    Returns:
        {"train": frame, "test": frame (if test.txt exists), "users": frame}. The split frames
        hold one row per interaction (`user_id`, `item_id`, Int64). "users" holds every
        distinct user id that starts a line in either file (`user_id`, Int64), so users listed
        without items are not lost: they are users with no interactions in that split.
    """
    folder = existing_folder(folder)
    if not (folder / "train.txt").is_file():
        raise DataError(f"{folder}: no train.txt (a lightgcn folder holds train.txt and test.txt)")
    splits: dict[str, pl.DataFrame] = {}
    users = []
    for name in ("train", "test"):
        path = folder / f"{name}.txt"
        if path.is_file():
            splits[name], listed = lightgcn_interactions(path)
            users.append(listed)
    splits["users"] = pl.concat(users).unique().sort().to_frame()
    return splits


def lightgcn_interactions(path: Path) -> tuple[pl.DataFrame, pl.Series]:
    """Interactions (`user_id`, `item_id` Int64) of one LightGCN file and its listed users."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable lightgcn file ({e})") from None
    lines = pl.DataFrame(
        {"tokens": pl.Series(text.splitlines(), dtype=pl.String).str.extract_all(r"\S+")}
    )
    lines = lines.with_row_index("line", offset=1).filter(pl.col("tokens").list.len() > 0)
    if lines.height == 0:
        raise DataError(f"{path}: no interactions")
    tokens = lines.explode("tokens").with_columns(
        first=pl.int_range(pl.len()).over("line") == 0,
        id=pl.col("tokens").cast(pl.Int64, strict=False),
    )
    bad = tokens.filter(pl.col("id").is_null() | (pl.col("id") < 0))
    if bad.height:
        line, token = bad.row(0)[:2]
        raise DataError(f"{path}: line {line}: {token!r} is not a 0-based integer id")
    users = tokens.filter("first").select("line", user_id="id")
    interactions = (
        tokens.filter(~pl.col("first"))
        .join(users, on="line", how="left", maintain_order="left")
        .select("user_id", item_id="id")
    )
    if interactions.height == 0:
        raise DataError(f"{path}: no interactions")
    return interactions, users["user_id"]


def existing_folder(folder: str | Path) -> Path:
    """`folder` as a Path, or DataError if it is not an existing folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: is a file, expected a folder of split files")
    return folder


def with_shared_id_dtypes(splits: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Cast ids to String in every split if any split has String ids, so they can be joined."""
    for col in ("user_id", "item_id"):
        if len({df[col].dtype for df in splits.values()}) > 1:
            splits = {k: df.with_columns(pl.col(col).cast(pl.String)) for k, df in splits.items()}
    return splits
