import json

import numpy as np
import pytest
import torch

from recsys import api
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, RunError
from recsys.evaluate import evaluate
from recsys.train.config import read_config_file, resolve_config
from recsys.train.loop import build_model, monitored_users
from recsys.train.rundir import RunDir

FAST = {"epochs": 4, "lr": 0.01, "batch_size": 256, "dim": 16}


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_training_beats_the_untrained_model(synth_dataset, tmp_path, model):
    ds = Dataset.load(synth_dataset)
    config = resolve_config(model, ("test", {"dim": 16}))
    untrained, graph, _ = build_model(config, ds, torch.device("cpu"))
    with torch.no_grad():
        before = evaluate(*untrained.final_embeddings(graph), ds.train, ds.valid, (20,)).metrics[
            "recall@20"
        ]
    summary = api.train(synth_dataset, tmp_path / model, model, FAST, progress=False)
    assert summary["valid"]["recall@20"] > before + 0.1


def test_same_seed_same_metrics_and_different_seed_differs(synth_dataset, tmp_path):
    a = api.train(synth_dataset, tmp_path / "a", "lightgcn", FAST, progress=False)
    b = api.train(synth_dataset, tmp_path / "b", "lightgcn", FAST, progress=False)
    c = api.train(synth_dataset, tmp_path / "c", "lightgcn", {**FAST, "seed": 1}, progress=False)
    assert a["test"] == b["test"]
    assert a["test"] != c["test"]
    np.testing.assert_array_equal(
        RunDir(tmp_path / "a").load_embeddings()[1], RunDir(tmp_path / "b").load_embeddings()[1]
    )


def test_run_directory_contents_and_checkpoint_round_trip(synth_dataset, tmp_path):
    api.train(synth_dataset, tmp_path / "run", "lightgcn", FAST, progress=False)
    run = RunDir(tmp_path / "run")
    for path in (
        run.config,
        run.metrics_log,
        run.checkpoint,
        run.best,
        run.embeddings,
        run.index,
        run.summary,
    ):
        assert path.is_file(), path
    assert not list(run.path.glob("*.tmp")) and not list(run.path.glob(".*"))
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"bpr", "reg", "loss", "epoch_seconds", "valid"} <= rows[0].keys()
    # best.pt reproduces the saved embeddings exactly
    ds = Dataset.load(synth_dataset)
    config = resolve_config(
        "lightgcn", ("config.json", {**run.read_config()["train"], **run.read_config()["params"]})
    )
    model, graph, _ = build_model(config, ds, torch.device("cpu"))
    model.load_state_dict(run.load_torch(run.best))
    model.eval()
    with torch.no_grad():
        users, items = model.final_embeddings(graph)
    saved_users, saved_items = run.load_embeddings()
    np.testing.assert_allclose(users.numpy(), saved_users, rtol=1e-6)
    np.testing.assert_allclose(items.numpy(), saved_items, rtol=1e-6)
    summary = run.read_summary()
    assert summary["best_epoch"] == max(rows, key=lambda r: r["valid"]["recall@20"])["epoch"]
    # The summary's validation is the loop's, taken over, and equal to scoring the saved run.
    assert summary["valid"] == rows[summary["best_epoch"] - 1]["valid"]
    fresh = api.evaluate_run(run.path, "valid", ks=(10, 20, 40))["metrics"]
    for name in ("recall@20", "ndcg@20", "coverage@20"):
        assert summary["valid"][name] == pytest.approx(fresh[name], rel=1e-6)


