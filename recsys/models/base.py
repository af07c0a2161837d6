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


class EmbeddingRecommender(Recommender):
    """A model whose parameters start from ego embeddings E⁽⁰⁾ of users and items."""

    def __init__(self, n_users, n_items, params, graph, generator):
        super().__init__(n_users, n_items, params, graph, generator)
        self.user_emb = nn.Parameter(torch.empty(n_users, params.dim))
        self.item_emb = nn.Parameter(torch.empty(n_items, params.dim))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        # N(0, 0.1²) as in LightGCN's reference code; Xavier gives the same ranking quality here.
        for w in (self.user_emb, self.item_emb):
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator) * 0.1)

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb


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


def l2_penalty(*ego: torch.Tensor) -> torch.Tensor:
    """½ Σ‖e‖² over the batch's ego embeddings, divided by the batch size (LightGCN's L2)."""
    return sum(e.pow(2).sum() for e in ego) / (2 * ego[0].shape[0])
