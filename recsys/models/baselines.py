"""Non-neural baselines behind the same interface: they yield final embeddings, so the
evaluator and the index never treat them as special cases.

MostPop: score(u, i) = popularity rank of i, the same list for everyone (the floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.base import Recommender


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
