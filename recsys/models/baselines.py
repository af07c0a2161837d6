"""Non-neural baselines behind the same interface: they yield final embeddings, so the
evaluator and the index never treat them as special cases.

MostPop: score(u, i) = popularity rank of i, the same list for everyone (the floor).

ALS (`implicit`'s AlternatingLeastSquares): Hu, Koren and Volinsky, "Collaborative Filtering
for Implicit Feedback Datasets", ICDM 2008.

    c_ui = 1 + α r_ui,   p_ui = 1[r_ui > 0]                                         (Eq. 2, 3)
    min_{x, y} Σ_{u,i} c_ui (p_ui - x_uᵀ y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)           (Eq. 3)

BPR (`implicit`'s BayesianPersonalizedRanking): Rendle et al., "BPR: Bayesian Personalized
Ranking from Implicit Feedback", UAI 2009, learned by SGD with a learning rate:

    max Σ_(u,i,j) ln σ(x̂_ui - x̂_uj) - λ ‖Θ‖²                                       (BPR-Opt)

implicit appends an item-bias column to the factors (and a constant 1 to the users'), so
BPR's embeddings have `dim + 1` columns and the inner product includes the bias.

Symbols: x_u, y_i → `user_factors`, `item_factors`; λ → `reg`; α → `alpha`; d → `dim`.
Both are fitted by `implicit` itself (wrapped, not rewritten); the factors are buffers, so
best.pt holds them and the run's FAISS index serves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import implicit.als
import implicit.bpr
import implicit.gpu
import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from recsys.models.base import Recommender, Search


@dataclass
class MostPopParams:
    pass


class MostPop(Recommender):
    name = "mostpop"
    Params = MostPopParams
    trainable = False

    def __init__(self, n_users, n_items, params, graph, generator):
        super().__init__(n_users, n_items, params, graph, generator)
        self.register_buffer("item_score", torch.zeros(n_items, 1))

    def fit(self, train: sp.csr_matrix) -> None:
        counts = np.asarray(train.getnnz(axis=0))
        # Score by rank, not count: integer counts tie, and ties would be broken arbitrarily.
        order = np.lexsort((np.arange(self.n_items), -counts))
        score = np.empty(self.n_items, np.float32)
        score[order] = np.arange(self.n_items, 0, -1, dtype=np.float32)
        self.item_score.copy_(torch.from_numpy(score)[:, None])

    def final_embeddings(self, graph):
        return torch.ones(self.n_users, 1, device=self.item_score.device), self.item_score


class ImplicitFactors(Recommender):
    """A factor model fitted by `implicit`; subclasses say which one and with what."""

    trainable = False
    #: columns implicit adds to `dim` (BPR's item bias)
    extra_columns = 0

    def __init__(self, n_users, n_items, params, graph, generator):
        super().__init__(n_users, n_items, params, graph, generator)
        width = params.dim + self.extra_columns
        self.register_buffer("user_factors", torch.zeros(n_users, width))
        self.register_buffer("item_factors", torch.zeros(n_items, width))
        self.use_gpu = graph.device.type == "cuda" and implicit.gpu.HAS_CUDA

    def implicit_model(self, seed: int):
        raise NotImplementedError

    def fit(self, train: sp.csr_matrix) -> None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        # implicit parallelises over users itself; a BLAS thread pool underneath it oversubscribes
        # the cores (implicit warns about this and recommends one BLAS thread).
        with threadpool_limits(1, "blas"):
            model = self.implicit_model(seed)
            model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
        if self.use_gpu:
            model = model.to_cpu()
        self.user_factors.copy_(torch.from_numpy(np.asarray(model.user_factors, np.float32)))
        self.item_factors.copy_(torch.from_numpy(np.asarray(model.item_factors, np.float32)))

    def final_embeddings(self, graph):
        return self.user_factors, self.item_factors


@dataclass
class ALSParams:
    dim: int = field(
        default=64,
        metadata={
            "help": "number of latent factors",
            "aliases": ("factors",),
            "min": 1,
            "max": 4096,
        },
    )
    reg: float = field(
        default=0.01,
        metadata={"help": "L2 weight λ on the factors", "aliases": ("regularization",), "min": 0},
    )
    alpha: float = field(
        default=10.0, metadata={"help": "confidence weight α: c_ui = 1 + α r_ui", "min": 0}
    )
    iterations: int = field(
        default=15, metadata={"help": "alternating sweeps over users and items", "min": 1}
    )


class ALS(ImplicitFactors):
    name = "als"
    Params = ALSParams
    search_space = {
        "dim": Search(choices=(32, 64, 128, 256)),
        "reg": Search(1e-3, 1.0, log=True),
        "alpha": Search(1.0, 100.0, log=True),
    }

    def implicit_model(self, seed: int):
        p = self.params
        return implicit.als.AlternatingLeastSquares(
            factors=p.dim, regularization=p.reg, alpha=p.alpha, iterations=p.iterations,
            use_gpu=self.use_gpu, num_threads=torch.get_num_threads(), random_state=seed,
        )  # fmt: skip


@dataclass
class BPRParams:
    dim: int = field(
        default=128,
        metadata={
            "help": "number of latent factors (plus one bias column)",
            "aliases": ("factors",),
            "min": 1,
            "max": 4096,
        },
    )
    reg: float = field(
        default=1e-3,
        metadata={"help": "L2 weight λ on the factors", "aliases": ("regularization",), "min": 0},
    )
    # Not `lr`: that key is the shared loop's Adam learning rate, and keys form one namespace.
    learning_rate: float = field(
        default=0.01, metadata={"help": "SGD learning rate of implicit's BPR", "above": 0}
    )
    iterations: int = field(
        default=200, metadata={"help": "SGD epochs over the training interactions", "min": 1}
    )


class ImplicitBPR(ImplicitFactors):
    name = "bpr"
    Params = BPRParams
    search_space = {
        "dim": Search(choices=(64, 128)),
        "learning_rate": Search(1e-3, 0.1, log=True),
        "reg": Search(1e-5, 0.1, log=True),
    }
    extra_columns = 1

    def implicit_model(self, seed: int):
        p = self.params
        return implicit.bpr.BayesianPersonalizedRanking(
            factors=p.dim, learning_rate=p.learning_rate, regularization=p.reg, iterations=p.iterations,
            use_gpu=self.use_gpu, num_threads=torch.get_num_threads(), random_state=seed,
        )  # fmt: skip
