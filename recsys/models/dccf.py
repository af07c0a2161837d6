"""DCCF: disentangled intents and adaptive self-supervised augmentation for collaborative filtering.

Ren, Xia, Zhao, Yin, Huang, "Disentangled Contrastive Collaborative Filtering", SIGIR 2023
(arXiv 2305.02759), in its notation (equations labelled by role). Per layer l = 1..L, from
the ego embeddings E⁽⁰⁾:

    [graph]  Z⁽ˡ⁾ = Â E⁽ˡ⁻¹⁾                                    graph message passing
    [intent] R_u⁽ˡ⁾ = softmax(E_u⁽ˡ⁻¹⁾ C_u) C_uᵀ,  R_i⁽ˡ⁾ likewise  intent-aware aggregation
    [mask]   α_ui = (cos(h_u, h_i) + 1) / 2 on every training edge, h = Z⁽ˡ⁾ or h = R⁽ˡ⁾
    [aug]    Ĝ = D_α⁻¹ M_α, row-normalised; H⁽ˡ⁾ = Ĝ_Z E⁽ˡ⁻¹⁾, P⁽ˡ⁾ = Ĝ_R E⁽ˡ⁻¹⁾
    [layer]  E⁽ˡ⁾ = E⁽ˡ⁻¹⁾ + Z⁽ˡ⁾ + R⁽ˡ⁾ + H⁽ˡ⁾ + P⁽ˡ⁾;  e = Σ_{l=0..L} E⁽ˡ⁾,  ŷ_ui = e_uᵀ e_i
    [ssl]    L_ssl = Σ_l Σ_{V∈{R,H,P}} InfoNCE(Z⁽ˡ⁾, V⁽ˡ⁾) over the batch's distinct users and
             distinct positive items (at most `contrast_nodes` of each, drawn at random),
             InfoNCE(a, b) = mean_n -log exp(ā_n·b̄_n/τ) / Σ_m exp(ā_n·b̄_m/τ) with
             x̄ = x/‖x‖ (the other distinct nodes of the batch are the negatives)
    [loss]   L = L_bpr + λ₁ L_ssl + λ₂ ‖E⁽⁰⁾_batch‖² + λ₃ (‖C_u‖² + ‖C_i‖²)

Symbols: Â → `graph.adj` (R̃, built once by recsys.graph); E⁽⁰⁾ → `user_emb`, `item_emb`;
C_u, C_i (d × K) → `user_intents`, `item_intents`; K → `intents`; L → `layers`;
α → `edge_mask`; Ĝ → `learned_hop`; τ → `temperature`; λ₁ → `ssl_weight`; λ₂ → `reg`;
λ₃ → `prototype_reg`. L_bpr is the run's ranking loss (models.base.RankingLoss): BPR, or the
sampled softmax on dense logs.

Row normalisation of the bipartite learned graph: M_α is (n_users × n_items) with the mask on
every training edge, and the (U+I)² adjacency [[0, M_α], [M_αᵀ, 0]] is normalised by its rows,
so a user's row divides by its weighted user degree Σ_i α_ui and an item's row (a column of
M_α) by its weighted item degree Σ_u α_ui: per edge w = α_ui / Σ_{e' in row} α_e', a different
weight in each direction (nodes without edges get 0); `learned_hop` puts the two weights on
the edges and multiplies once each way. Gradients flow through α into Z⁽ˡ⁾ and R⁽ˡ⁾ (the
masks are learned end to end, as the paper's "learnable augmentation" and its reference code
do); the operator, with its backward written out on edges, is recsys.models.learned_hop.

Ego embeddings and prototypes start Xavier-normal, as the reference code (see reset_parameters).
Departure: InfoNCE is the exact log-sum-exp form without the reference code's +1e-8 guards;
it is recsys.models.contrast.info_nce (blocked, gradient in the same pass) with the views as
their own candidates and weight 1/n per distinct node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recsys.graph import Graph, propagate
from recsys.models.base import (
    RANKING_SEARCH,
    Batch,
    EmbeddingRecommender,
    Search,
    interactions_per_user,
    l2_penalty,
)
from recsys.models.contrast import fast_score_dtype, info_nce
from recsys.models.learned_hop import learned_hop

# λ₂ = 160 / (training interactions per user), see models.base.interactions_per_user. Chosen on
# validation: ml-100k (43 per user) peaked at λ₂ = 4 (test Recall@20 0.335; 1: 0.311, 16 and 32
# collapse below MostPop); yelp-sslrec (4.3 per user) at 20-50 (test 0.085; 12: valid 0.081).
REG_TIMES_DENSITY = 160.0

# d where the sampled softmax is derived (models.base.SOFTMAX_FROM_DENSITY; 32, the paper's d,
# under BPR). Validation Recall@20, d 64 against 32, one thread: gowalla (chosen on it) 0.1989
# after 3 epochs against 0.1887 after 3 and a plateau of 0.1919 at 10, the epoch 1.6x longer;
# ml-100k 0.3603 against 0.3500; ml-100k with every rating, which chose nothing, 0.3406 against
# 0.3440 (test 0.3270 against 0.3211). The sample, under BPR, lost (0.7253 against 0.7362) and
# yelp-sslrec gained nothing at 1.6x the cost (docs/dccf-tuning.md). gowalla's test split, which
# favours popular items, stayed where d 32 had it (15-minute cells: 0.1564 against 0.1572).
SOFTMAX_DIM = 64


@dataclass
class DCCFParams:
    dim: int = field(
        default=32,
        metadata={
            "help": f"embedding size d [{SOFTMAX_DIM} where the softmax is derived]",
            "min": 1,
            "max": 4096,
        },
    )
    layers: int = field(default=2, metadata={"help": "propagation layers L", "min": 1, "max": 10})
    intents: int = field(
        default=128,
        metadata={
            "help": "intent prototypes K per side",
            "aliases": ("n_intents",),
            "min": 1,
            "max": 4096,
        },
    )
    reg: float = field(
        default=4.0,
        metadata={
            "help": "λ₂ on ½‖E⁽⁰⁾_batch‖² / batch size (LightGCN's form; the paper's is a sum) "
            f"[{REG_TIMES_DENSITY:g} / training interactions per user]",
            "aliases": ("emb_reg",),
            "min": 0,
        },
    )
    prototype_reg: float = field(
        default=5e-3,
        metadata={"help": "λ₃ on ‖C_u‖² + ‖C_i‖²", "aliases": ("cen_reg",), "min": 0},
    )
    ssl_weight: float = field(
        default=0.01,
        metadata={"help": "λ₁ on the InfoNCE terms", "aliases": ("ssl_reg",), "min": 0},
    )
    temperature: float = field(
        default=0.2,
        # float32 range of exp(-2/τ): below this an InfoNCE row sum can underflow to 0
        metadata={"help": "InfoNCE temperature τ", "aliases": ("temp",), "min": 0.025},
    )
    contrast_nodes: int = field(
        default=4096,
        metadata={
            "help": "at most this many of the batch's distinct users (and items) in the "
            "InfoNCE, drawn at random beyond it; 0 for all",
            "min": 0,
        },
    )


def intent_aggregate(
    x: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[intent]: (softmax(x C) Cᵀ, softmax(x C)) for x (n, d) and C (d, K)."""
    weights = torch.softmax(x @ prototypes, dim=1)
    return weights @ prototypes.T, weights


