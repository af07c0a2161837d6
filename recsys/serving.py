"""The in-memory model: a finished run held in memory, answering implicit-style queries.

    >>> model = Model.load("runs/lgcn")
    >>> ids, scores = model.recommend(["u0001", "u0002"], k=10)      # (2, 10) raw ids, scores
    >>> ids, scores = model.recommend_history(["i0007", "i0042"], k=10)  # a new user, folded in
    >>> ids, scores = model.similar_items(["i0007"], k=5)
    >>> model.save("runs/lgcn-copy")

The CLI, the notebook and the HTTP service (recsys.service) all drive this one object; the run
directory stays its on-disk form. Raw ids go in and come out; unknown ids raise DataError
naming them.

**Seen items** are everything the run knows of a user, the train and valid splits, plus any
items passed with the request; they are never recommended (with `exclude_seen`, the default).

**Fold-in** (a user given by an item history, without retraining) solves for the user's vector
against the frozen final item embeddings Y, as one step of implicit-feedback ALS (Hu, Koren and
Volinsky, ICDM 2008) with confidence c = α on the history H and 1 elsewhere:

    x_u = (YᵀY + (α - 1) Y_Hᵀ Y_H + λ I)⁻¹ α Σ_{i∈H} y_i

For ALS this is exactly `implicit`'s `recalculate_user` with the model's own λ (`reg`) and α
(`alpha`). MostPop needs no vector (everyone gets the popularity list). For the models trained
by BPR (MF, LightGCN, LightGCL, DCCF) the scores have no 0/1 target, so λ is set relative to
the catalogue, λ = `FOLDIN_REG` · tr(YᵀY) / d, and α = `FOLDIN_ALPHA`; both were chosen on
yelp-sslrec with 10 % of the users held out of training (benchmarks/foldin.py, figures in the
README). One solve of a d × d system per user: well under a millisecond for d = 64.

A known user sent with extra items is folded in from train + valid + extra, so new
interactions count at once. ANN indexes built by `recsys index build` live in the run
directory beside a JSON audit of their recall against exact search (`build_run_index`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp

from recsys.atomic import atomic_dir, claim_output, write_json
from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap
from recsys.errors import ConfigError, RunError
from recsys.index import INDEX_KINDS, build_index, load_index, recall_vs_exact, save_index, search
from recsys.train.rundir import RunDir

#: fold-in ridge weight for BPR-trained models, relative to tr(YᵀY) / d (measured on yelp)
FOLDIN_REG = 1.0
#: fold-in confidence of a history item for BPR-trained models (measured on yelp)
FOLDIN_ALPHA = 10.0
#: users whose queries audit an ANN index's recall
AUDIT_USERS = 1000


def fold_in(
    item_emb: np.ndarray,
    history: sp.csr_matrix,
    reg: float,
    alpha: float,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """User vectors from item histories by one implicit-ALS user step (module docstring).

    Args:
        item_emb: (n_items, d) float32 frozen item embeddings Y.
        history: (B, n_items) CSR; row b holds user b's items (values ignored, c = α).
        reg: λ, the ridge weight. alpha: α, a history item's confidence.
        gram: YᵀY (d, d) float64, if already at hand (it costs n_items · d² to compute).
    Returns:
        (B, d) float32; a row with an empty history is zero (as in implicit).
    """
    d = item_emb.shape[1]
    if gram is None:
        gram = item_emb.T.astype(np.float64) @ item_emb
    base = gram + reg * np.eye(d)
    out = np.zeros((history.shape[0], d), np.float32)
    for b in range(history.shape[0]):
        items = history.indices[history.indptr[b] : history.indptr[b + 1]]
        if len(items):
            y = item_emb[items].astype(np.float64)
            out[b] = np.linalg.solve(base + (alpha - 1) * y.T @ y, alpha * y.sum(0))
    return out


def foldin_weights(model_name: str, params: dict, item_emb: np.ndarray) -> tuple[float, float]:
    """(λ, α) of `fold_in` for a run: ALS's own, a catalogue-relative pair for the rest."""
    if model_name == "als":
        return float(params["reg"]), float(params["alpha"])
    d = item_emb.shape[1]
    return FOLDIN_REG * float(np.einsum("ij,ij->", item_emb, item_emb)) / d, FOLDIN_ALPHA


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_audit(path: Path) -> dict:
    try:
        audit = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise RunError(f"{path}: unreadable ({e!r:.120})") from None
    if not isinstance(audit, dict) or not isinstance(audit.get("recall_at_k"), (int, float)):
        raise RunError(f"{path}: not a recsys index audit")
    return audit


