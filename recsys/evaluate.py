"""Full-ranking evaluation over all items, from embeddings (never from models).

For each user with at least one true item, every item is scored by an inner product, the
user's seen items are masked, and the top max(K) are compared with the true items. With
T_u the user's true items and hit_j = 1 if the j-th ranked item is in T_u:

    Recall@K    = Σ_{j≤K} hit_j / |T_u|
    Precision@K = Σ_{j≤K} hit_j / K
    HitRate@K   = 1 if any hit_j, else 0
    NDCG@K      = DCG / IDCG, DCG = Σ_{j≤K} hit_j / log2(j + 1), IDCG = Σ_{j≤min(|T_u|,K)} 1 / log2(j + 1)
    MRR@K       = 1 / (rank of the first hit), 0 if none within K
    Coverage@K  = |∪_u top-K(u)| / n_items   (over the evaluated users)

Metrics are means over the users with true items. Equal scores are ranked by item index,
lower first, so the result never depends on the order torch's top-k happens to return.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

METRICS = ("recall", "ndcg", "precision", "hit", "mrr")


@dataclass
class EvalResult:
    """metrics: "recall@20" -> mean, plus coverage@K and n_users.
    per_user: "recall@20" -> (n_eval,) float64, aligned with `users` (dense indices)."""

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    recommended: dict[int, np.ndarray]  # K -> (n_items,) bool: in some evaluated user's top-K


def _as_tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(x).to(device=device, dtype=torch.float32)


def _rows_to_coo(m: sp.csr_matrix, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row-in-block, column) index pairs of the given CSR rows."""
    sub = m[rows]
    r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    return torch.from_numpy(r).to(device), torch.from_numpy(sub.indices.astype(np.int64)).to(device)


def top_k_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) item indices by descending score; ties go to the lower item index."""
    k_plus = min(k + 1, scores.shape[1])
    vals, idx = scores.topk(k_plus, dim=1)
    # If the (k+1)-th score equals the k-th, a tie straddles the cut and top-k may have kept
    # any of the tied items: rank those rows exactly. Asking for k+1 costs less than a full pass.
    cut = (
        vals[:, k - 1] == vals[:, k]
        if k_plus > k
        else torch.zeros(len(vals), dtype=torch.bool, device=vals.device)
    )
    vals, idx = vals[:, :k], idx[:, :k]
    if cut.any():
        idx[cut] = torch.sort(scores[cut], dim=1, descending=True, stable=True).indices[:, :k]
        vals[cut] = scores[cut].gather(1, idx[cut])
    # Within the kept items, order ties by index: stable sort by index, then by score.
    by_idx = idx.sort(dim=1).indices
    idx, vals = idx.gather(1, by_idx), vals.gather(1, by_idx)
    by_val = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, by_val)


def _hits(truth: sp.csr_matrix, rows: np.ndarray, top: torch.Tensor) -> torch.Tensor:
    """(B, k) bool: is top[b, j] one of user rows[b]'s true items? A binary search per entry."""
    r, c = _rows_to_coo(truth, rows, top.device)
    n_items = truth.shape[1]
    keys = r * n_items + c  # sorted: CSR rows in order, sorted columns
    query = torch.arange(len(rows), device=top.device)[:, None] * n_items + top
    pos = torch.searchsorted(keys, query).clamp(max=max(len(keys) - 1, 0))
    return keys[pos] == query if len(keys) else torch.zeros_like(top, dtype=torch.bool)


def evaluate(
    user_emb,
    item_emb,
    seen: sp.csr_matrix | None,
    truth: sp.csr_matrix,
    ks: tuple[int, ...] = (10, 20, 40),
    block_bytes: int = 256 * 2**20,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Full-ranking metrics for every user with true items.

    Args:
        user_emb: (n_users, d) float array or tensor. item_emb: (n_items, d).
        seen: (n_users, n_items) CSR of items never to recommend (training items), or None.
        truth: (n_users, n_items) CSR of the held-out items.
        ks: cut-offs, all computed from one top-max(ks) pass.
        block_bytes: bound on the (users × items) score block held at once.
        device: where to score; defaults to the embeddings' device.
        progress: a progress bar over the user blocks on stderr (when it is a terminal).
    """
    device = device or (user_emb.device if isinstance(user_emb, torch.Tensor) else "cpu")
    users_t, items_t = _as_tensor(user_emb, device), _as_tensor(item_emb, device)
    n_items = items_t.shape[0]
    ks = tuple(sorted(set(int(k) for k in ks)))
    max_k = min(max(ks), n_items)
    truth = sp.csr_matrix(truth)
    truth.sort_indices()
    n_true = np.diff(truth.indptr)
    eval_users = np.flatnonzero(n_true > 0)
    block = max(1, block_bytes // (4 * n_items))
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, device=device, dtype=torch.float64))
    ideal = torch.cumsum(discount, 0)
    per_user = {f"{m}@{k}": np.empty(len(eval_users)) for k in ks for m in METRICS}
    recommended = {k: torch.zeros(n_items, dtype=torch.bool, device=device) for k in ks}

    starts = range(0, len(eval_users), block)
    bar = tqdm(starts, desc="evaluating", unit="block", file=sys.stderr, leave=False,
               disable=not progress or not sys.stderr.isatty())  # fmt: skip
    for start in bar:
        rows = eval_users[start : start + block]
        scores = users_t[torch.from_numpy(rows).to(device)] @ items_t.T
        if seen is not None:
            r, c = _rows_to_coo(seen, rows, device)
            scores[r, c] = -torch.inf
        top = top_k_items(scores, max_k)
        hits = _hits(truth, rows, top).double()
        n_t = torch.from_numpy(n_true[rows]).to(device).double()
        first_hit = torch.where(hits.any(1), hits.argmax(1), max_k)
        sl = slice(start, start + len(rows))
        for k in ks:
            kk = min(k, max_k)
            hit_k = hits[:, :kk]
            n_hit = hit_k.sum(1)
            dcg = (hit_k * discount[:kk]).sum(1)
            idcg = ideal[(torch.clamp(n_t, max=kk) - 1).long()]
            values = {
                "recall": n_hit / n_t,
                "precision": n_hit / k,
                "hit": (n_hit > 0).double(),
                "ndcg": dcg / idcg,
                "mrr": torch.where(first_hit < kk, 1.0 / (first_hit + 1).double(), 0.0),
            }
            for m, v in values.items():
                per_user[f"{m}@{k}"][sl] = v.cpu().numpy()
            recommended[k][top[:, :kk].reshape(-1)] = True

    metrics = {name: float(v.mean()) if len(v) else float("nan") for name, v in per_user.items()}
    metrics.update({f"coverage@{k}": float(recommended[k].sum()) / n_items for k in ks})
    metrics["n_users"] = len(eval_users)
    return EvalResult(
        metrics, per_user, eval_users, {k: r.cpu().numpy() for k, r in recommended.items()}
    )


def metrics_by_degree(result: EvalResult, train: sp.csr_matrix, n_groups: int = 5) -> list[dict]:
    """Mean per-user metrics in quantile groups of training degree (LightGCL's Fig. 3 view).

    Returns one dict per group: degree range, number of users, and each metric's mean.
    """
    degree = np.diff(train.indptr)[result.users]
    order = np.argsort(degree, kind="stable")
    groups = []
    for members in np.array_split(order, n_groups):
        if not len(members):
            continue
        row = {
            "min_degree": int(degree[members].min()),
            "max_degree": int(degree[members].max()),
            "n_users": len(members),
        }
        row.update({name: float(v[members].mean()) for name, v in result.per_user.items()})
        groups.append(row)
    return groups