class DCCF(EmbeddingRecommender):
    name = "dccf"
    propagates = True
    Params = DCCFParams
    train_defaults = {"batch_size": 4096, "lr": 1e-3}
    search_space = {
        **RANKING_SEARCH,
        "lr": Search(1e-3, 1e-2, log=True),
        "reg": Search(0.3, 300.0, log=True),
        "ssl_weight": Search(1e-3, 0.3, log=True),
        "temperature": Search(0.1, 1.0, log=True),
    }

    @classmethod
    def data_defaults(cls, train) -> dict:
        derived = super().data_defaults(train)
        return {
            **derived,
            "reg": REG_TIMES_DENSITY / interactions_per_user(train),
            **({"dim": SOFTMAX_DIM} if derived["loss"] == "softmax" else {}),
        }

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Xavier-normal for E⁽⁰⁾ and C, as the reference code. Each layer adds four views to
        E⁽ˡ⁻¹⁾, so the final embeddings are ~(1 + 4)ᴸ times the ego ones: from N(0, 0.1²) the
        BPR scores saturate in the first steps (valid Recall@20 0.019 after one yelp epoch)."""
        dim, n_intents = self.params.dim, self.params.intents
        self.user_intents = nn.Parameter(torch.empty(dim, n_intents))
        self.item_intents = nn.Parameter(torch.empty(dim, n_intents))
        for w in (self.user_emb, self.item_emb, self.user_intents, self.item_intents):
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator) * (2.0 / sum(w.shape)) ** 0.5)

    def propagate(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor, list]:
        """[graph]-[layer]: final users (n_users, d), items (n_items, d) and, per layer, a dict with
        the layer input E⁽ˡ⁻¹⁾ ("ego"), and Z, R, H, P, each a (users, items) pair."""
        users, items = self.user_emb, self.item_emb
        sum_users, sum_items, layers = users, items, []
        for _ in range(self.params.layers):
            z = propagate(graph, users, items)
            r = (
                intent_aggregate(users, self.user_intents)[0],
                intent_aggregate(items, self.item_intents)[0],
            )
            h = learned_hop(graph, *z, users, items)
            p = learned_hop(graph, *r, users, items)
            layers.append({"ego": (users, items), "z": z, "r": r, "h": h, "p": p})
            users = users + z[0] + r[0] + h[0] + p[0]
            items = items + z[1] + r[1] + h[1] + p[1]
            sum_users, sum_items = sum_users + users, sum_items + items
        return sum_users, sum_items, layers

    def final_embeddings(self, graph):
        return self.propagate(graph)[:2]

    def loss_terms(self, batch: Batch, graph):
        users, items, layers = self.propagate(graph)
        u, p, n = batch.rows(users, items)
        ego = batch.rows(self.user_emb, self.item_emb)
        ssl = users.new_zeros(())
        score_dtype = fast_score_dtype(users)
        for side, nodes in ((0, batch.users), (1, batch.pos_items)):
            idx = self.contrast_subset(torch.unique(nodes))
            for layer in layers:
                rows = [layer[v][side].index_select(0, idx) for v in "zrhp"]  # see Batch.rows
                anchor = F.normalize(rows[0], dim=1)
                views = F.normalize(torch.stack(rows[1:]), dim=2)
                ssl = ssl + info_nce(
                    anchor, views, views, self.params.temperature, score_dtype=score_dtype
                )
        return {
            **self.ranking(u, p, n),
            "ssl": self.params.ssl_weight * ssl,
            "reg": self.params.reg * l2_penalty(*ego),
            "prototype_reg": self.params.prototype_reg
            * (self.user_intents.pow(2).sum() + self.item_intents.pow(2).sum()),
        }

    def contrast_subset(self, nodes: torch.Tensor) -> torch.Tensor:
        """At most `contrast_nodes` of `nodes`, uniformly. The InfoNCE costs the square of its
        nodes, and --max-steps grows the batch with the log: a 16M log's batch of 115k holds
        about 100k distinct users. 4096 covers every batch of DCCF's default 4096 interactions
        (ml-100k, yelp-sslrec, the sample train exactly as without it). On gowalla (batches of
        7,297 under --max-steps) it made the epoch 1.37x faster than 8192 with the same
        validation per epoch. In 15 min, 8192 had 6 epochs (valid Recall@20 0.1651, test
        0.1522) and 4096 had 8 (best 0.1650 at epoch 6, test 0.1525), one thread each, side by
        side."""
        cap = self.params.contrast_nodes
        if not cap or nodes.numel() <= cap:
            return nodes
        pick = torch.randperm(nodes.numel(), generator=self.generator)[:cap]
        return nodes[pick.to(nodes.device)]

    def user_intent_weights(self, graph: Graph) -> torch.Tensor:
        """(n_users, K): a user's softmax weight on each prototype, averaged over the layers."""
        layers = self.propagate(graph)[2]
        return sum(
            intent_aggregate(layer["ego"][0], self.user_intents)[1] for layer in layers
        ) / len(layers)

    def explain(
        self, graph: Graph, user_idx: torch.Tensor, items: torch.Tensor, top: int = 3
    ) -> list[list[dict]]:
        """Per user and recommended item, the user's top intents and their share of the score.

        The final user embedding is e_u = E_u⁽⁰⁾ + Σ_l (Z + R + H + P)_u⁽ˡ⁾ + later layers' echoes
        of them. Its direct intent-aware part, Σ_l R_u⁽ˡ⁾ = Σ_k (Σ_l p_k⁽ˡ⁾(u)) c_k, splits
        exactly over prototypes; "contribution" of intent k is (Σ_l p_k⁽ˡ⁾(u)) c_kᵀ e_i, and
        "weight" is p_k averaged over layers. Summed over all K they give `intent_score`,
        which is only part of `score` = e_uᵀ e_i: the rest comes from the ego, graph and
        augmented views (and R⁽ˡ⁾ carried through later layers).

        Args:
            graph: the training graph.
            user_idx: (B,) int64 dense user indices.
            items: (B, k) int64 dense item indices recommended to them.
            top: intents listed per item, by weight.

        Returns:
            B lists of k dicts: {"score", "intent_score", "intents": [{"intent", "weight",
            "contribution"}, ...]}.
        """
        users, item_emb, _ = self.propagate(graph)
        user_idx, items = user_idx.to(graph.device), items.to(graph.device)
        weights = self.user_intent_weights(graph)[user_idx]  # (B, K)
        e_items = item_emb[items]  # (B, k, d)
        contributions = self.params.layers * weights[:, None, :] * (e_items @ self.user_intents)
        scores = (users[user_idx][:, None, :] * e_items).sum(-1)
        best = weights.topk(min(top, weights.shape[1]), dim=1)
        out = []
        for b in range(len(user_idx)):
            chosen = [(int(k), float(w)) for k, w in zip(best.indices[b], best.values[b])]
            out.append(
                [
                    {
                        "score": float(scores[b, j]),
                        "intent_score": float(contributions[b, j].sum()),
                        "intents": [
                            {
                                "intent": k,
                                "weight": w,
                                "contribution": float(contributions[b, j, k]),
                            }
                            for k, w in chosen
                        ],
                    }
                    for j in range(items.shape[1])
                ]
            )
        return out
