import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recsys import api
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.evaluate import evaluate
from recsys.graph import normalized_adjacency
from recsys.models.lightgcl import LightGCL, LightGCLParams
from recsys.train.config import resolve_config
from recsys.train.loop import build_model
from recsys.train.rundir import RunDir

FAST = {"epochs": 4, "lr": 0.01, "batch_size": 256, "dim": 16}


def tiny_model(**params) -> tuple[LightGCL, object]:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((7, 6)) < 0.5).astype(np.float32))
    graph = normalized_adjacency(train)
    model = LightGCL(7, 6, LightGCLParams(dim=4, **params), graph, torch.Generator().manual_seed(0))
    return model, graph


def test_svd_view_is_the_rank_q_product_applied_to_each_layer():
    # Three user-item communities and three cross edges: singular values 1, .92, .92 | .17, ...
    # A gap this wide makes the randomised rank-3 SVD exact to ~1e-6.
    r = np.kron(np.eye(3), np.ones((4, 3)))
    r[0, 5] = r[6, 8] = r[11, 0] = 1
    graph = normalized_adjacency(sp.csr_matrix(r))
    model = LightGCL(
        12, 9, LightGCLParams(dim=4, svd_rank=3), graph, torch.Generator().manual_seed(0)
    )
    adj = graph.adj.to_dense().double()
    u, s, vh = torch.linalg.svd(adj)
    low_rank = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]  # the dense reference the model never forms
    assert (low_rank - adj).abs().max() > 0.1  # so the two views below really differ
    users, items = model.user_emb.detach().double(), model.item_emb.detach().double()
    main_u, main_i, svd_u, svd_i = users, items, users, items
    for _ in range(2):
        svd_u, svd_i = svd_u + low_rank @ items, svd_i + low_rank.T @ users
        users, items = adj @ items, adj.T @ users
        main_u, main_i = main_u + users, main_i + items
    model.train()
    got_u, got_i, proj_u, proj_i = model.views(graph)
    got_svd_u = model.svd_view(model.user_emb, model.svd_us, proj_u, torch.arange(12))
    got_svd_i = model.svd_view(model.item_emb, model.svd_vs, proj_i, torch.arange(9))
    for g, want in zip((got_u, got_i, got_svd_u, got_svd_i), (main_u, main_i, svd_u, svd_i)):
        torch.testing.assert_close(g.detach().double(), want, atol=1e-5, rtol=1e-5)


def naive_info_nce(svd_view, main_view, nodes, temperature, cands=None):
    g = F.normalize(svd_view[nodes], dim=1)
    e = F.normalize(main_view, dim=1)
    negatives = e if cands is None else e[cands]
    logits = g @ negatives.T / temperature
    positive = (g * e[nodes]).sum(1) / temperature
    return (torch.logsumexp(logits, 1) - positive).mean()


@pytest.mark.parametrize("negatives", ["all", "batch", "sampled"])
def test_contrast_is_the_naive_mean_info_nce_over_batch_entries(negatives):
    # The model's side of recsys.models.contrast (tested there): cosine rows, distinct
    # anchors weighted by multiplicity, and the candidates of each mode.
    model, _ = tiny_model(negatives=negatives, num_negatives=5)
    gen = torch.Generator().manual_seed(3)
    main, ego = (torch.randn(7, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    factor = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    projection = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    nodes = torch.tensor([2, 2, 2, 6, 4, 6, 0])
    state = model.generator.get_state()
    leaves = [x.clone().requires_grad_() for x in (main, ego)]
    loss, rows = model.contrast(leaves[0], leaves[1], factor, projection, nodes)
    loss.backward()
    model.generator.set_state(state)
    cands = {
        "all": None,
        "batch": torch.unique(nodes),
        "sampled": torch.randint(0, 7, (5,), generator=model.generator),
    }[negatives]
    want = [x.clone().requires_grad_() for x in (main, ego)]
    naive = naive_info_nce(want[1] + factor @ projection, want[0], nodes, 0.2, cands)
    naive.backward()
    torch.testing.assert_close(rows, leaves[0][nodes])
    torch.testing.assert_close(loss, naive)
    for got, expected in zip(leaves, want):
        torch.testing.assert_close(got.grad, expected.grad)


def test_svd_factors_stay_out_of_checkpoints_and_are_recomputed_identically():
    model, graph = tiny_model()
    state = model.state_dict()
    assert set(state) == {"user_emb", "item_emb"}
    again, _ = tiny_model()
    torch.testing.assert_close(again.svd_us, model.svd_us, rtol=0, atol=0)


def test_unknown_negatives_mode_is_a_config_error():
    with pytest.raises(
        ConfigError, match="'negatives' must be one of all, batch, sampled, got 'some'"
    ):
        resolve_config("lightgcl", ("cli", {"negatives": "some"}))


def test_paper_names_are_aliases():
    config = resolve_config(
        "lightgcl", ("cli", {"lambda1": 0.1, "lambda2": 1e-5, "temp": 0.5, "q": 3})
    )
    p = config.params
    assert (p.cl_weight, p.weight_decay, p.temperature, p.svd_rank) == (0.1, 1e-5, 0.5, 3)
    assert (config.train.batch_size, config.train.lr) == (4096, 5e-3)


@pytest.mark.parametrize("negatives", ["all", "batch", "sampled"])
def test_training_beats_the_untrained_model(synth_dataset, tmp_path, negatives):
    ds = Dataset.load(synth_dataset)
    untrained, graph, _ = build_model(
        resolve_config("lightgcl", ("test", {"dim": 16})), ds, torch.device("cpu")
    )
    with torch.no_grad():
        before = evaluate(*untrained.final_embeddings(graph), ds.train, ds.valid, (20,)).metrics[
            "recall@20"
        ]
    options = {**FAST, "negatives": negatives, "num_negatives": 64}
    summary = api.train(synth_dataset, tmp_path / negatives, "lightgcl", options, progress=False)
    assert summary["valid"]["recall@20"] > before + 0.1


def test_same_seed_repeats_exactly_on_cpu(synth_dataset, tmp_path):
    options = {**FAST, "epochs": 2, "dropout": 0.1, "negatives": "sampled", "num_negatives": 32}
    a = api.train(synth_dataset, tmp_path / "a", "lightgcl", options, progress=False)
    b = api.train(synth_dataset, tmp_path / "b", "lightgcl", options, progress=False)
    assert a["test"] == b["test"]
    losses = [
        [(r["bpr"], r["cl"], r["decay"]) for r in RunDir(tmp_path / run).read_metrics()]
        for run in "ab"
    ]
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(
        RunDir(tmp_path / "a").load_embeddings()[0], RunDir(tmp_path / "b").load_embeddings()[0]
    )


def test_weight_decay_default_follows_size_and_density():
    from recsys.models.lightgcl import decay_for

    # 1,000 users × 1,000 items, 20,000 interactions: n 2,000, ρ 20 → 30 / (400 · 2,000)
    train = sp.random(1000, 1000, density=0.02, format="csr", random_state=0)
    assert decay_for(train) == pytest.approx(3.75e-5)
    # twice the rows at the same density per node: half the decay per row (a mean over rows)
    assert decay_for(sp.block_diag([train, train], format="csr")) == pytest.approx(1.875e-5)
    assert decay_for(train, softmax=True) == pytest.approx(3.75e-4)
    assert decay_for(sp.identity(4, format="csr")) == 1e-3  # clamped to the search range
