"""The one dataset object: id maps and train/valid/test interaction matrices, saved without pickle.

On disk a dataset is a folder:
    dataset.json     counts, fingerprint, how it was made
    splits.npz       CSR arrays of each split (allow_pickle=False)
    users.parquet    raw user ids in index order
    items.parquet    raw item ids in index order
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.atomic import atomic_dir
from recsys.data.idmap import IdMap
from recsys.errors import DataError

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1


@dataclass
class Dataset:
    """Interactions as binary (n_users, n_items) CSR matrices, one per split.

    `valid` and `test` may be None. All splits share the id maps; a user may have no
    training interactions (they still count in evaluation).
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix | None
    test: sp.csr_matrix | None
    users: IdMap
    items: IdMap
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.users), len(self.items))
        for name in SPLITS:
            m = getattr(self, name)
            if m is None:
                continue
            # Copy: binarising in place would overwrite the caller's matrix (e.g. its weights).
            m = sp.csr_matrix(m, dtype=np.float32, copy=True)
            if m.shape != shape:
                raise DataError(f"{name} split has shape {m.shape}, expected {shape}")
            m.sum_duplicates()
            m.sort_indices()
            m.data[:] = 1.0
            setattr(self, name, m)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def split(self, name: str) -> sp.csr_matrix:
        m = getattr(self, name, None) if name in SPLITS else None
        if m is None:
            raise DataError(f"dataset has no {name!r} split (has: {', '.join(self.split_names)})")
        return m

    @property
    def split_names(self) -> list[str]:
        return [s for s in SPLITS if getattr(self, s) is not None]

    @property
    def fingerprint(self) -> str:
        """Hash of the split structure and id maps: equal fingerprints, same experiment."""
        h = hashlib.sha256()
        for name in SPLITS:
            m = getattr(self, name)
            h.update(name.encode())
            if m is not None:
                h.update(np.int64(m.shape).tobytes())
                h.update(m.indptr.astype(np.int64).tobytes())
                h.update(m.indices.astype(np.int64).tobytes())
        h.update(self.users.digest().encode())
        h.update(self.items.digest().encode())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the dataset folder atomically (a temporary folder renamed into place)."""
        arrays: dict[str, np.ndarray] = {"shape": np.array([self.n_users, self.n_items], np.int64)}
        for name in self.split_names:
            m = getattr(self, name)
            arrays[f"{name}_indptr"] = m.indptr.astype(np.int64)
            arrays[f"{name}_indices"] = m.indices.astype(np.int32)
        header = {
            "format_version": FORMAT_VERSION,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "splits": {s: int(getattr(self, s).nnz) for s in self.split_names},
            "fingerprint": self.fingerprint,
            "meta": self.meta,
        }
        with atomic_dir(path) as tmp:
            np.savez(tmp / "splits.npz", **arrays)
            self.users.save(tmp / "users.parquet")
            self.items.save(tmp / "items.parquet")
            (tmp / "dataset.json").write_text(json.dumps(header, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        path = Path(path)
        header_path = path / "dataset.json"
        if not header_path.is_file():
            raise DataError(
                f"{path}: not a dataset folder (no dataset.json); make one with 'recsys data prepare'"
            )
        try:
            header = json.loads(header_path.read_text())
            with np.load(path / "splits.npz", allow_pickle=False) as z:
                arrays = dict(z)
            users = IdMap.load(path / "users.parquet", "user")
            items = IdMap.load(path / "items.parquet", "item")
            shape = tuple(int(x) for x in arrays["shape"])
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: unreadable dataset folder ({reason})") from None
        mats = {}
        for name in SPLITS:
            if f"{name}_indptr" in arrays:
                indices = arrays[f"{name}_indices"]
                data = np.ones(len(indices), np.float32)
                mats[name] = sp.csr_matrix((data, indices, arrays[f"{name}_indptr"]), shape=shape)
            else:
                mats[name] = None
        ds = cls(mats["train"], mats["valid"], mats["test"], users, items, header.get("meta", {}))
        if ds.fingerprint != header.get("fingerprint"):
            raise DataError(f"{path}: dataset files do not match the fingerprint in dataset.json")
        return ds
