"""The one model interface every recommender honours.

A model turns the training graph into final user and item embeddings; scores are their
inner products. Trainable models also return their weighted loss terms for a batch of BPR
triples; the shared loop (recsys.train.loop) sums them, steps the optimizer and logs each
by name. A model owns no optimizer, loop, device choice or file I/O.

Hyperparameters are a dataclass, `Params`, on each model class. Its fields are the model's
CLI flags and config keys; `metadata={"aliases": (...)}` lists the paper's names for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recsys.graph import Graph
from recsys.models.contrast import fast_score_dtype


@dataclass(frozen=True)
class Search:
    """One option's range for `recsys tune`: [low, high] (log-uniform with `log`), or `choices`.

    Integer or float draws follow the option's own type; keys are the flat option names
    (a model's Params fields and training options such as `lr`).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()


@dataclass
class Batch:
    """BPR triples on the training device: (B,) int64 each."""

    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor

    def rows(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's rows of (users, items): (u, pos, neg), each (B, d).

        index_select rather than x[idx]: its backward is an index_add, about 3× faster on CPU
        than the accumulate-mode index_put that advanced indexing uses.
        """
        return (
            users.index_select(0, self.users),
            items.index_select(0, self.pos_items),
            items.index_select(0, self.neg_items),
        )


class Recommender(nn.Module):
    """Base of all models.

    Subclasses set `name`, `Params`, and either `trainable = True` with `loss_terms`, or
    `trainable = False` with `fit` (closed-form or external baselines).
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    #: training options this model prefers over the loop's defaults (e.g. a paper's batch size)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: what `recsys tune` searches, declared beside the defaults it starts from
    search_space: ClassVar[dict[str, Search]] = {}
    trainable: ClassVar[bool] = True
    # True when every training step propagates the whole graph (the loop bounds steps per epoch)
    propagates: ClassVar[bool] = False

    def __init__(
        self, n_users: int, n_items: int, params: Any, graph: Graph, generator: torch.Generator
    ):
        super().__init__()
        self.n_users, self.n_items, self.params = n_users, n_items, params
        self.generator = generator  # the run's one torch random source (init, dropout, sampling)

    @classmethod
    def data_defaults(cls, train: sp.csr_matrix) -> dict[str, Any]:
        """Defaults derived from the training matrix; any option the user gives wins over them."""
        return {}

    def final_embeddings(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_users, d) and (n_items, d) float32: score(u, i) = users[u] · items[i]."""
        raise NotImplementedError

    def loss_terms(self, batch: Batch, graph: Graph) -> dict[str, torch.Tensor]:
        """Each term of the training loss for `batch`, already weighted; the loop adds them."""
        raise NotImplementedError(f"{self.name} is not trained by gradient descent")

    def fit(self, train: sp.csr_matrix) -> None:
        """Fit a non-trainable model on the (n_users, n_items) training matrix."""
        raise NotImplementedError(f"{self.name} is trained by the shared loop, not fit()")

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, n_items={self.n_items}, {self.params}"


# The ranking loss's options, searched by `recsys tune` for every embedding model.
RANKING_SEARCH = {
    "loss": Search(choices=("softmax", "bpr")),
    "loss_temperature": Search(0.5, 4.0, log=True),
}


class EmbeddingRecommender(Recommender):
    """A model whose parameters start from ego embeddings E⁽⁰⁾ of users and items."""

    def __init__(self, n_users, n_items, params, graph, generator):
        super().__init__(n_users, n_items, params, graph, generator)
        self.user_emb = nn.Parameter(torch.empty(n_users, params.dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, params.dim))
        self.reset_parameters(generator)
        self.ranking = RankingLoss()  # recsys.train.loop.build_model sets the run's choice

    def reset_parameters(self, generator: torch.Generator) -> None:
        # N(0, 0.1²) as in LightGCN's reference code; Xavier gives the same ranking quality here.
        for w in (self.user_emb, self.item_emb):
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator) * 0.1)

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    @classmethod
    def data_defaults(cls, train: sp.csr_matrix) -> dict[str, Any]:
        """The ranking loss: sampled softmax from SOFTMAX_FROM_DENSITY interactions per user."""
        dense = interactions_per_user(train) >= SOFTMAX_FROM_DENSITY
        return {"loss": "softmax" if dense else "bpr"}


# The sampled softmax is the default ranking loss from this many training interactions per user
# (interactions_per_user), BPR below. Chosen on validation Recall@20 (`recsys train DATA
# --model M --loss L`, one thread): ml-100k (42 per user) gains on every model (LightGCN 0.3626
# against 0.3529, DCCF 0.3462 against 0.3197; LightGCL with its λ2 ×10); gowalla (24) gains
# most (LightGCN 0.1890 after 10 epochs against BPR's 0.1714 after 47; LightGCL 0.1848 against
# BPR's plateau of 0.1566); the sample (11) loses on LightGCL and DCCF; yelp-sslrec (4.3)
# overfits (LightGCN best at epoch 3, LightGCL stalls at 0.064 against 0.090). Every run, and
# the confirmation on ml-100k with every rating (76), which chose nothing: docs/ranking-loss.md.
SOFTMAX_FROM_DENSITY = 16.0

# M, the negatives the softmax shares among a batch's rows (at most the batch's own). Validation
# Recall@20, M 4,096 against 1,024, one thread: gowalla LightGCL 0.1941 at epoch 14 against a
# plateau of 0.187 (best epoch 22), DCCF 0.1887 after 3 epochs against 0.1718; ml-100k LightGCL
# 0.3656 against 0.3579, DCCF 0.3500 against 0.3462, MF 0.3474 against 0.3431, LightGCN 0.3596
# against 0.3626 (test 0.3551 against 0.3526). Confirmed on ml-100k with every rating, which
# chose nothing: docs/ranking-loss.md. The price is the scores: gowalla's LightGCL epoch took
# about 30 s against 16.6 s (two threads, bfloat16 gradient GEMMs).
SOFTMAX_NEGATIVES = 4096


def interactions_per_user(train: sp.csr_matrix) -> float:
    """Training interactions per user who has any: the density that regularisers scale with.

    A Gaussian prior weighs once per user while the likelihood sums over the user's
    interactions, so the regulariser of a per-interaction loss scales as 1 / this.
    """
    users = max(int((np.diff(train.indptr) > 0).sum()), 1)
    return train.nnz / users


def bpr_loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(u·p - u·n) over the batch, as softplus for numerical stability."""
    return F.softplus((users * neg).sum(-1) - (users * pos).sum(-1)).mean()


# Scores held at once by the sampled softmax (64 MiB of float32): a larger batch is scored in
# row blocks, so the 16M log's batch of 115k rows × 1024 negatives (0.5 GiB of scores) never
# exists at once. Forming the gradient in the same pass (_SampledSoftmax) made forward and
# backward 0.46× of autograd's on gowalla's batch (51 against 100 ms) and 0.21× on the 16M
# log's, where autograd recomputed its blocks under torch.utils.checkpoint (`OMP_NUM_THREADS=1
# python benchmarks/contrast_ab.py --threads 1 --against ce023eb --cases softmax,softmax-16m`,
# paired medians, 1 thread, quiet; 0.52× on gowalla's batch at 2 threads).
SOFTMAX_SCORES = 1 << 24


class _SampledSoftmax(torch.autograd.Function):
    """Σ_b [log(exp(q_b) + Σ_m exp(s_bm)) - q_b], q_b = u_b·p_b/τ, s_bm = u_b·n_m/τ, in row
    blocks, with the gradient formed in the same pass (the scalar loss ends the graph, as in
    recsys.models.contrast): with P the softmax over [q_b, s_b·], ∂/∂u_b = (P_b·n - (1 - P_bq)
    p_b)/τ, ∂/∂p_b = -(1 - P_bq) u_b/τ and ∂/∂n = Pᵀu/τ. τ rides in the GEMM's left operand,
    the row max is the shift, exp and both gradient GEMMs reuse one block, and P's 1/norm
    scales the GEMMs' (b × d) sides, not the (b × M) block (benchmarks/contrast_ab.py --cases
    softmax,softmax-16m: see SOFTMAX_SCORES).

    The raw scores are unbounded, so their GEMM, the shift, the exp and the row sums stay in
    the rows' dtype; with a bfloat16 `score_dtype` the two gradient GEMMs read a bfloat16 copy
    of exp(logit - shift) ∈ (0, 1] (8 significant bits, as in recsys.models.contrast) and the
    gradients accumulate in the rows' dtype."""

    @staticmethod
    def forward(ctx, users, pos, shared_neg, temperature: float, score_dtype: torch.dtype):
        exact = score_dtype == users.dtype
        scaled = users / temperature
        positive = (scaled * pos).sum(1)  # q, (B,)
        rows = min(users.shape[0], max(1, SOFTMAX_SCORES // (shared_neg.shape[0] + 1)))
        buffer = users.new_empty(rows, shared_neg.shape[0])
        low = None if exact else buffer.new_empty(buffer.shape, dtype=score_dtype)
        neg_low = shared_neg.to(score_dtype)
        grad_users, grad_neg = torch.empty_like(users), torch.zeros_like(shared_neg)
        pos_weight = torch.empty_like(positive)  # 1 - P_bq, the positive's missing share
        total = users.new_zeros(())
        for start in range(0, users.shape[0], rows):
            stop = min(start + rows, users.shape[0])
            scores = torch.mm(scaled[start:stop], shared_neg.T, out=buffer[: stop - start])
            shift = torch.maximum(scores.amax(1), positive[start:stop])
            e = scores.sub_(shift[:, None]).exp_()
            own = (positive[start:stop] - shift).exp()
            norm = e.sum(1) + own
            if not exact:  # the GEMMs read a bfloat16 copy (a sum over it would copy back)
                e = low[: stop - start].copy_(e)
            total += (norm.log() + shift - positive[start:stop]).sum()
            pos_weight[start:stop] = 1 - own / norm
            # P = e / norm by rows, applied to the GEMMs' (b × d) sides, not to the block
            grad_users[start:stop] = torch.mm(e, neg_low).div_(norm[:, None])
            weighted = (users[start:stop] / norm[:, None]).to(score_dtype)
            if exact:
                grad_neg.addmm_(e.T, weighted)
            else:
                grad_neg += torch.mm(e.T, weighted)
        grad_users.sub_(pos_weight[:, None] * pos).div_(temperature)
        grad_pos = users * (-pos_weight / temperature)[:, None]
        ctx.save_for_backward(grad_users, grad_pos, grad_neg.div_(temperature))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_users, grad_pos, grad_neg = ctx.saved_tensors
        return grad_out * grad_users, grad_out * grad_pos, grad_out * grad_neg, None, None


def softmax_loss(
    users: torch.Tensor,
    pos: torch.Tensor,
    shared_neg: torch.Tensor,
    temperature: float,
    score_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sampled softmax: mean over rows of -log of the positive's share of exp(score / τ) among
    the positive and the M negatives every row shares.

    Args:
        users, pos: (B, d) each row's user and positive item.
        shared_neg: (M, d) negatives scored against every row (uniform draws: no logQ term).
        temperature: τ > 0, dividing the raw inner products.
        score_dtype: the dtype in which the gradient GEMMs read the exponentiated scores
            (recsys.models.contrast.fast_score_dtype); None for the rows' own.
    """
    return (
        _SampledSoftmax.apply(users, pos, shared_neg, temperature, score_dtype or users.dtype)
        / users.shape[0]
    )


@dataclass(frozen=True)
class RankingLoss:
    """The recommendation term every trained embedding model adds to its own terms.

        bpr      mean_b softplus(u_b·n_b - u_b·p_b)                    (one negative a row)
        softmax  mean_b -log [exp(u_b·p_b/τ) / (exp(u_b·p_b/τ) + Σ_m exp(u_b·n_m/τ))]

    softmax shares the batch's first M uniform negatives among all rows (Wu et al., "On the
    Effectiveness of Sampled Softmax Loss for Item Recommendation", TOIS 2024): M negatives per
    positive where BPR has one, for M (B × d) GEMM columns, little next to a graph propagation.
    Where it is the default, and why M and τ: SOFTMAX_FROM_DENSITY and SOFTMAX_NEGATIVES.
    """

    kind: str = "bpr"  # a model built by hand trains the papers' loss; runs choose TrainParams.loss
    negatives: int = SOFTMAX_NEGATIVES
    temperature: float = 1.0

    @property
    def shared_negatives(self) -> int:
        """M, the negatives every row is scored against (at most the batch's own); 0 for BPR."""
        return self.negatives if self.kind == "softmax" else 0

    def __call__(self, users, pos, neg) -> dict[str, torch.Tensor]:
        if self.kind == "bpr":
            return {"bpr": bpr_loss(users, pos, neg)}
        shared = neg[: self.shared_negatives]
        score_dtype = fast_score_dtype(users)  # bfloat16 where the CPU has it natively
        return {"softmax": softmax_loss(users, pos, shared, self.temperature, score_dtype)}


def l2_penalty(*ego: torch.Tensor) -> torch.Tensor:
    """½ Σ‖e‖² over the batch's ego embeddings, divided by the batch size (LightGCN's L2)."""
    return sum(e.pow(2).sum() for e in ego) / (2 * ego[0].shape[0])
