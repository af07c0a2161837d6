"""LightGCN: simplified graph convolution for recommendation.

He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020 (arXiv 2002.02126).

    (Eq. 3)  e_u⁽ᵏ⁺¹⁾ = Σ_{i∈N_u} 1/√(|N_u||N_i|) e_i⁽ᵏ⁾,   e_i⁽ᵏ⁺¹⁾ likewise
    (Eq. 4)  e_u = Σ_{k=0..K} α_k e_u⁽ᵏ⁾,  α_k = 1/(K+1)
    (Eq. 15) L = Σ -ln σ(ŷ_ui - ŷ_uj) + λ ‖E⁽⁰⁾_batch‖²

Symbols: 1/√(|N_u||N_i|) → `graph.adj` (R̃, built once by recsys.graph); K → `layers`;
E⁽⁰⁾ → `user_emb`, `item_emb`; λ → `reg`. The -ln σ term is the run's ranking loss
(models.base.RankingLoss): BPR as here, or the sampled softmax on dense logs. Edge dropout
(`dropout`, 0 in the paper) is SGL-style structure dropout on R̃, off at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recsys.graph import drop_edges, propagate
from recsys.models.base import RANKING_SEARCH, Batch, EmbeddingRecommender, Search, l2_penalty


@dataclass
class LightGCNParams:
    dim: int = field(default=64, metadata={"help": "embedding size d", "min": 1, "max": 4096})
    layers: int = field(default=3, metadata={"help": "propagation layers K", "min": 1, "max": 10})
    reg: float = field(
        default=1e-4,
        metadata={
            "help": "L2 weight λ on the batch's ego embeddings",
            "aliases": ("emb_reg",),
            "min": 0,
        },
    )
    dropout: float = field(
        default=0.0, metadata={"help": "edge dropout rate during training", "min": 0, "below": 1}
    )


class LightGCN(EmbeddingRecommender):
    name = "lightgcn"
    propagates = True
    Params = LightGCNParams
    search_space = {
        **RANKING_SEARCH,
        "lr": Search(1e-3, 3e-2, log=True),
        "reg": Search(1e-6, 1e-1, log=True),
        "layers": Search(1, 4),
    }

    def propagate(self, graph) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4: the mean of layers 0..K, for users and items."""
        if self.training and self.params.dropout > 0:
            graph = drop_edges(graph, self.params.dropout, self.generator)
        users, items = self.user_emb, self.item_emb
        sum_users, sum_items = users, items
        for _ in range(self.params.layers):
            users, items = propagate(graph, users, items)
            sum_users, sum_items = sum_users + users, sum_items + items
        scale = 1.0 / (self.params.layers + 1)
        return sum_users * scale, sum_items * scale

    def final_embeddings(self, graph):
        return self.propagate(graph)

    def loss_terms(self, batch: Batch, graph):
        users, items = self.propagate(graph)
        u, p, n = batch.rows(users, items)
        ego = batch.rows(self.user_emb, self.item_emb)
        return {**self.ranking(u, p, n), "reg": self.params.reg * l2_penalty(*ego)}
