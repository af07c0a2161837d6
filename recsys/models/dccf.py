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
             distinct positive items, InfoNCE(a, b) = mean_n -log exp(ā_n·b̄_n/τ) / Σ_m exp(ā_n·b̄_m/τ)
             with x̄ = x/‖x‖ (the other distinct nodes of the batch are the negatives)
    [loss]   L = L_bpr + λ₁ L_ssl + λ₂ ‖E⁽⁰⁾_batch‖² + λ₃ (‖C_u‖² + ‖C_i‖²)

Symbols: Â → `graph.adj` (R̃, built once by recsys.graph); E⁽⁰⁾ → `user_emb`, `item_emb`;
C_u, C_i (d × K) → `user_intents`, `item_intents`; K → `intents`; L → `layers`;
α → `edge_mask`; Ĝ → `learned_hop`; τ → `temperature`; λ₁ → `ssl_weight`; λ₂ → `reg`;
λ₃ → `prototype_reg`.

Row normalisation of the bipartite learned graph: M_α is (n_users × n_items) with the mask on
every training edge, and the (U+I)² adjacency [[0, M_α], [M_αᵀ, 0]] is normalised by its rows,
so a user's row divides by its weighted user degree Σ_i α_ui and an item's row (a column of
M_α) by its weighted item degree Σ_u α_ui: per edge w = α_ui / Σ_{e' in row} α_e', a different
weight in each direction (nodes without edges get 0); `learned_hop` puts the two weights on
the edges and multiplies once each way. Gradients flow through α into Z⁽ˡ⁾ and R⁽ˡ⁾ (the
masks are learned end to end, as the paper's "learnable augmentation" and its reference code
do); its backward is written out on edges (see _LearnedHop).

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
    Batch,
    EmbeddingRecommender,
    Search,
    bpr_loss,
    interactions_per_user,
    l2_penalty,
)
from recsys.models.contrast import info_nce

# λ₂ = 160 / (training interactions per user), see models.base.interactions_per_user. Chosen on
# validation: ml-100k (43 per user) peaked at λ₂ = 4 (test Recall@20 0.335; 1: 0.311, 16 and 32
# collapse below MostPop); yelp-sslrec (4.3 per user) at 20-50 (test 0.085; 12: valid 0.081).
REG_TIMES_DENSITY = 160.0


@dataclass
class DCCFParams:
    dim: int = field(default=32, metadata={"help": "embedding size d", "min": 1, "max": 4096})
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


