import csv
import json
import shlex

import matplotlib.image
import pytest
from typer.testing import CliRunner

from recsys import api
from recsys.cli import app
from recsys.models import MODELS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit") for k in (10, 20, 40)] + [
    "coverage@20"
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """`recsys benchmark` on a tiny synthetic log (prepared first) with a few seconds of budget,
    including a registered model whose file does not exist (as while it is being written)."""
    root = tmp_path_factory.mktemp("bench")
    api.synth(root / "log.csv", n_users=200, n_items=80, n_intents=4, seed=2)
    MODELS["ghost"] = "recsys.models.ghost:Ghost"
    try:
        args = ["benchmark", "--data", str(root / "log.csv"), "--models", "mostpop,als,mf,ghost"]
        result = CliRunner().invoke(
            app, [*args, "--budget-minutes", "0.02", "--out", str(root / "out")]
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
        manifest = json.loads((out / "runs" / model / "manifest.json").read_text())
        assert (
            manifest["dataset"]["fingerprint"]
            == json.loads((out / "data" / "dataset.json").read_text())["fingerprint"]
        )
        assert manifest["seed"] == 0 and manifest["device"] == "cpu"
        assert {"torch", "implicit", "numpy", "recsys"} <= manifest["versions"].keys()
    assert "ghost" in output and "not available" in output
    assert "**ghost**: unavailable" in (out / "results.md").read_text()


def test_table_numbers_equal_the_run_directories_metrics(results):
    out, _ = results
    rows = {r["model"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["ghost"]["status"].startswith("unavailable") and rows["ghost"]["recall@20"] == ""
    markdown = (out / "results.md").read_text()
    for model in ("mostpop", "als", "mf"):
        summary = json.loads((out / "runs" / model / "metrics.json").read_text())
        row = rows[model]
        assert row["status"] == "ok"
        for metric in METRICS:
            assert float(row[metric]) == summary["test"][metric], (model, metric)
        assert float(row["peak_rss_mib"]) == summary["peak_rss_mib"]
        assert float(row["train_seconds"]) == summary["train_seconds"]
        assert (
            f"| {model} | {summary['test']['recall@10']:.4f} | {summary['test']['recall@20']:.4f} |"
            in markdown
        )
        # the printed command names the run directory it made
        command = shlex.split(row["command"])
        assert command[:2] == ["recsys", "train"] and command[command.index("--out") + 1] == str(
            out / "runs" / model
        )
    assert (
        "--max-minutes" in rows["mf"]["command"] and "--max-minutes" not in rows["als"]["command"]
    )


def test_als_is_tuned_on_validation_without_the_test_split(results):
    out, _ = results
    tuning = json.loads((out / "tune-data" / "dataset.json").read_text())
    assert set(tuning["splits"]) == {"train", "valid"}
    assert len(list((out / "tune" / "als").iterdir())) == 4
    assert "## Tuning" in (out / "results.md").read_text()


@pytest.mark.parametrize("name", ["curves.png", "by_degree.png", "popularity.png"])
def test_plots_are_real_images(results, name):
    out, _ = results
    assert (out / name).read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out / name).shape
    assert height > 300 and width > 500
