"""DCCF's learned augmentation, [mask] and [aug] of recsys.models.dccf, as one graph operator.

    [mask]  α_ui = (cos(h_u, h_i) + 1) / 2 on every training edge
    [aug]   Ĝ = D_α⁻¹ M_α row-normalised both ways; one hop of E over Ĝ

`learned_hop(graph, h_users, h_items, users, items)` returns (D_u⁻¹ M_α items, D_i⁻¹ M_αᵀ users)
with gradients into h (the masks are learned end to end) and into E. Its backward is written
out on edges (see _LearnedHop): autograd through normalise-and-divide made ~20 extra passes
over (n, d) per view.
"""

from __future__ import annotations

import torch

from recsys.graph import Graph


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
