"""DCCF: masks, learned adjacencies, intent aggregation, planted intents, determinism (its
InfoNCE is recsys.models.contrast, tested in test_contrast.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recsys.data.synth import synth_log
from recsys.graph import normalized_adjacency
from recsys.models.base import Batch
from recsys.models.dccf import DCCF, DCCFParams, intent_aggregate
from recsys.models.learned_hop import edge_mask, learned_hop
from recsys.train.sampler import BPRSampler


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These graphs are tiny: on a busy 2-core machine OpenMP hand-offs cost more than the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = sp.csr_matrix(
    np.array(
        [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1], [0, 0, 1, 0]], dtype=np.float32
    )
)


def tiny_model(seed: int = 0, **params) -> tuple[DCCF, object]:
    graph = normalized_adjacency(TINY)
    return DCCF(
        *TINY.shape,
        DCCFParams(dim=4, intents=3, **params),
        graph,
        torch.Generator().manual_seed(seed),
    ), graph


def test_edge_mask_in_unit_interval_and_matches_cosine():
    graph = normalized_adjacency(TINY)
    h_users, h_items = torch.randn(5, 4), torch.randn(4, 4)
    h_items[0] = h_users[0]  # cos = 1 -> 1
    h_items[1] = -h_users[0] * 2  # cos = -1 -> 0
    alpha = edge_mask(graph, h_users, h_items)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    cos = F.cosine_similarity(h_users[graph.edge_user], h_items[graph.edge_item], dim=1)
    torch.testing.assert_close(alpha, (cos + 1) / 2)
    assert alpha[0] == pytest.approx(1.0) and alpha[1] == pytest.approx(0.0, abs=1e-6)


def dense_learned_hop(graph, h_users, h_items, x_users, x_items):
    """The learned hop by the book: gathered cosines, a dense M_α, explicit row normalisation."""
    cos = F.cosine_similarity(h_users[graph.edge_user], h_items[graph.edge_item], dim=1)
    m = torch.zeros(graph.n_users, graph.n_items, dtype=h_users.dtype)
    m = m.index_put((graph.edge_user, graph.edge_item), (cos + 1) / 2)
    row_u = m / m.sum(1, keepdim=True).clamp_min(1e-12)
    row_i = m.T / m.T.sum(1, keepdim=True).clamp_min(1e-12)
    return row_u @ x_items, row_i @ x_users


def test_learned_adjacency_is_row_stochastic_both_ways():
    graph = normalized_adjacency(TINY)
    h_users, h_items = torch.randn(5, 4), torch.randn(4, 4)
    to_users, to_items = learned_hop(graph, h_users, h_items, torch.ones(5, 1), torch.ones(4, 1))
    has_edge_u = torch.from_numpy(TINY.getnnz(1) > 0)
    has_edge_i = torch.from_numpy(TINY.getnnz(0) > 0)
    torch.testing.assert_close(to_users[has_edge_u, 0], torch.ones(int(has_edge_u.sum())))
    torch.testing.assert_close(to_items[has_edge_i, 0], torch.ones(int(has_edge_i.sum())))
    assert (to_users[~has_edge_u] == 0).all()  # user 2 has no edges


def test_learned_hop_matches_dense_reference_including_gradient():
    graph = normalized_adjacency(TINY)
    graph = graph.with_values(graph.values.double())  # float64: exact comparison of gradients
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(n, 3, generator=gen, dtype=torch.float64) for n in (5, 4, 5, 4)]
    upstream = [torch.randn(n, 3, generator=gen, dtype=torch.float64) for n in (5, 4)]
    results = []
    for fn in (learned_hop, dense_learned_hop):
        leaves = [x.clone().requires_grad_() for x in inputs]
        outs = fn(graph, *leaves)
        sum((o * g).sum() for o, g in zip(outs, upstream)).backward()
        results.append((*(o.detach() for o in outs), *(x.grad for x in leaves)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_node_whose_mask_is_all_zero_gets_no_output_and_finite_gradients():
    graph = normalized_adjacency(TINY)
    h_users, h_items = torch.randn(5, 4), torch.randn(4, 4)
    # User 4's only edge is to item 2: cos = -1 exactly, α = 0, weighted degree 0.
    h_users[4], h_items[2] = torch.tensor([2.0, 0, 0, 0]), torch.tensor([-1.0, 0, 0, 0])
    leaves = [
        x.clone().requires_grad_() for x in (h_users, h_items, torch.randn(5, 3), torch.randn(4, 3))
    ]
    to_users, to_items = learned_hop(graph, *leaves)
    assert (to_users[4] == 0).all() and to_users[0].abs().sum() > 0
    (to_users.sum() + to_items.pow(2).sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    assert leaves[0].grad.abs().max() < 1e3


def test_intent_aggregation_equals_dense_reference():
    x, c = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    out, weights = intent_aggregate(x, c)
    logits = np.asarray(x) @ np.asarray(c)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.stack([sum(p[n, k] * np.asarray(c)[:, k] for k in range(3)) for n in range(6)])
    np.testing.assert_allclose(weights.numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI = 2 I(a; b) / (H(a) + H(b)) of two labelings."""
    joint = sp.coo_matrix((np.ones(len(a)), (a, b))).toarray() / len(a)
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    entropy = -sum((p[p > 0] * np.log(p[p > 0])).sum() for p in (pa, pb))
    return 2 * mi / entropy


