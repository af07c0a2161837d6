import json
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import scipy.sparse as sp

from recsys import api
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.models import MODELS, Search, model_class
from recsys.train import loop
from recsys.train.config import option_table, resolve_config
from recsys.tune import NOISE_SE, default_point, suggest, tune

FAST = {"epochs": 3, "batch_size": 256, "dim": 16}


@pytest.mark.parametrize("model", list(MODELS))
def test_search_space_is_valid_and_holds_the_defaults(model):
    space = model_class(model).search_space
    assert bool(space) == (model != "mostpop")
    table = option_table(model)
    for key, s in space.items():
        assert key in table, key
        assert bool(s.choices) != (s.low is not None and s.high is not None), key
        if not s.choices:
            assert s.low < s.high and (not s.log or s.low > 0), key
    # the defaults (the study's first trial) lie inside the space, also where they are derived
    # from the data: a dense and a very sparse training matrix
    for train in (sp.csr_matrix(np.ones((4, 3))), sp.identity(50, format="csr")):
        derived = model_class(model).data_defaults(train)
        for key, value in default_point(model, derived=derived).items():
            s = space[key]
            assert value in s.choices if s.choices else s.low <= value <= s.high, (key, value)
    # every drawn point resolves into a valid configuration
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        resolve_config(model, ("tuner", suggest(study.ask(), model)))


def test_planted_warm_up_dip_does_not_stop_training(synth_dataset, tmp_path, monkeypatch):
    # validation rises at epoch 1, dips for 14 epochs, then climbs to its best at epoch 25
    curve = [0.3] + [0.1] * 14 + [0.31 + 0.01 * i for i in range(10)] + [0.35] * 20
    calls = iter(curve)
    monkeypatch.setattr(loop.Trainer, "validate", lambda *a, **k: {"recall@20": next(calls)})
    monkeypatch.setattr(
        loop,
        "finish",
        lambda trainer, *a, **k: {"epochs": trainer.state["epoch"], "best": trainer.state},
    )
    options = {**FAST, "epochs": 60, "patience": 10, "min_epochs": 20, "eval_k": "20"}
    summary = api.train(synth_dataset, tmp_path / "dip", "mf", options, progress=False)
    assert summary["best"]["best_epoch"] == 25 and summary["epochs"] == 35
    # without the floor, patience alone stops inside the dip, at epoch 11
    calls = iter(curve)
    options["min_epochs"] = 0
    summary = api.train(synth_dataset, tmp_path / "nofloor", "mf", options, progress=False)
    assert summary["best"]["best_epoch"] == 1 and summary["epochs"] == 11


def test_should_stop_counts_epochs_not_validations():
    opts = SimpleNamespace(patience=10, min_epochs=20)
    assert not loop.should_stop(19, 5, opts)  # before the floor
    assert loop.should_stop(20, 10, opts) and not loop.should_stop(20, 11, opts)
    assert not loop.should_stop(500, 1, SimpleNamespace(patience=0, min_epochs=0))