def test_epochs_validate_a_fixed_sample_of_users_and_the_summary_all_of_them(
    synth_dataset, tmp_path
):
    ds = Dataset.load(synth_dataset)
    with_valid = np.flatnonzero(np.diff(ds.valid.indptr) > 0)
    assert len(with_valid) > 100
    whole = api.train(synth_dataset, tmp_path / "all", "lightgcn", FAST, progress=False)
    sampled = api.train(
        synth_dataset, tmp_path / "part", "lightgcn", {**FAST, "valid_users": 100}, progress=False
    )
    rows, whole_rows = (
        RunDir(tmp_path / "part").read_metrics(),
        RunDir(tmp_path / "all").read_metrics(),
    )
    # the same 100 users each epoch, and training draws untouched by the sample's draw
    assert [r["valid"]["n_users"] for r in rows] == [100] * 4
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]
    # the summary validates the chosen weights on every validation user
    assert sampled["best_epoch"] == max(rows, key=lambda r: r["valid"]["recall@20"])["epoch"]
    assert sampled["valid"]["n_users"] == len(with_valid) == whole["valid"]["n_users"]
    fresh = api.evaluate_run(tmp_path / "part", "valid", ks=(10, 20, 40))["metrics"]
    assert sampled["valid"]["recall@20"] == pytest.approx(fresh["recall@20"], rel=1e-6)
    # the watched sample's score is its users' mean in the full per-user evaluation
    full = evaluate(*RunDir(tmp_path / "part").load_embeddings(), ds.train, ds.valid, (20,))
    watched = np.isin(full.users, monitored_users(ds.valid, 100, seed=0))
    assert watched.sum() == 100
    best_row = rows[sampled["best_epoch"] - 1]["valid"]["recall@20"]
    assert best_row == pytest.approx(full.per_user["recall@20"][watched].mean(), rel=1e-5)
    assert monitored_users(ds.valid, len(with_valid), 0) is None


def test_resume_continues_exactly_where_it_stopped(synth_dataset, tmp_path):
    full = api.train(
        synth_dataset, tmp_path / "full", "lightgcn", {**FAST, "patience": 0}, progress=False
    )
    api.train(
        synth_dataset,
        tmp_path / "part",
        "lightgcn",
        {**FAST, "patience": 0, "epochs": 2},
        progress=False,
    )
    # An interrupted run: raise its epoch limit in the saved config, then resume.
    run = RunDir(tmp_path / "part")
    config = run.read_config()
    config["train"]["epochs"] = 4
    run.write_config(config)
    resumed = api.train(synth_dataset, tmp_path / "part", resume=True, progress=False)
    assert resumed["test"] == full["test"]
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4]


def test_no_validation_split_trains_fixed_epochs(synth_dataset, tmp_path):
    ds = Dataset.load(synth_dataset)
    Dataset(ds.train, None, ds.test, ds.users, ds.items).save(tmp_path / "noval")
    summary = api.train(
        tmp_path / "noval", tmp_path / "run", "mf", {**FAST, "epochs": 3}, progress=False
    )
    assert summary["best_epoch"] == 3 and "valid" not in summary and "test" in summary