def index_paths(run: RunDir, kind: str) -> tuple[Path, Path]:
    """Where a run keeps its `kind` index and that index's recall audit."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r} (choose from: {', '.join(INDEX_KINDS)})")
    index = run.index if kind == "flat" else run.path / f"index-{kind}.faiss"
    return index, run.path / f"index-{kind}.json"


def on_device(index: faiss.Index) -> faiss.Index:
    """`index` on the GPU when FAISS sees one (HNSW has no GPU version), else as is."""
    if faiss.get_num_gpus() > 0 and not isinstance(index, faiss.IndexHNSW):
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def build_run_index(
    run_dir: str | Path,
    kind: str,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    k: int = 20,
    seed: int = 0,
    ef_search: int | None = None,
    target_recall: float = 0.95,
) -> dict:
    """Build the run's `kind` index once, audit its recall@k against exact search, save both.

    The audit queries are the embeddings of up to `AUDIT_USERS` users with training items,
    drawn with `seed`. The search-time knob (IVF `nprobe`, HNSW `ef_search`) is the value given,
    or else the smallest power of two from 8 whose audited recall reaches `target_recall` (or
    the knob's largest useful value); FAISS stores it in the index file, so the served index
    searches exactly as audited. The index file and its JSON audit are each written
    atomically. Returns the audit.
    """
    run = RunDir(run_dir)
    run.read_config()
    index_file, audit_file = index_paths(run, kind)
    users, items = run.load_embeddings()
    t0 = time.perf_counter()
    index = build_index(items, kind, nlist=nlist, hnsw_m=hnsw_m, nprobe=nprobe or 8)
    build_s = time.perf_counter() - t0
    trained = np.flatnonzero(np.diff(run.load_dataset().train.indptr) > 0)  # real queries only
    rng = np.random.default_rng(seed)
    sample = rng.choice(trained, min(AUDIT_USERS, len(trained)), replace=False)
    k_audit = min(k, len(items))

    def audited(knob: int | None) -> float:
        if kind == "ivf":
            index.nprobe = knob
        elif kind == "hnsw":
            index.hnsw.efSearch = knob
        return recall_vs_exact(on_device(index), items, users[sample], k_audit)

    given = {"ivf": nprobe, "hnsw": ef_search}.get(kind)
    limit = {"ivf": getattr(index, "nlist", 1), "hnsw": max(len(items), 8)}.get(kind, 0)
    if kind == "ivf" and faiss.get_num_gpus() > 0:
        limit = min(limit, 2048)  # FAISS's GPU IVF searches at most 2048 lists
    knob = given or (None if kind == "flat" else min(8, limit))
    recall = audited(knob)
    while given is None and kind != "flat" and recall < target_recall and knob < limit:
        knob = min(2 * knob, limit)
        recall = audited(knob)
    audit = {
        "kind": kind,
        "params": {
            "nlist": getattr(index, "nlist", None),
            "nprobe": knob if kind == "ivf" else None,
            "hnsw_m": hnsw_m if kind == "hnsw" else None,
            "ef_search": knob if kind == "hnsw" else None,
            "target_recall": None if given or kind == "flat" else target_recall,
        }
        if kind != "flat"
        else {},
        "k": k,
        "recall_at_k": recall,
        "audit_users": len(sample),
        "build_seconds": round(build_s, 3),
    }
    save_index(index, index_file)
    audit["sha256"] = file_digest(index_file)  # checked before FAISS parses the file
    write_json(audit_file, audit)
    return audit


class Model:
    """A trained run in memory: raw ids in, (ids, scores) out, seen items excluded.

    Attributes:
        run: its RunDir. dataset: its Dataset. user_emb (n_users, d), item_emb (n_items, d):
        float32 final embeddings. index: the FAISS index queries go through. index_kind and
        index_audit: which index, and its recall audit ({"recall_at_k": 1.0} for flat).
        seen: (n_users, n_items) CSR of train + valid.
    """

    def __init__(
        self,
        run: RunDir,
        dataset: Dataset,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        index: faiss.Index,
        index_kind: str = "flat",
        index_audit: dict | None = None,
    ):
        self.run, self.dataset = run, dataset
        self.user_emb = np.ascontiguousarray(user_emb, np.float32)
        self.item_emb = np.ascontiguousarray(item_emb, np.float32)
        self.index, self.index_kind = index, index_kind
        self.index_audit = index_audit or {"kind": "flat", "recall_at_k": 1.0}
        self.config = run.read_config()
        self.seen = dataset.train if dataset.valid is None else dataset.train + dataset.valid
        self.seen.data[:] = 1.0
        self.foldin_reg, self.foldin_alpha = foldin_weights(
            self.config["model"], self.config.get("params", {}), self.item_emb
        )
        norms = np.linalg.norm(self.item_emb, axis=1, keepdims=True)
        self._unit_items = self.item_emb / np.maximum(norms, 1e-12)
        self._gram = self.item_emb.T.astype(np.float64) @ self.item_emb  # YᵀY, as implicit's YtY
        # Dict lookups: a request's ids in microseconds (IdMap's join handles misses and casts).
        self._user_pos = dict(zip(dataset.users.ids.to_list(), range(dataset.n_users)))
        self._item_pos = dict(zip(dataset.items.ids.to_list(), range(dataset.n_items)))
        self._item_ids = dataset.items.ids.to_numpy()

    @classmethod
    def fit(
        cls, dataset_dir: str | Path, out: str | Path, model: str, options: dict | None = None,
        **train_options,
    ) -> Model:  # fmt: skip
        """Train `model` on a prepared dataset into run directory `out` and serve it.

        `recsys.api.train` with its options (`config_file`, `overwrite`, `progress`, …); the
        run directory stays the model's on-disk form.

            >>> model = Model.fit("data/ml", "runs/lgcn", "lightgcn", {"epochs": 50})
            >>> ids, scores = model.recommend(["196"], k=10)
        """
        from recsys.api import train  # api serves this module: imported at call time

        train(dataset_dir, out, model, options, **{"progress": False, **train_options})
        return cls.load(out)

    @classmethod
    def load(cls, run_dir: str | Path, index_kind: str = "flat") -> Model:
        """The run in `run_dir`, served through its `index_kind` index (built by
        `recsys index build` unless flat)."""
        run = RunDir(run_dir)
        ds = run.load_dataset()
        users, items = run.load_embeddings(ds)
        index_file, audit_file = index_paths(run, index_kind)
        if index_kind == "flat":  # exact: rebuilt from the checked embeddings, never parsed
            return cls(run, ds, users, items, on_device(build_index(items)), index_kind, None)
        if not (index_file.is_file() and audit_file.is_file()):
            raise RunError(
                f"{run.path}: no {index_kind} index; build it once with "
                f"'recsys index build {run.path} --kind {index_kind}'"
            )
        audit = read_audit(audit_file)
        if file_digest(index_file) != audit.get("sha256"):
            raise RunError(
                f"{index_file}: does not match its audit (damaged or replaced); rebuild it with "
                f"'recsys index build {run.path} --kind {index_kind}'"
            )
        index = load_index(index_file)
        if (index.ntotal, index.d) != items.shape:
            raise RunError(
                f"{index_file}: holds {index.ntotal} vectors of {index.d} dimensions, the run "
                f"has {items.shape[0]} of {items.shape[1]}"
            )
        return cls(run, ds, users, items, on_device(index), index_kind, audit)

    @property
    def name(self) -> str:
        return self.config["model"]

    def info(self) -> dict:
        """What is being served: run, dataset fingerprint, model, test metrics, index audit."""
        summary = self.run.read_summary() if self.run.summary.is_file() else {}
        return {
            "run": str(self.run.path.resolve()),
            "model": self.name,
            "dataset_fingerprint": self.dataset.fingerprint,
            "n_users": self.dataset.n_users,
            "n_items": self.dataset.n_items,
            "metrics": summary.get("test") or summary.get("valid") or {},
            "index": {"kind": self.index_kind, **self.index_audit},
        }

    def recommend(
        self,
        user_ids,
        k: int = 20,
        exclude_seen: bool = True,
        items: list | None = None,
        history_extra: list | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for known users.

        Args:
            user_ids: one raw user id, or a list of them.
            k: items per user.
            exclude_seen: never return the user's train/valid items (nor `history_extra`).
            items: an allow-list of raw item ids to choose from (scored exactly).
            history_extra: raw item ids the users interacted with since training; the users
                are then folded in from train + valid + these.
        Returns:
            ids and scores: (k,) for one user id, (B, k) for a list. Rows with fewer than k
            candidates are padded with None ids and -inf scores.
        """
        single = np.isscalar(user_ids)
        user_idx = self.user_index([user_ids] if single else user_ids)
        seen, rows = self.seen, user_idx
        if history_extra:
            extra = self.item_index(history_extra)
            seen = self.seen[user_idx] + sp.csr_matrix(
                (np.ones(len(user_idx) * len(extra), np.float32),
                 (np.repeat(np.arange(len(user_idx)), len(extra)), np.tile(extra, len(user_idx)))),
                shape=(len(user_idx), self.dataset.n_items),
            )  # fmt: skip
            seen.data[:] = 1.0
            vecs, rows = self.fold_in(seen), np.arange(len(user_idx))
        else:
            vecs = self.user_emb[user_idx]
        ids, scores = self._top(vecs, k, seen if exclude_seen else None, rows, items)
        return (ids[0], scores[0]) if single else (ids, scores)

    def recommend_history(
        self, item_ids: list, k: int = 20, exclude_seen: bool = True, items: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items, each (k,), for a user known only by their raw item history (fold-in)."""
        history = self.history_matrix([item_ids])
        ids, scores = self._top(
            self.fold_in(history), k, history if exclude_seen else None, np.arange(1), items
        )
        return ids[0], scores[0]

    def similar_items(self, item_ids, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k items most cosine-similar to each item (itself left out): (k,) or (B, k)."""
        single = np.isscalar(item_ids)
        item_idx = self.item_index([item_ids] if single else item_ids)
        self_match = sp.csr_matrix(
            (np.ones(len(item_idx), np.float32), (np.arange(len(item_idx)), item_idx)),
            shape=(len(item_idx), self.dataset.n_items),
        )
        ids, scores = self._exact(self._unit_items[item_idx], self._unit_items, k, self_match)
        return (ids[0], scores[0]) if single else (ids, scores)

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """(B, d) user vectors for a (B, n_items) CSR of histories (module docstring)."""
        if self.name == "mostpop":
            return np.ones((history.shape[0], self.user_emb.shape[1]), np.float32)
        return fold_in(self.item_emb, history, self.foldin_reg, self.foldin_alpha, self._gram)

    def user_index(self, user_ids: list) -> np.ndarray:
        """Dense indices (int64) of raw user ids; DataError naming any unknown one."""
        return _lookup(self._user_pos, self.dataset.users, user_ids)

    def item_index(self, item_ids: list) -> np.ndarray:
        """Dense indices (int64) of raw item ids; DataError naming any unknown one."""
        return _lookup(self._item_pos, self.dataset.items, item_ids)

    def history_matrix(self, histories: list[list]) -> sp.csr_matrix:
        """(B, n_items) binary CSR from lists of raw item ids."""
        idx = [self.item_index(h) for h in histories]
        rows = np.repeat(np.arange(len(idx)), [len(i) for i in idx])
        m = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, np.concatenate(idx))),
            shape=(len(idx), self.dataset.n_items),
        )
        m.data[:] = 1.0
        return m

    def save(self, path: str | Path) -> None:
        """Write this model as a run directory at `path`, atomically.

        Holds the config, embeddings, summary, weights and every built index with its audit,
        and refers to the same dataset. A folder that is not a recsys run is never replaced.
        """
        target = Path(path)
        claim_output(target, "run", overwrite=True)
        with atomic_dir(target) as tmp:
            out = RunDir(tmp)
            out.write_config(self.config)
            out.save_embeddings(self.user_emb, self.item_emb)
            for name in ("metrics.json", "metrics.jsonl", "best.pt"):
                if (self.run.path / name).is_file():
                    shutil.copy2(self.run.path / name, tmp / name)
            for f in self.run.path.glob("index*"):
                shutil.copy2(f, tmp / f.name)
            if not out.index.is_file():
                save_index(build_index(self.item_emb), out.index)

    def _top(self, vecs, k, seen, rows, items) -> tuple[np.ndarray, np.ndarray]:
        """Top-k raw ids and scores of `vecs`, without row `rows[j]` of `seen` for query j."""
        if k < 1:
            raise ConfigError(f"k must be positive, got {k}")
        if items is not None:
            allow = self.item_index(items)
            ids, scores = self._exact(
                vecs, self.item_emb[allow], k, None if seen is None else seen[rows][:, allow]
            )
            return self._raw(np.where(ids >= 0, allow[np.maximum(ids, 0)], -1), scores)
        return self._raw(*search(self.index, vecs, k, seen, rows))

    @staticmethod
    def _exact(vecs, item_emb, k, seen) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of vecs @ item_embᵀ with `seen` (B, n) masked: positions and scores."""
        scores = vecs @ item_emb.T
        if seen is not None:
            scores[seen.nonzero()] = -np.inf
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = (
            np.take_along_axis(top, order, 1),
            np.take_along_axis(top_scores, order, 1),
        )
        return np.where(np.isfinite(top_scores), top, -1), top_scores.astype(np.float32)

    def _raw(self, idx: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = self._item_ids[np.maximum(idx, 0)]
        if (idx < 0).any():
            ids = ids.astype(object)
            ids[idx < 0] = None
        return ids, scores


def _lookup(positions: dict, id_map: IdMap, raw_ids: list) -> np.ndarray:
    try:
        return np.fromiter((positions[i] for i in raw_ids), np.int64, len(raw_ids))
    except (KeyError, TypeError):  # an unknown id, or one of another type: IdMap decides
        return id_map.index(list(raw_ids))
