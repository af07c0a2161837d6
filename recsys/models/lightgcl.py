"""LightGCL: graph contrastive learning with an SVD-augmented view.

Cai, Huang, Xia, Ren, "LightGCL: Simple Yet Effective Graph Contrastive Learning for
Recommendation", ICLR 2023 (arXiv 2302.08191).

Main view, with edge dropout p(·) on Â during training:
    z_u⁽ˡ⁾ = p(Â) e_i⁽ˡ⁻¹⁾,   z_i⁽ˡ⁾ = p(Â)ᵀ e_u⁽ˡ⁻¹⁾,   e⁽ˡ⁾ = z⁽ˡ⁾,   E = Σ_{l=0..L} e⁽ˡ⁾
SVD view, from the main view's previous layer, with the rank-q randomised SVD Â ≈ U S Vᵀ
computed once:
    g_u⁽ˡ⁾ = U S (Vᵀ e_i⁽ˡ⁻¹⁾),   g_i⁽ˡ⁾ = V S (Uᵀ e_u⁽ˡ⁻¹⁾),   G = Σ_{l=0..L} g⁽ˡ⁾,  g⁽⁰⁾ = e⁽⁰⁾
    (multiplied right to left: the dense I × J reconstruction U S Vᵀ is never formed)
InfoNCE, anchors the batch's users (resp. its positive and negative items), the
SVD view against the main view, candidates N (all users, resp. all items), s = cosine:
    L_s = mean_{a ∈ batch} [ -s(g_a, e_a) / τ + log Σ_{n ∈ N} exp(s(g_a, e_n) / τ) ]
Objective:  L = L_bpr(E) + λ1 L_s + λ2 ‖Θ‖²,  Θ = {E⁽⁰⁾}

Symbols: Â → `graph.adj`; e⁽⁰⁾ → `user_emb`, `item_emb`; L → `layers`; q → `svd_rank`;
U S, V S → `svd_us`, `svd_vs`; τ → `temperature`; λ1 → `cl_weight`; λ2 → `weight_decay`;
p(·) rate → `dropout`; d → `dim`. L_bpr is the run's ranking loss (models.base.RankingLoss):
BPR, or the sampled softmax on dense logs.

The two InfoNCE modes (`negatives`):
- "all" (the paper's loss, exact): each distinct anchor is scored once with weight
  count/total, and the log-sum-exp runs over bounded blocks of anchor rows, each against
  all candidates; the block's gradient is formed in the same pass (recsys.models.contrast,
  shared with DCCF), so each score costs three matmuls and one exp, and no score matrix
  outlives its block.
- "batch" / "sampled" (approximations, for speed): N is the batch's distinct nodes (each
  anchor's own among them), or `num_negatives` nodes drawn uniformly per step, shared by
  all anchors (a sampled-softmax estimate of the sum, up to the constant log(|N_all|/M)).

Differences from the authors' code: as there, the paper's σ(·) and residual connection in
the main view are absent. There, s(·) is the raw inner product with the positive clipped to
[-5, 5]; here it is the paper's cosine, bounded by construction (|s/τ| ≤ 1/τ), which also
keeps the sampled mode's loss bounded below. Edge dropout is recsys.graph.drop_edges, shared
by all models: kept edges keep their weights (the authors' code rescales them by 1/(1-p)).
λ2‖Θ‖² is weight decay on all parameters, written as a loss term because the shared loop
only sums terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recsys.errors import ConfigError
from recsys.graph import drop_edges, propagate, truncated_svd
from recsys.models.base import (
    RANKING_SEARCH,
    Batch,
    EmbeddingRecommender,
    Search,
    interactions_per_user,
)
from recsys.models.contrast import anchor_weights, fast_score_dtype, info_nce

# λ1 = 3.7 / m², m = training interactions per user (models.base.interactions_per_user),
# within [1e-4, 0.5]: the contrast regularises, and dense data needs far less of it. A power
# law through the validation optima of ml-100k (m = 42: λ1 0.002 best of 0.002-0.2, test
# Recall@20 0.343; 0.02: 0.322; the paper's 0.2: 0.21) and yelp-sslrec (m = 4.3: the paper's
# 0.2; 0.05 and 0.02 trail it), then checked on the sample (m = 11: 0.031, valid Recall@20
# within 0.1 % of the best of 0.005-0.2; 0.2 is 7 % worse).
CL_TIMES_DENSITY_SQUARED = 3.7

# λ2 = 30 / (ρ² · n), n = users + items, ρ = 2 · interactions / n (interactions per node): a
# decay whose strength per row is 30 / ρ², so it neither grows with the number of rows (λ2‖Θ‖²
# sums over all of them while BPR is a batch mean) nor stays as strong on dense logs, which
# need less of it. Fitted on validation Recall@20 (`recsys train DATA --model lightgcl
# --lambda2 X`): ml-100k (ρ 33, n 2,389) best at 1e-5-3e-5 (0.3530; 3e-6 0.3376, 1e-4 0.3278);
# yelp-sslrec (ρ 5.2, n 69,534) needs ≥ 1e-5 (0.0872; 3e-6 0.0687 at epoch 16, 3e-7 falls
# from epoch 3 on); gowalla (ρ 20.6, n 70,839) stalls at 1e-5 (0.101 for 3 epochs) and learns
# below (after 8 epochs: 3e-7 0.1504, 1e-6 0.1412). The rule gives ml-100k 1.1e-5 (0.3527),
# yelp 1.6e-5 (0.0900, test 0.0873 against 0.0845 at 1e-5), gowalla 1.0e-6; checked on the
# sample, which played no part (ρ 14.7: 9.3e-5, 0.7469 against 0.7410 at 1e-5). Below the
# rule, gowalla levels off too, only later: 1e-7 and 0 trace one curve, 0.1566 at epoch 14 and
# flat to 16, while LightGCN climbs to 0.1711 by epoch 45 (one thread each, the matrix's split).
DECAY_TIMES_DENSITY_SQUARED = 30.0
# Where the sampled softmax is derived (dense logs, models.base.SOFTMAX_FROM_DENSITY) the
# ranking term keeps pushing scores apart where BPR's saturates, and λ2 is 10× the rule:
# ml-100k 0.3579 at 1.1e-4 against 0.3441 at the rule's 1.1e-5 (BPR 0.3530); gowalla, which
# stalls under BPR at 1e-5, learns under the softmax at 1e-5 (validation 0.1848 at epoch 8,
# against BPR's plateau of 0.1566). A softmax asked for on a sparse log keeps the rule's λ2:
# yelp-sslrec collapsed at 10× (validation 0.0009).
SOFTMAX_DECAY_FACTOR = 10.0


def decay_for(train, softmax: bool = False) -> float:
    """λ2 for a training matrix: DECAY_TIMES_DENSITY_SQUARED / (ρ² n), × SOFTMAX_DECAY_FACTOR
    under the sampled softmax, within [1e-8, 1e-3] (the search range)."""
    nodes = sum(train.shape)
    per_node = 2 * train.nnz / max(nodes, 1)
    rule = DECAY_TIMES_DENSITY_SQUARED / (max(per_node, 1e-9) ** 2 * nodes)
    return min(max(rule * (SOFTMAX_DECAY_FACTOR if softmax else 1.0), 1e-8), 1e-3)


@dataclass
class LightGCLParams:
    dim: int = field(default=64, metadata={"help": "embedding size d", "min": 1, "max": 4096})
    layers: int = field(default=2, metadata={"help": "propagation layers L", "min": 1, "max": 10})
    svd_rank: int = field(
        default=5, metadata={"help": "rank q of the truncated SVD", "aliases": ("q",), "min": 1}
    )
    cl_weight: float = field(
        default=0.2,
        metadata={
            "help": f"InfoNCE weight λ1 [{CL_TIMES_DENSITY_SQUARED:g} / (interactions per user)²]",
            "aliases": ("lambda1",),
            "min": 0,
        },
    )
    temperature: float = field(
        default=0.2, metadata={"help": "InfoNCE temperature τ", "aliases": ("temp",), "min": 0.025}
    )
    weight_decay: float = field(
        default=1e-5,
        metadata={
            "help": f"λ2 on ‖Θ‖², all parameters [{DECAY_TIMES_DENSITY_SQUARED:g} / (ρ² n): n "
            "users + items, ρ interactions per node; 10× where the softmax loss is derived]",
            "aliases": ("lambda2",),
            "min": 0,
        },
    )
    dropout: float = field(
        default=0.0, metadata={"help": "edge dropout rate on the main view", "min": 0, "below": 1}
    )
    negatives: str = field(
        default="sampled",
        metadata={
            "help": "InfoNCE negatives: all (the paper's exact loss) | batch | sampled",
            "choices": ("all", "batch", "sampled"),
        },
    )
    num_negatives: int = field(
        default=1024, metadata={"help": "M nodes drawn per step when negatives=sampled", "min": 1}
    )


class LightGCL(EmbeddingRecommender):
    name = "lightgcl"
    propagates = True
    Params = LightGCLParams
    train_defaults = {"batch_size": 4096}
    search_space = {
        **RANKING_SEARCH,
        "lr": Search(1e-3, 1e-2, log=True),
        "cl_weight": Search(1e-4, 0.5, log=True),
        "temperature": Search(0.1, 1.0, log=True),
        "weight_decay": Search(1e-8, 1e-3, log=True),
        "layers": Search(1, 3),
    }

    @classmethod
    def data_defaults(cls, train) -> dict:
        per_user = interactions_per_user(train)
        derived = super().data_defaults(train)
        return {
            **derived,
            "cl_weight": min(max(CL_TIMES_DENSITY_SQUARED / per_user**2, 1e-4), 0.5),
            "weight_decay": decay_for(train, softmax=derived["loss"] == "softmax"),
        }

    def __init__(self, n_users, n_items, params, graph, generator):
        super().__init__(n_users, n_items, params, graph, generator)
        if params.temperature < 0.025:
            raise ConfigError(
                f"temperature must be at least 0.025 (float32 range of exp(-2/τ)), got {params.temperature}"
            )
        if params.layers < 1:
            raise ConfigError(
                f"layers must be at least 1 (the SVD view is a propagation), got {params.layers}"
            )
        u, s, v = truncated_svd(graph, params.svd_rank, generator)
        # Recomputed from the seed at construction, so kept out of checkpoints.
        self.register_buffer("svd_us", u * s, persistent=False)
        self.register_buffer("svd_vs", v * s, persistent=False)
        self.register_buffer("svd_u", u, persistent=False)
        self.register_buffer("svd_v", v, persistent=False)

    def views(self, graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Main-view E of users and items, (n, d), and the SVD view's (q, d) projections.

        Σ_{l=1..L} U S Vᵀ e_i⁽ˡ⁻¹⁾ = U S (Vᵀ Σ_{l<L} e_i⁽ˡ⁾): one projection serves every layer,
        and G = e⁽⁰⁾ + U S · projection is formed only at the batch's anchors (`svd_view`).
        """
        if self.training and self.params.dropout > 0:
            graph = drop_edges(graph, self.params.dropout, self.generator)
        users, items = self.user_emb, self.item_emb
        sum_users, sum_items = users, items
        for _ in range(self.params.layers):
            before_users, before_items = sum_users, sum_items
            users, items = propagate(graph, users, items)
            sum_users, sum_items = sum_users + users, sum_items + items
        return sum_users, sum_items, self.svd_v.T @ before_items, self.svd_u.T @ before_users

    @staticmethod
    def svd_view(
        ego: torch.Tensor, factor: torch.Tensor, projection: torch.Tensor, nodes: torch.Tensor
    ) -> torch.Tensor:
        """G at `nodes`: e⁽⁰⁾ + (U S) · projection, (len(nodes), d)."""
        return ego[nodes] + factor[nodes] @ projection

    def final_embeddings(self, graph):
        users, items, _, _ = self.views(graph)
        return users, items

    def contrast(self, main, ego, factor, projection, nodes) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE of one side (users or items) for batch entries `nodes`, and E at `nodes`."""
        anchors, inverse, weights = anchor_weights(nodes)
        main_rows = main[anchors]
        if self.params.negatives == "all":
            negatives = main
        elif self.params.negatives == "batch":
            negatives = main_rows
        else:
            drawn = torch.randint(
                0, main.shape[0], (self.params.num_negatives,), generator=self.generator
            )
            negatives = main[drawn.to(main.device)]
        g = F.normalize(self.svd_view(ego, factor, projection, anchors), dim=1)
        cands = F.normalize(negatives, dim=1)[None]
        positives = F.normalize(main_rows, dim=1)
        loss = info_nce(g, positives, cands, self.params.temperature, weights, fast_score_dtype(g))
        return loss, main_rows[inverse]

    def loss_terms(self, batch: Batch, graph):
        p = self.params
        users, items, proj_users, proj_items = self.views(graph)
        cl_users, u = self.contrast(users, self.user_emb, self.svd_us, proj_users, batch.users)
        cl_items, pos_neg = self.contrast(
            items,
            self.item_emb,
            self.svd_vs,
            proj_items,
            torch.cat([batch.pos_items, batch.neg_items]),
        )
        pos, neg = pos_neg.chunk(2)
        decay = sum(w.pow(2).sum() for w in self.parameters())
        return {
            **self.ranking(u, pos, neg),
            "cl": p.cl_weight * (cl_users + cl_items),
            "decay": p.weight_decay * decay,
        }
