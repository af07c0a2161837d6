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
        """Read a dataset folder, checking every array before use: a damaged or hand-edited
        folder is a one-line DataError naming the file, never a crash."""
        path = Path(path)
        header_path = path / "dataset.json"
        if not header_path.is_file():
            raise DataError(
                f"{path}: not a dataset folder (no dataset.json); make one with 'recsys data prepare'"
            )
        header = read_header(header_path)
        arrays = read_arrays(path / "splits.npz")
        users = read_ids(path / "users.parquet", "user")
        items = read_ids(path / "items.parquet", "item")
        shape = (header["n_users"], header["n_items"])
        if (len(users), len(items)) != shape:
            raise DataError(
                f"{path}: users.parquet/items.parquet hold {len(users)}/{len(items)} ids, "
                f"dataset.json says {shape[0]}/{shape[1]}"
            )
        if arrays.get("shape") is None or arrays["shape"].tolist() != list(shape):
            raise DataError(f"{path / 'splits.npz'}: 'shape' does not match dataset.json {shape}")
        mats = {}
        for name in SPLITS:
            if f"{name}_indptr" not in arrays:
                mats[name] = None
                continue
            indptr, indices = check_csr(path / "splits.npz", name, arrays, shape)
            if header["splits"].get(name) not in (None, len(indices)):
                raise DataError(
                    f"{path / 'splits.npz'}: {name} split holds {len(indices)} interactions, "
                    f"dataset.json says {header['splits'][name]}"
                )
            data = np.ones(len(indices), np.float32)
            mats[name] = sp.csr_matrix((data, indices, indptr), shape=shape)
        if mats["train"] is None:
            raise DataError(f"{path / 'splits.npz'}: has no train split")
        ds = cls(mats["train"], mats["valid"], mats["test"], users, items, header.get("meta", {}))
        if ds.fingerprint != header["fingerprint"]:
            raise DataError(f"{path}: dataset files do not match the fingerprint in dataset.json")
        return ds


def read_json_object(path: Path, need: dict[str, type], what: str, error=DataError) -> dict:
    """A JSON object from `path` holding `need`'s keys with their types, else `error` naming
    the file: the one reader of recsys's JSON artifacts (dataset header, run config, summary)."""
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise error(f"{path}: unreadable ({first_line(e)})") from None
    if not isinstance(found, dict) or any(not isinstance(found.get(k), t) for k, t in need.items()):
        needs = f" (needs {', '.join(need)})" if need else ""
        raise error(f"{path}: not a recsys {what}{needs}")
    return found


def read_header(path: Path) -> dict:
    need = {"n_users": int, "n_items": int, "fingerprint": str, "splits": dict}
    header = read_json_object(path, need, "dataset header")
    if min(header["n_users"], header["n_items"]) < 0:
        raise DataError(f"{path}: negative user or item count")
    if not isinstance(header.get("meta", {}), dict):
        raise DataError(f"{path}: 'meta' is not an object")
    return header


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except Exception as e:  # zip, npy header, pickle refusal: all mean a damaged file
        raise DataError(f"{path}: unreadable ({first_line(e)})") from None


def read_ids(path: Path, name: str) -> IdMap:
    try:
        return IdMap.load(path, name)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # polars' parquet errors, a missing 'id' column
        raise DataError(f"{path}: unreadable ({first_line(e)})") from None


def check_csr(path: Path, name: str, arrays: dict, shape: tuple[int, int]):
    """`name`'s indptr and indices, refused unless they form a valid CSR of `shape` (scipy
    trusts them, and a broken indptr crashes native code)."""
    indptr, indices = arrays[f"{name}_indptr"], arrays.get(f"{name}_indices")
    problem = None
    if indices is None:
        problem = "has no indices"
    elif (
        indptr.ndim != 1
        or indices.ndim != 1
        or indptr.dtype.kind not in "iu"
        or indices.dtype.kind not in "iu"
    ):
        problem = "arrays are not 1-d integers"
    elif len(indptr) != shape[0] + 1:
        problem = f"indptr has {len(indptr)} entries, expected {shape[0] + 1}"
    elif indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        problem = "indptr is not a non-decreasing run from 0 to the number of indices"
    elif len(indices) and (indices.min() < 0 or indices.max() >= shape[1]):
        problem = f"item indices outside [0, {shape[1]})"
    if problem:
        raise DataError(f"{path}: {name} split {problem}")
    return indptr.astype(np.int64), indices.astype(np.int32)


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
