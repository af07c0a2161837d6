import numpy as np
import pytest
import torch

from recsys import api
from recsys.data.dataset import Dataset
from recsys.evaluate import evaluate
from recsys.graph import normalized_adjacency
from recsys.models.baselines import ALS, ALSParams, BPRParams, ImplicitBPR
from recsys.train.config import resolve_config
from recsys.train.loop import build_model
from recsys.train.rundir import RunDir

ALS_FAST = {"dim": 16, "reg": 0.1, "alpha": 10.0, "iterations": 10}
BPR_FAST = {"dim": 16, "learning_rate": 0.05, "reg": 0.01, "iterations": 30}


def fitted(cls, params, ds: Dataset, seed: int = 0):
    graph = normalized_adjacency(ds.train, torch.device("cpu"))
    model = cls(ds.n_users, ds.n_items, params, graph, torch.Generator().manual_seed(seed))
    model.fit(ds.train)
    return model, graph


def test_als_factors_are_fitted_buffers_and_the_seed_repeats(synth_dataset):
    ds = Dataset.load(synth_dataset)
    a, graph = fitted(ALS, ALSParams(**ALS_FAST), ds)
    b, _ = fitted(ALS, ALSParams(**ALS_FAST), ds)
    users, items = a.final_embeddings(graph)
    assert users.shape == (ds.n_users, 16) and items.shape == (ds.n_items, 16)
    assert users.dtype == torch.float32 and users.abs().sum() > 0
    assert set(a.state_dict()) == {"user_factors", "item_factors"}
    assert not list(a.parameters()), "implicit fits the factors; the loop must not optimise them"
    torch.testing.assert_close(a.item_factors, b.item_factors, rtol=0, atol=0)


def test_bpr_factors_carry_implicit_item_bias_column(synth_dataset):
    ds = Dataset.load(synth_dataset)
    model, graph = fitted(ImplicitBPR, BPRParams(**BPR_FAST), ds)
    users, items = model.final_embeddings(graph)
    # implicit appends the item bias as one more column, with a constant 1 on the user side.
    assert users.shape == (ds.n_users, 17) and items.shape == (ds.n_items, 17)
    torch.testing.assert_close(users[:, -1], torch.ones(ds.n_users))
    assert items[:, -1].std() > 0


def test_paper_names_are_aliases_of_the_options():
    als = resolve_config("als", ("test", {"factors": 32, "regularization": 0.5, "iterations": 3}))
    assert (als.params.dim, als.params.reg, als.params.iterations) == (32, 0.5, 3)
    bpr = resolve_config("bpr", ("test", {"factors": 8, "learning_rate": 0.1, "lr": 0.5}))
    # `lr` stays the loop's Adam rate; implicit's SGD rate is its own key.
    assert (bpr.params.dim, bpr.params.learning_rate, bpr.train.lr) == (8, 0.1, 0.5)


@pytest.mark.parametrize(("model", "options"), [("als", ALS_FAST), ("bpr", BPR_FAST)])
def test_run_dir_round_trip_and_recommend_excludes_seen(synth_dataset, tmp_path, model, options):
    summary = api.train(synth_dataset, tmp_path / model, model, options, progress=False)
    run = RunDir(tmp_path / model)
    ds = Dataset.load(synth_dataset)
    # best.pt restores the factors exactly into a fresh (unfitted) model
    restored, graph, _ = build_model(
        resolve_config(model, ("test", options)), ds, torch.device("cpu")
    )
    restored.load_state_dict(run.load_torch(run.best))
    users, items = run.load_embeddings()
    np.testing.assert_array_equal(restored.final_embeddings(graph)[1].numpy(), items)
    assert (
        evaluate(users, items, ds.train, ds.test, (20,)).metrics["recall@20"]
        == summary["test"]["recall@20"]
    )

    served = api.TrainedModel.load(run.path)
    user_idx = np.arange(5)
    recs = served.recommend(list(ds.users.raw(user_idx)), k=10)
    scores = users[user_idx] @ items.T
    known = (ds.train + ds.valid).tocsr()  # served recommendations skip valid items too
    scores[known[user_idx].nonzero()] = -np.inf
    for u in user_idx:
        got = ds.items.index(
            recs.filter(recs["user_id"] == ds.users.raw(np.array([u]))[0])["item_id"]
        )
        assert not set(got) & set(known[u].indices), "a seen item was recommended"
        np.testing.assert_allclose(
            np.sort(scores[u][got])[::-1], np.sort(scores[u])[::-1][:10], rtol=1e-5
        )


def test_als_recovers_planted_intents_better_than_popularity(synth_dataset, tmp_path):
    pop = api.train(synth_dataset, tmp_path / "pop", "mostpop", {}, progress=False)
    als = api.train(synth_dataset, tmp_path / "als", "als", ALS_FAST, progress=False)
    assert als["test"]["recall@20"] > 1.5 * pop["test"]["recall@20"]
    assert als["test"]["coverage@20"] > pop["test"]["coverage@20"]