def train_steps(
    model: DCCF, graph, train: sp.csr_matrix, epochs: int, batch_size: int, lr: float, seed: int = 0
) -> None:
    sampler = BPRSampler(train, np.random.default_rng(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for users, pos, neg in sampler.epoch(batch_size):
            loss = sum(
                model.loss_terms(Batch(*map(torch.from_numpy, (users, pos, neg))), graph).values()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def test_learned_user_intents_recover_planted_ones():
    """NMI(argmax-intent of each user, planted intent) with K = the planted 8 intents, against
    the same assignment shuffled over users (chance level, same cluster sizes). Measured: 0.43
    against 0.03 after 8 epochs (0.11 without the InfoNCE terms, which align the prototypes)."""
    synth = synth_log(n_users=600, n_items=300, n_intents=8, seed=3)
    user_idx = synth.log["user_id"].str.slice(1).cast(int).to_numpy()
    item_idx = synth.log["item_id"].str.slice(1).cast(int).to_numpy()
    train = sp.csr_matrix(
        (np.ones(len(user_idx), np.float32), (user_idx, item_idx)), shape=(600, 300)
    )
    graph = normalized_adjacency(train)
    model = DCCF(600, 300, DCCFParams(intents=8), graph, torch.Generator().manual_seed(0))
    train_steps(model, graph, train, epochs=8, batch_size=1024, lr=1e-2)
    model.eval()
    with torch.no_grad():
        assigned = model.user_intent_weights(graph).argmax(1).numpy()
    nmi = normalized_mutual_information(assigned, synth.user_intent)
    shuffled = normalized_mutual_information(
        np.random.default_rng(0).permutation(assigned), synth.user_intent
    )
    assert nmi > 0.3 and shuffled < 0.05, (nmi, shuffled)


def test_fixed_seed_cpu_runs_repeat_exactly():
    states = []
    for _ in range(2):
        model, graph = tiny_model(seed=5)
        train_steps(model, graph, TINY, epochs=3, batch_size=4, lr=1e-2, seed=5)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_loss_terms_are_finite_and_every_parameter_learns():
    model, graph = tiny_model()
    batch = Batch(
        torch.tensor([0, 1, 3, 3]), torch.tensor([0, 2, 3, 0]), torch.tensor([3, 0, 1, 1])
    )
    terms = model.loss_terms(batch, graph)
    assert set(terms) == {"bpr", "ssl", "reg", "prototype_reg"}
    sum(terms.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_explain_is_well_formed_and_contributions_add_up():
    model, graph = tiny_model()
    model.eval()
    user_idx, items = torch.tensor([0, 3]), torch.tensor([[2, 3], [1, 0]])
    with torch.no_grad():
        notes = model.explain(graph, user_idx, items, top=2)
        users, item_emb = model.final_embeddings(graph)
        weights = model.user_intent_weights(graph)
    assert len(notes) == 2 and all(len(row) == 2 for row in notes)
    for b, row in enumerate(notes):
        for j, note in enumerate(row):
            assert note["score"] == pytest.approx(
                float(users[user_idx[b]] @ item_emb[items[b, j]]), rel=1e-5
            )
            ranked = [i["intent"] for i in note["intents"]]
            assert ranked == weights[user_idx[b]].argsort(descending=True)[:2].tolist()
            for entry in note["intents"]:
                k = entry["intent"]
                assert entry["weight"] == pytest.approx(float(weights[user_idx[b], k]), rel=1e-5)
                expected = (
                    model.params.layers
                    * entry["weight"]
                    * float(model.user_intents[:, k].detach() @ item_emb[items[b, j]])
                )
                assert entry["contribution"] == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_contrast_runs_over_at_most_contrast_nodes_of_the_batch(monkeypatch):
    import recsys.models.dccf as dccf

    anchors = []
    real = dccf.info_nce
    monkeypatch.setattr(
        dccf, "info_nce", lambda a, *rest, **kw: anchors.append(len(a)) or real(a, *rest, **kw)
    )
    batch = Batch(  # distinct users 0, 1, 3, 4; distinct positive items 0, 2, 3
        torch.tensor([0, 1, 3, 3, 4]), torch.tensor([0, 2, 3, 0, 2]), torch.tensor([3, 0, 1, 1, 0])
    )
    full, graph = tiny_model(contrast_nodes=0)
    everything = full.loss_terms(batch, graph)["ssl"]
    assert anchors == [4, 4, 3, 3]  # users, then items, at each of the 2 layers
    anchors.clear()
    roomy, _ = tiny_model(contrast_nodes=4)  # every distinct node fits: the same loss
    assert roomy.loss_terms(batch, graph)["ssl"] == everything
    assert anchors == [4, 4, 3, 3]
    anchors.clear()
    capped, _ = tiny_model(contrast_nodes=2)
    draws = capped.generator.get_state()
    assert capped.loss_terms(batch, graph)["ssl"] != everything
    assert anchors == [2, 2, 2, 2]
    assert not torch.equal(capped.generator.get_state(), draws)  # drawn from the run's generator
