import numpy as np
import scipy.sparse as sp
import torch

from recsys.graph import drop_edges, normalized_adjacency, propagate, truncated_svd

# 3 users × 2 items: u0-{i0, i1}, u1-{i0}, u2-{i1}; degrees u: 2,1,1  i: 2,2
R = sp.csr_matrix(np.array([[1, 1], [1, 0], [0, 1]], dtype=np.float32))


def test_normalized_adjacency_by_hand():
    g = normalized_adjacency(R)
    expected = np.array(
        [[1 / np.sqrt(4), 1 / np.sqrt(4)], [1 / np.sqrt(2), 0], [0, 1 / np.sqrt(2)]]
    )
    np.testing.assert_allclose(g.adj.to_dense().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(g.adj_t.to_dense().numpy(), expected.T, rtol=1e-6)


def test_empty_rows_and_columns_have_no_entries():
    r = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=np.float32))
    dense = normalized_adjacency(r).adj.to_dense().numpy()
    assert np.isfinite(dense).all()
    assert dense[1].sum() == 0 and dense[:, 2].sum() == 0


def test_propagate_matches_dense_product_and_gradients():
    rng = np.random.default_rng(0)
    r = sp.random(30, 20, density=0.15, random_state=1, format="csr")
    r.data[:] = 1
    g = normalized_adjacency(r)
    dense = torch.tensor(g.adj.to_dense().numpy(), requires_grad=True)
    ux = torch.tensor(rng.normal(size=(30, 4)), dtype=torch.float32, requires_grad=True)
    ix = torch.tensor(rng.normal(size=(20, 4)), dtype=torch.float32, requires_grad=True)
    values = g.values.clone().requires_grad_(True)
    to_u, to_i = propagate(g.with_values(values), ux, ix)
    (to_u.pow(2).sum() + 3 * to_i.sum()).backward()
    ux2, ix2 = ux.detach().clone().requires_grad_(True), ix.detach().clone().requires_grad_(True)
    ref_u, ref_i = dense @ ix2, dense.T @ ux2
    (ref_u.pow(2).sum() + 3 * ref_i.sum()).backward()
    torch.testing.assert_close(to_u, ref_u)
    torch.testing.assert_close(to_i, ref_i)
    torch.testing.assert_close(ix.grad, ix2.grad)
    torch.testing.assert_close(ux.grad, ux2.grad)
    torch.testing.assert_close(values.grad, dense.grad[g.edge_user, g.edge_item])


def test_drop_edges_keeps_a_consistent_subgraph():
    r = sp.random(40, 30, density=0.2, random_state=2, format="csr")
    r.data[:] = 1
    g = normalized_adjacency(r)
    assert drop_edges(g, 0.0, torch.Generator().manual_seed(0)) is g
    a = drop_edges(g, 0.5, torch.Generator().manual_seed(3))
    b = drop_edges(g, 0.5, torch.Generator().manual_seed(3))
    assert 0.35 * g.n_edges < a.n_edges < 0.65 * g.n_edges
    torch.testing.assert_close(a.adj.to_dense(), b.adj.to_dense())
    torch.testing.assert_close(a.adj.to_dense(), a.adj_t.to_dense().T)
    full, kept = g.adj.to_dense(), a.adj.to_dense()
    assert torch.equal(kept[kept != 0], full[kept != 0])  # kept edges keep their weights


def test_truncated_svd_recovers_a_low_rank_spectrum():
    # Four dense user-item blocks: a spectrum with four clear leading singular values.
    rng = np.random.default_rng(0)
    blocks = np.kron(np.eye(4), np.ones((15, 10))) * (rng.random((60, 40)) < 0.9)
    r = sp.csr_matrix(blocks.astype(np.float32))
    g = normalized_adjacency(r)
    u, s, v = truncated_svd(g, 4, torch.Generator().manual_seed(0), n_iter=8)
    exact = np.linalg.svd(g.adj.to_dense().numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(s.numpy(), exact, rtol=1e-3)
    u2, s2, _ = truncated_svd(g, 4, torch.Generator().manual_seed(0), n_iter=8)
    assert torch.equal(s, s2) and torch.equal(u, u2)
