"""Raw user/item ids <-> dense indices 0..n-1. Raw ids live only at the edges of the system."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import DataError


class IdMap:
    """A vocabulary of raw ids (strings or integers); position = dense index.

    Args:
        ids: the distinct raw ids, in index order.
        name: what they are ("user" or "item"), used in error messages.
    """

    def __init__(self, ids: pl.Series, name: str):
        self.ids = ids.rename("id")
        self.name = name
        if self.ids.n_unique() != len(self.ids):
            raise DataError(f"{name} ids are not unique")
        self._lookup = pl.DataFrame({"id": self.ids, "idx": np.arange(len(ids), dtype=np.int64)})

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self.digest() == other.digest()

    @property
    def is_integer(self) -> bool:
        return self.ids.dtype.is_integer()

    def digest(self) -> str:
        """Content hash: two maps with equal digests map every id the same way."""
        return hashlib.sha256(
            self.ids.cast(pl.String).str.join("\x1f").item().encode()
        ).hexdigest()[:16]

    def index(self, raw_ids: list | np.ndarray | pl.Series) -> np.ndarray:
        """Dense indices (int64) of `raw_ids`; an id never seen raises DataError naming it."""
        query = pl.Series("id", raw_ids)
        if query.dtype != self.ids.dtype:
            try:
                query = query.cast(self.ids.dtype)
            except pl.exceptions.PolarsError:
                query = query.cast(pl.String)
        if query.dtype != self.ids.dtype:
            raise DataError(f"unknown {self.name} id {query[0]!r}")
        found = pl.DataFrame({"id": query}).join(
            self._lookup, on="id", how="left", maintain_order="left"
        )
        missing = found.filter(pl.col("idx").is_null())
        if len(missing):
            shown = ", ".join(repr(v) for v in missing["id"].head(3).to_list())
            raise DataError(
                f"unknown {self.name} id(s): {shown}" + (" ..." if len(missing) > 3 else "")
            )
        return found["idx"].to_numpy()

    def raw(self, idx: np.ndarray) -> pl.Series:
        """Raw ids at dense indices `idx`."""
        return self.ids.gather(np.asarray(idx, dtype=np.int64).ravel())

    def save(self, path: Path) -> None:
        pl.DataFrame({"id": self.ids}).write_parquet(path)

    @classmethod
    def load(cls, path: Path, name: str) -> IdMap:
        return cls(pl.read_parquet(path)["id"], name)


def positions(vocab: pl.Series, ids: pl.Series) -> pl.Series:
    """(n,) UInt32: the position of each of `ids` in `vocab`, which is sorted and holds them all.

    The dense-index form of `IdMap.index` for whole columns: strings go through an `Enum`
    over `vocab` (one hash lookup each; a join was 2x slower on 16M string ids), integers
    through a binary search.
    """
    if vocab.dtype == pl.String:
        return ids.cast(pl.Enum(vocab)).to_physical().rename(ids.name)
    found = np.searchsorted(vocab.to_numpy(), ids.to_numpy())
    return pl.Series(ids.name, found.astype(np.uint32))
