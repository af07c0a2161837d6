import csv
import json
import shlex
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from recsys import api
from recsys.cli import app
from recsys.data.dataset import Dataset
from recsys.models import MODELS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit") for k in (10, 20, 40)] + [
    "coverage@20"
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """`recsys benchmark` on a tiny synthetic log (prepared first) with seconds of budget and
    one thread, including a registered model whose file does not exist (as while it is being
    written)."""
    root = tmp_path_factory.mktemp("bench")
    api.synth(root / "log.csv", n_users=200, n_items=80, n_intents=4, seed=2)
    MODELS["ghost"] = "recsys.models.ghost:Ghost"
    try:
        args = ["benchmark", "--data", str(root / "log.csv"), "--models", "mostpop,als,mf,ghost"]
        result = CliRunner().invoke(
            app, [*args, "--budget-minutes", "0.4", "--threads", "1", "--out", str(root / "out")]
        )
    finally:
        del MODELS["ghost"]
    assert result.exit_code == 0, result.output
    return root / "out", result.output


def test_files_exist_and_unavailable_model_is_reported_not_fatal(results):
    out, output = results
    for name in (
        "results.md",
        "results.csv",
        "curves.png",
        "by_degree.png",
        "popularity.png",
        "data/dataset.json",
    ):
        assert (out / name).is_file(), name
    for model in ("mostpop", "als", "mf"):
        best = json.loads((out / "tune" / model / "tune.json").read_text())["best"]
        manifest = json.loads((Path(best["run_dir"]) / "manifest.json").read_text())
        assert (
            manifest["dataset"]["fingerprint"]
            == json.loads((out / "data" / "dataset.json").read_text())["fingerprint"]
        )
        assert manifest["seed"] == 0 and manifest["device"] == "cpu"
        assert {"torch", "implicit", "numpy", "recsys", "optuna"} <= manifest["versions"].keys()
    assert "ghost" in output and "not available" in output
    assert "**ghost**: unavailable" in (out / "results.md").read_text()


def test_table_numbers_are_the_chosen_trials_and_say_how_they_were_chosen(results):
    out, _ = results
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["ghost"]["status"].startswith("unavailable") and rows["ghost"]["recall@20"] == ""
    markdown = (out / "results.md").read_text()
    for model in ("mostpop", "als", "mf"):
        study = json.loads((out / "tune" / model / "tune.json").read_text())
        best, row = study["best"], rows[model]
        assert row["status"] == "ok"
        for metric in METRICS:
            assert float(row[metric]) == best["test"][metric], (model, metric)
        assert float(row["valid_recall@20"]) == best["valid"]["recall@20"]
        completed = [r["value"] for r in study["rows"] if r["state"] == "complete"]
        assert best["valid"]["recall@20"] == max(completed)
        assert json.loads(row["options"]) == best["options"]
        assert (
            f"| {model} | {best['test']['recall@10']:.4f} | {best['test']['recall@20']:.4f} |"
            in markdown
        )
        # the printed command retrains the chosen setting from its TOML
        command = shlex.split(row["command"])
        assert command[:2] == ["recsys", "train"] and command[-1] == best["config"]
        assert shlex.split(row["tune_command"])[:2] == ["recsys", "tune"]
    assert rows["mostpop"]["chosen_by"] == "defaults (nothing to tune)"
    assert rows["mf"]["chosen_by"].startswith("TPE, ") and rows["als"]["chosen_by"].startswith(
        "TPE, "
    )


def test_threads_reach_every_trial(results):
    out, _ = results
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert "--threads 1" in rows["mf"]["tune_command"]
    trials = list((out / "tune" / "mf" / "trials").iterdir())
    assert trials
    for trial in trials:
        epochs = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        assert epochs and {e["threads"] for e in epochs} == {1}


def test_floor_is_mostpops_validation_and_a_model_below_it_is_flagged(
    results, monkeypatch, tmp_path
):
    from recsys import benchmark

    out, _ = results
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    floor = benchmark.mostpop_valid_recall(Dataset.load(out / "data"))
    assert floor == float(rows["mostpop"]["valid_recall@20"]) and not rows["mf"]["flag"]
    # a floor no model can clear: every row but MostPop's is flagged, in the table and the CSV
    monkeypatch.setattr(benchmark, "mostpop_valid_recall", lambda ds: 1.0)
    flagged = benchmark.run_benchmark(out / "data", tmp_path / "b", ["mostpop", "als"], 0.1)
    assert [r.get("flag", "") for r in flagged] == [
        "",
        "validation Recall@20 never above MostPop's 1.0000",
    ]
    assert "| als ⚠ |" in (tmp_path / "b" / "results.md").read_text()


@pytest.mark.parametrize("name", ["curves.png", "by_degree.png", "popularity.png"])
def test_plots_are_real_images(results, name):
    out, _ = results
    assert (out / name).read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out / name).shape
    assert height > 300 and width > 500