def intent_aggregate(
    x: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[intent]: (softmax(x C) Cᵀ, softmax(x C)) for x (n, d) and C (d, K)."""
    weights = torch.softmax(x @ prototypes, dim=1)
    return weights @ prototypes.T, weights


def edge_cosine(
    graph: Graph, h_users: torch.Tensor, h_items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos(h_u, h_i) per training edge, 1/‖h_users‖, 1/‖h_items‖, 1/(‖h_u‖‖h_i‖) per edge).

    A sampled product of the raw embeddings scaled per edge by the endpoints' inverse norms:
    edge-sized work instead of normalising every (n, d) row.
    """
    inv_user = h_users.norm(dim=1).clamp_min(1e-12).reciprocal()
    inv_item = h_items.norm(dim=1).clamp_min(1e-12).reciprocal()
    dot = torch.sparse.sampled_addmm(graph.adj, h_users, h_items.T, beta=0.0).values()
    scale = _on_edges(inv_user, graph.edge_user) * _on_edges(inv_item, graph.edge_item)
    return dot * scale, inv_user, inv_item, scale


def _on_edges(node_values: torch.Tensor, endpoint: torch.Tensor) -> torch.Tensor:
    """A per-node vector read at one endpoint of every edge (index_select: 3-4× x[idx] on CPU)."""
    return node_values.index_select(0, endpoint)


def edge_mask(graph: Graph, h_users: torch.Tensor, h_items: torch.Tensor) -> torch.Tensor:
    """[mask]: α_ui = (cos(h_u, h_i) + 1) / 2 in [0, 1] for every training edge, (nnz,)."""
    return _mask(edge_cosine(graph, h_users, h_items)[0])


def _mask(cos: torch.Tensor) -> torch.Tensor:
    # Rounding can put a cosine a hair outside [-1, 1]; a negative α would break the degrees.
    return ((cos + 1) / 2).clamp(0, 1)


class _LearnedHop(torch.autograd.Function):
    """[mask] and [aug] in one: α from (h_users, h_items), then one hop of (users, items) over
    the learned graph row-normalised both ways, (D_u⁻¹ M_α items, D_i⁻¹ M_αᵀ users).

    The row normalisation lives in the edge weights, w_user = α / deg_u(u) and
    w_item = α / deg_i(i), and backward is derived by hand on edges. Forward: one sampled
    product (the cosines) and two sparse products; backward: two sampled products (∂w) and
    four sparse products (∂E, ∂h), with edge-sized glue in between. Autograd through
    normalize and divide made ~20 extra passes over (n, d) per view. The clamp in α only
    absorbs rounding, so its gradient is taken as the identity; a node whose α are all 0 has
    no defined normalisation and gets no output and no gradient.
    """

    @staticmethod
    def forward(ctx, h_users, h_items, users, items, graph):
        eu, ei = graph.edge_user, graph.edge_item
        cos, inv_user, inv_item, edge_scale = edge_cosine(graph, h_users, h_items)
        alpha = _mask(cos)
        # 1/degree read at each edge's row, one per direction; kept for backward with w.
        inv_deg_user = _on_edges(_inverse(torch.zeros_like(inv_user).index_add_(0, eu, alpha)), eu)
        inv_deg_item = _on_edges(_inverse(torch.zeros_like(inv_item).index_add_(0, ei, alpha)), ei)
        w_user, w_item = alpha * inv_deg_user, alpha * inv_deg_item
        to_users = torch.sparse.mm(graph.user_major(w_user), items)
        to_items = torch.sparse.mm(graph.item_major(w_item), users)
        ctx.save_for_backward(
            h_users, h_items, users, items, cos, edge_scale, inv_user, inv_item,
            inv_deg_user, inv_deg_item, w_user, w_item,
        )  # fmt: skip
        ctx.graph = graph
        return to_users, to_items

    @staticmethod
    def backward(ctx, grad_users, grad_items):
        (
            h_users, h_items, users, items, cos, edge_scale, inv_user, inv_item,
            inv_deg_user, inv_deg_item, w_user, w_item,
        ) = ctx.saved_tensors  # fmt: skip
        graph = ctx.graph
        eu, ei = graph.edge_user, graph.edge_item
        g_users = g_items = g_h_users = g_h_items = None
        if ctx.needs_input_grad[2]:
            g_users = torch.sparse.mm(graph.user_major(w_item), grad_items)
        if ctx.needs_input_grad[3]:
            g_items = torch.sparse.mm(graph.item_major(w_user), grad_users)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # ∂L/∂w per edge, then through w = α / Σ_row α: ∂α_e = (∂w_e - Σ_row ∂w·w) / deg_row.
            g_w_user = torch.sparse.sampled_addmm(graph.adj, grad_users, items.T, beta=0.0)
            g_w_item = torch.sparse.sampled_addmm(graph.adj, users, grad_items.T, beta=0.0)
            g_w_user, g_w_item = g_w_user.values(), g_w_item.values()
            row_user = torch.zeros_like(inv_user).index_add_(0, eu, g_w_user * w_user)
            row_item = torch.zeros_like(inv_item).index_add_(0, ei, g_w_item * w_item)
            g_cos = 0.5 * (
                (g_w_user - _on_edges(row_user, eu)) * inv_deg_user
                + (g_w_item - _on_edges(row_item, ei)) * inv_deg_item
            )
            # cos = (h_u·h_i)·a_u·a_i with a = 1/‖h‖ and ∂a_u/∂h_u = -a_u³ h_u: a tangential part
            # through the dot product and a radial part -(Σ_e ∂cos_e·cos_e)·a_u²·h_u.
            g_dot = g_cos * edge_scale
            g_cos_by_cos = g_cos * cos
            radial_user = torch.zeros_like(inv_user).index_add_(0, eu, g_cos_by_cos) * inv_user**2
            radial_item = torch.zeros_like(inv_item).index_add_(0, ei, g_cos_by_cos) * inv_item**2
            g_h_users = torch.sparse.mm(graph.user_major(g_dot), h_items).sub_(
                radial_user[:, None] * h_users
            )
            g_h_items = torch.sparse.mm(graph.item_major(g_dot), h_users).sub_(
                radial_item[:, None] * h_items
            )
        return g_h_users, g_h_items, g_users, g_items, None


def _inverse(degree: torch.Tensor) -> torch.Tensor:
    """1/degree, and 0 where the degree is 0 (no edges, or every α of the node is 0)."""
    return torch.where(degree > 0, degree.reciprocal(), 0.0)


def learned_hop(
    graph: Graph,
    h_users: torch.Tensor,
    h_items: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[mask]+[aug]: α from h = (h_users, h_items), one hop of E = (users, items) over Ĝ_h."""
    return _LearnedHop.apply(h_users, h_items, users, items, graph)


class DCCF(EmbeddingRecommender):
    name = "dccf"
    propagates = True
    Params = DCCFParams
    train_defaults = {"batch_size": 4096, "lr": 1e-3}
    search_space = {
        "lr": Search(1e-3, 1e-2, log=True),
        "reg": Search(0.3, 300.0, log=True),
        "ssl_weight": Search(1e-3, 0.3, log=True),
        "temperature": Search(0.1, 1.0, log=True),
    }

    @classmethod
    def data_defaults(cls, train) -> dict:
        return {"reg": REG_TIMES_DENSITY / interactions_per_user(train)}

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
        for side, idx in ((0, torch.unique(batch.users)), (1, torch.unique(batch.pos_items))):
            for layer in layers:
                rows = [layer[v][side].index_select(0, idx) for v in "zrhp"]  # see Batch.rows
                anchor = F.normalize(rows[0], dim=1)
                views = F.normalize(torch.stack(rows[1:]), dim=2)
                ssl = ssl + info_nce(anchor, views, views, self.params.temperature)
        return {
            "bpr": bpr_loss(u, p, n),
            "ssl": self.params.ssl_weight * ssl,
            "reg": self.params.reg * l2_penalty(*ego),
            "prototype_reg": self.params.prototype_reg
            * (self.user_intents.pow(2).sum() + self.item_intents.pow(2).sum()),
        }

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