@pytest.fixture(scope="module")
def tuned(synth_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "mf"
    rows = []
    summary = tune(
        synth_dataset, out, "mf", budget_minutes=2, trials=3, options=FAST, table=rows.append
    )
    return out, summary, rows


def test_tune_writes_study_trials_and_a_best_setting(tuned):
    out, summary, rows = tuned
    assert [r["trial"] for r in rows] == [0, 1, 2]
    assert sum(summary["trials"].values()) == 3 and (out / "study.db").is_file()
    assert json.loads((out / "tune.json").read_text())["best"] == summary["best"]
    # the first trial is the model's defaults
    assert rows[0]["options"] == default_point("mf", FAST)
    assert default_point("mf", FAST) == {
        "lr": 5e-3,
        "reg": 1e-2,
        "loss": "bpr",
        "loss_temperature": 2.0,
    }
    assert rows[0]["reason"] is None  # its half of the budget was enough: not continued
    best = summary["best"]
    completed = [r for r in rows if r["state"] == "complete"]
    assert best["valid"]["recall@20"] == max(r["value"] for r in completed)
    gain = best["gain_over_defaults"]  # the best beat the defaults by more than noise here
    assert best["trial"] != 0 and gain["trial"] == best["trial"]
    assert gain["mean"] > NOISE_SE * gain["se"] > 0
    # only the best trial's run and the defaults' are kept; the best's never evaluated test,
    # the summary does it once
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", f"{best['trial']:04d}"]
    assert "test" not in json.loads(
        (out / "trials" / f"{best['trial']:04d}" / "metrics.json").read_text()
    )
    assert 0 < best["test"]["recall@20"] <= 1


def test_best_toml_round_trips_through_train_config(tuned, synth_dataset, tmp_path):
    out, summary, _ = tuned
    best = summary["best"]
    retrained = api.train(
        synth_dataset, tmp_path / "again", config_file=out / "best.toml", progress=False
    )
    # same setting and seed on CPU: the very same validation and test figures
    assert retrained["valid"] == best["valid"] and retrained["test"] == best["test"]
    trial_config = json.loads((out / "trials" / f"{best['trial']:04d}" / "config.json").read_text())
    again_config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again_config["params"] == trial_config["params"]
    assert again_config["train"]["lr"] == best["options"]["lr"]


def test_second_call_resumes_the_study(tuned, synth_dataset):
    out, summary, _ = tuned
    again = tune(synth_dataset, out, "mf", budget_minutes=2, trials=4, options=FAST)
    assert sum(again["trials"].values()) == 4
    # still the best run's directory and the defaults', across the two calls
    kept = sorted(p.name for p in (out / "trials").iterdir())
    assert kept == sorted({"0000", f"{again['best']['trial']:04d}"})


def test_a_best_within_noise_of_the_defaults_keeps_the_defaults(
    synth_dataset, tmp_path, monkeypatch
):
    import recsys.tune
    from recsys.evaluate import evaluate
    from recsys.train.rundir import RunDir

    monkeypatch.setattr(recsys.tune, "NOISE_SE", 1e9)  # every gain counts as noise
    out = tmp_path / "mf"
    summary = tune(synth_dataset, out, "mf", budget_minutes=2, trials=3, options=FAST)
    chosen, gain = summary["best"], summary["best"]["gain_over_defaults"]
    assert chosen["trial"] == 0 and gain["trial"] != 0 and gain["mean"] > 0
    assert chosen["options"] == default_point("mf", FAST)
    assert (out / "best.toml").read_text().startswith("# recsys tune: trial 0,")
    assert chosen["valid"]["recall@20"] == summary["rows"][0]["value"]
    kept = sorted(p.name for p in (out / "trials").iterdir())
    assert kept == ["0000", f"{gain['trial']:04d}"]
    # the gain is paired per validation user: the best's recall minus the defaults'
    ds = Dataset.load(synth_dataset)
    per_user = [
        evaluate(
            *RunDir(out / "trials" / name).load_embeddings(), ds.train, ds.valid, (20,)
        ).per_user["recall@20"]
        for name in (f"{gain['trial']:04d}", "0000")
    ]
    diff = per_user[0] - per_user[1]
    assert gain["users"] == len(diff) == ds.valid.getnnz(axis=1).astype(bool).sum()
    assert gain["mean"] == pytest.approx(diff.mean())
    assert gain["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)))


def test_pruning_stops_a_diverging_trial_and_a_hopeless_one(synth_dataset, tmp_path, monkeypatch):
    # lr 1e-9 learns nothing (below the median: pruned after the warm-up epochs); lr 1e30
    # diverges (non-finite loss: pruned at once). The default lr completes.
    from recsys.models.mf import MF

    monkeypatch.setattr(MF, "search_space", {"lr": Search(choices=(5e-3, 1e-9, 1e30))})
    study_rows = []
    summary = tune(
        synth_dataset, tmp_path / "t", "mf", budget_minutes=2, trials=8,
        options={**FAST, "epochs": 12, "min_epochs": 12}, table=study_rows.append,
    )  # fmt: skip
    by_lr = {}
    for row in study_rows:
        by_lr.setdefault(row["options"]["lr"], []).append(row)
    assert all(r["state"] == "complete" for r in by_lr[5e-3])
    diverging = by_lr.get(1e30, [])
    assert all(r["state"] == "pruned" and "loss became" in r["reason"] for r in diverging)
    # the median pruner judges once two trials have completed
    completed_before = {}
    for row in study_rows:
        completed_before[row["trial"]] = sum(
            r["state"] == "complete" for r in study_rows if r["trial"] < row["trial"]
        )
    late_tiny = [r for r in by_lr.get(1e-9, []) if completed_before[r["trial"]] >= 2]
    assert diverging and late_tiny
    assert all(r["state"] == "pruned" and r["epochs"] < 12 for r in late_tiny)
    assert summary["best"]["options"]["lr"] == 5e-3


def test_defaults_out_of_time_in_their_half_continue_for_the_whole_budget(
    synth_dataset, tmp_path, monkeypatch
):
    # Every epoch "takes" 6 s more: the defaults' half of a 2-minute budget ends after 10 of
    # their 25 epochs while they still run; the rest of the budget continues that very run.
    original = loop.Trainer.train_epoch

    def slow_epoch(self, *a, **k):
        row = original(self, *a, **k)
        self.state["train_seconds"] += 6.0
        return row

    monkeypatch.setattr(loop.Trainer, "train_epoch", slow_epoch)
    options = {**FAST, "epochs": 25, "min_epochs": 25}
    rows = []
    summary = tune(
        synth_dataset, tmp_path / "t", "mf", budget_minutes=2, trials=3, options=options,
        table=rows.append,
    )  # fmt: skip
    # the study ends with them: no time is left for another trial to finish
    assert len(rows) == 1 and summary["trials"] == {"complete": 1}
    assert rows[0]["epochs"] == 25 and "continued" in rows[0]["reason"]
    run = tmp_path / "t" / "trials" / "0000"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == list(
        range(1, 26)
    )
    # the continued trial is the defaults trained once for 25 epochs, resumed seamlessly
    alone = api.train(synth_dataset, tmp_path / "alone", "mf", options, progress=False)
    assert summary["best"]["valid"] == alone["valid"] and alone["stopped_by"] == "epochs"


def test_tune_refuses_a_folder_it_did_not_write(synth_dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a recsys tuning folder"):
        tune(synth_dataset, mine, "mf", budget_minutes=1, trials=1, options=FAST)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