def test_existing_run_is_not_overwritten_silently(synth_dataset, tmp_path):
    api.train(synth_dataset, tmp_path / "run", "mostpop", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        api.train(synth_dataset, tmp_path / "run", "mostpop", progress=False)
    api.train(synth_dataset, tmp_path / "run", "mostpop", overwrite=True, progress=False)


def test_config_precedence_aliases_and_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'model = "lightgcn"\n[train]\nlr = 0.5\nepochs = 7\n[params]\nemb_reg = 0.25\nlayers = 2\n'
    )
    file_options = read_config_file(cfg)
    assert file_options.pop("model") == "lightgcn"
    config = resolve_config(
        "lightgcn", ("c.toml", file_options), ("command line", {"lr": "0.01", "eval_k": "5,10"})
    )
    assert (config.train.lr, config.train.epochs, config.train.eval_k) == (0.01, 7, [5, 10])
    assert (config.params.reg, config.params.layers) == (0.25, 2)
    with pytest.raises(
        ConfigError, match="command line: unknown option 'layerz' for model 'lightgcn'"
    ):
        resolve_config("lightgcn", ("command line", {"layerz": 2}))
    with pytest.raises(ConfigError, match="option 'epochs' expects int, got 'many'"):
        resolve_config("mf", ("command line", {"epochs": "many"}))
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        resolve_config("nope")
    # Out-of-range values are refused by name, under the alias the user typed.
    for model, options, message in (
        ("dccf", {"temp": "0"}, "option 'temp' must be ≥ 0.025, got 0.0"),
        ("dccf", {"n_intents": 0}, "option 'n_intents' must be ≥ 1, got 0"),
        ("dccf", {"ssl_reg": -0.1}, "option 'ssl_reg' must be ≥ 0, got -0.1"),
        ("mf", {"batch_size": 0}, "option 'batch_size' must be ≥ 1, got 0"),
        ("mf", {"lr": 0}, "option 'lr' must be > 0, got 0.0"),
        ("mf", {"patience": -1}, "option 'patience' must be ≥ 0, got -1"),
    ):
        with pytest.raises(ConfigError, match=f"^command line: {message}$"):
            resolve_config(model, ("command line", options))
    assert (
        resolve_config("dccf", ("command line", {"temp": 0.2, "patience": 0})).params.temperature
        == 0.2
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        read_config_file(bad)


def test_metrics_jsonl_lines_are_json(synth_dataset, tmp_path):
    api.train(synth_dataset, tmp_path / "run", "mf", {**FAST, "epochs": 2}, progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resuming_an_early_stopped_run_trains_no_further(synth_dataset, tmp_path):
    options = {**FAST, "epochs": 30, "patience": 1, "min_epochs": 0, "lr": 0.05}
    first = api.train(synth_dataset, tmp_path / "run", "mf", options, progress=False)
    assert first["epochs"] < 30  # stopped early
    again = api.train(synth_dataset, tmp_path / "run", resume=True, progress=False)
    assert again["epochs"] == first["epochs"] and again["test"] == first["test"]


def test_sampling_option_reaches_the_sampler(synth_dataset, tmp_path, monkeypatch):
    from recsys.train import loop
    from recsys.train.sampler import BPRSampler

    modes = []

    class Recording(BPRSampler):
        def __init__(self, train, rng, mode="edge"):
            modes.append(mode)
            super().__init__(train, rng, mode)

    monkeypatch.setattr(loop, "BPRSampler", Recording)
    user = api.train(
        synth_dataset, tmp_path / "u", "mf", {**FAST, "sampling": "user"}, progress=False
    )
    edge = api.train(synth_dataset, tmp_path / "e", "mf", FAST, progress=False)
    assert modes == ["user", "edge"]
    assert json.loads((tmp_path / "u" / "config.json").read_text())["train"]["sampling"] == "user"
    assert user["valid"] != edge["valid"]


def per_user(train):
    return train.nnz / (np.diff(train.indptr) > 0).sum()


def lightgcl_decay(train):
    nodes = sum(train.shape)  # 30 / (ρ² n), ρ interactions per node, at most 1e-3 (BPR: sparse)
    return min(30.0 / ((2 * train.nnz / nodes) ** 2 * nodes), 1e-3)


@pytest.mark.parametrize(
    "model, key, derive",
    [
        ("dccf", "reg", lambda t: 160.0 / per_user(t)),
        ("lightgcl", "cl_weight", lambda t: 3.7 / per_user(t) ** 2),
        ("lightgcl", "weight_decay", lightgcl_decay),
    ],
)
def test_density_derived_defaults_and_given_options_win(
    synth_dataset, tmp_path, model, key, derive
):
    from recsys.models.base import interactions_per_user

    train = Dataset.load(synth_dataset).train
    assert interactions_per_user(train) == pytest.approx(per_user(train))
    options = {**FAST, "epochs": 1}
    api.train(synth_dataset, tmp_path / "derived", model, options, progress=False)
    params = json.loads((tmp_path / "derived" / "config.json").read_text())["params"]
    assert params[key] == pytest.approx(derive(train))
    api.train(synth_dataset, tmp_path / "given", model, {**options, key: 0.5}, progress=False)
    assert json.loads((tmp_path / "given" / "config.json").read_text())["params"][key] == 0.5


def test_graph_models_bound_their_steps_per_epoch():
    from recsys.train.config import TrainParams, steps_for_log

    opts = TrainParams(batch_size=2048, lr=5e-3, max_steps=100)
    # gowalla's 729,660 training interactions: 357 steps of 2048 become 100 of 7297
    batch, lr = steps_for_log(opts, 729_660, propagates=True)
    assert batch == 7297 and lr == pytest.approx(5e-3 * (7297 / 2048) ** 0.5)
    # yelp-sslrec's 182,357 fit in 100 steps of 2048: trained exactly as configured
    assert steps_for_log(opts, 182_357, propagates=True) == (2048, 5e-3)
    # MF's step does not touch the graph: its epoch is linear already
    assert steps_for_log(opts, 729_660, propagates=False) == (2048, 5e-3)
    assert steps_for_log(TrainParams(max_steps=0), 10**8, propagates=True)[0] == 2048


def test_sampled_softmax_by_hand_and_in_row_blocks(monkeypatch):
    import recsys.models.base as base

    users, pos = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # scores 2 (positive), 0, 1: -log e² / (e² + e⁰ + e¹); τ = 0.5 doubles each
    assert base.softmax_loss(users, pos, neg, 1.0).item() == pytest.approx(
        np.log(np.e**2 + 1 + np.e) - 2, rel=1e-5
    )
    assert base.softmax_loss(users, pos, neg, 0.5).item() == pytest.approx(
        np.log(np.e**4 + 1 + np.e**2) - 4, rel=1e-5
    )
    rows = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n), requires_grad=True)
            for n in (300, 300, 40)]  # fmt: skip
    whole = base.softmax_loss(*rows, 0.7)
    grads = torch.autograd.grad(whole, rows)
    monkeypatch.setattr(base, "SOFTMAX_SCORES", 41 * 7)  # blocks of 7 rows, the last one short
    blocked = base.softmax_loss(*rows, 0.7)
    assert blocked.item() == pytest.approx(whole.item(), rel=1e-6)
    for a, b in zip(grads, torch.autograd.grad(blocked, rows)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rows_per_block", [3, None])
def test_sampled_softmax_gradients_match_autograd_through_a_dense_logsumexp(
    monkeypatch, rows_per_block
):
    import recsys.models.base as base

    if rows_per_block:
        monkeypatch.setattr(base, "SOFTMAX_SCORES", 6 * rows_per_block)  # 5 negatives + 1
    gen = torch.Generator().manual_seed(7)
    raw = [torch.randn(n, 4, generator=gen, dtype=torch.float64) * 2 for n in (10, 10, 5)]
    results = []
    for fn in (
        lambda u, p, n: base.softmax_loss(u, p, n, 0.3),
        lambda u, p, n: (
            torch.logsumexp(torch.cat([(u * p).sum(1, keepdim=True), u @ n.T], 1) / 0.3, 1)
            - (u * p).sum(1) / 0.3
        ).mean(),
    ):
        leaves = [x.clone().requires_grad_() for x in raw]
        value = fn(*leaves)
        (3.0 * value).backward()  # an upstream gradient other than 1
        results.append((value.detach(), *(x.grad for x in leaves)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("rows_per_block", [7, None])
def test_sampled_softmax_in_bfloat16_stays_within_its_precision_of_the_exact_loss(
    monkeypatch, rows_per_block
):
    # Raw scores up to about ±20 (trained embeddings are not unit rows): the GEMM, the shift and
    # the exp stay float32, the gradient GEMMs read the exps with 8 bits, and the value and the
    # gradients land within 1e-5 and 0.5 % of float64's.
    import recsys.models.base as base

    if rows_per_block:
        monkeypatch.setattr(base, "SOFTMAX_SCORES", 301 * rows_per_block)
    gen = torch.Generator().manual_seed(3)
    raw = [torch.randn(n, 32, generator=gen) * 0.8 for n in (200, 200, 300)]
    results = []
    for dtype, score_dtype in ((torch.float64, None), (torch.float32, torch.bfloat16)):
        leaves = [x.to(dtype).requires_grad_() for x in raw]
        value = base.softmax_loss(*leaves, 1.0, score_dtype)
        value.backward()
        results.append((value.detach().float(), *(x.grad.float() for x in leaves)))
    (exact, *exact_grads), (fast, *fast_grads) = results
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=0)
    for got, want in zip(fast_grads, exact_grads):
        assert float((got - want).norm() / want.norm()) < 5e-3


@pytest.mark.parametrize("model", ["mf", "lightgcn", "lightgcl", "dccf"])
def test_the_loss_option_reaches_every_trained_model(synth_dataset, model):
    from recsys.models.base import Batch

    ds = Dataset.load(synth_dataset)
    batch = Batch(torch.arange(8), torch.arange(8), torch.arange(8, 16))
    for options, term in (({"loss": "softmax"}, "softmax"), ({}, "bpr")):
        config = resolve_config(model, ("test", {"dim": 8, "loss_negatives": 3, **options}))
        built, graph, _ = build_model(config, ds, torch.device("cpu"))
        assert term in built.loss_terms(batch, graph)
        assert {"softmax", "bpr"} - {term} & built.loss_terms(batch, graph).keys() == set()
    assert built.ranking.negatives == 3


def test_runs_written_before_the_loss_option_resume_with_bpr():
    from recsys.train.config import RunConfig

    config = resolve_config("lightgcn", ("test", {"dim": 8, "loss": "softmax"})).to_dict()
    assert RunConfig.from_dict(config).train.loss == "softmax"
    del config["train"]["loss"]
    assert RunConfig.from_dict(config).train.loss == "bpr"


@pytest.mark.parametrize("model", ["mf", "lightgcn", "lightgcl", "dccf"])
def test_the_softmax_is_derived_on_dense_logs_only(synth_dataset, tmp_path, model):
    import scipy.sparse as sp

    from recsys.models import model_class
    from recsys.models.base import SOFTMAX_FROM_DENSITY

    def per_user(m: int) -> sp.csr_matrix:  # 10 users with m items each
        return sp.csr_matrix(np.ones((10, m), dtype=np.float32))

    derive = model_class(model).data_defaults
    assert derive(per_user(int(SOFTMAX_FROM_DENSITY)))["loss"] == "softmax"
    assert derive(per_user(int(SOFTMAX_FROM_DENSITY) - 1))["loss"] == "bpr"
    # the sample-sized synthetic log is sparse: its run records BPR, and a given loss wins
    api.train(synth_dataset, tmp_path / "derived", model, {**FAST, "epochs": 1}, progress=False)
    assert json.loads((tmp_path / "derived" / "config.json").read_text())["train"]["loss"] == "bpr"
    given = {**FAST, "epochs": 1, "loss": "softmax"}
    api.train(synth_dataset, tmp_path / "given", model, given, progress=False)
    assert (
        json.loads((tmp_path / "given" / "config.json").read_text())["train"]["loss"] == "softmax"
    )


def test_dccf_widens_where_the_softmax_is_derived_and_a_given_dim_wins():
    import scipy.sparse as sp

    from recsys.models import model_class
    from recsys.models.base import SOFTMAX_FROM_DENSITY
    from recsys.models.dccf import SOFTMAX_DIM

    def per_user(m: int) -> sp.csr_matrix:  # 10 users with m items each
        return sp.csr_matrix(np.ones((10, m), dtype=np.float32))

    dense = model_class("dccf").data_defaults(per_user(int(SOFTMAX_FROM_DENSITY)))
    sparse = model_class("dccf").data_defaults(per_user(int(SOFTMAX_FROM_DENSITY) - 1))
    assert resolve_config("dccf", ("dataset", dense)).params.dim == SOFTMAX_DIM == 64
    assert resolve_config("dccf", ("dataset", sparse)).params.dim == 32
    given = resolve_config("dccf", ("dataset", dense), ("command line", {"dim": 16}))
    assert given.params.dim == 16
