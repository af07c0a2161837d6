"""The command line end to end, as a user runs it: exit codes, stdout JSON, one-line errors."""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from tests.conftest import shared_path

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(*args: str, message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ok(
        "data",
        "synth",
        "--out",
        root / "log.csv",
        "--users",
        200,
        "--items",
        80,
        "--intents",
        4,
        "--seed",
        3,
    )
    ok(
        "data",
        "prepare",
        root / "log.csv",
        "--out",
        root / "data",
        "--rating-col",
        "rating",
        "--time-col",
        "timestamp",
        "--split",
        "last:2",
        "--valid",
        "0.2",
    )
    ok(
        "train",
        root / "data",
        "--out",
        root / "run",
        "--model",
        "lightgcn",
        "--epochs",
        3,
        "--dim",
        16,
        "--lr",
        "0.01",
        "--reg",
        "1e-4",
        "--no-progress",
    )
    return root


def test_info_and_evaluate_print_one_json_object(workspace):
    info = json.loads(ok("data", "info", workspace / "data", "--json"))
    assert (
        info["users"] == 200 and info["interactions"]["test"] == 400
    )  # last:2 holds out 2 per user
    report = json.loads(
        ok("evaluate", workspace / "run", "--split", "test", "--k", "5,10", "--json")
    )
    assert set(report["metrics"]) >= {
        "recall@5",
        "ndcg@10",
        "precision@5",
        "hit@10",
        "mrr@5",
        "coverage@10",
    }
    assert report["metrics"]["n_users"] == 200
    summary = json.loads((workspace / "run" / "metrics.json").read_text())
    again = json.loads(ok("evaluate", workspace / "run", "--json"))
    assert again["metrics"]["recall@20"] == pytest.approx(summary["test"]["recall@20"])


def test_evaluate_by_degree_table(workspace):
    out = ok("evaluate", workspace / "run", "--by-degree", "--k", "20")
    table = out[out.index("degree") :].splitlines()
    assert table[0].split() == ["degree", "users", "recall@20", "ndcg@20"]
    rows = [line.split() for line in table[1:]]
    assert len(rows) == 5 and sum(int(r[1]) for r in rows) == 200


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_recommend_writes_raw_ids_and_excludes_seen(workspace, suffix):
    out = workspace / f"recs{suffix}"
    ok(
        "recommend",
        workspace / "run",
        "--user",
        "u0003",
        "--user",
        "u0010",
        "--k",
        7,
        "--output",
        out,
    )
    recs = (
        pl.read_json(out)
        if suffix == ".json"
        else (pl.read_csv(out) if suffix == ".csv" else pl.read_parquet(out))
    )
    assert recs.columns == ["user_id", "rank", "item_id", "score"]
    assert recs.height == 14 and recs["rank"].to_list() == list(range(1, 8)) * 2
    log = pl.read_csv(workspace / "log.csv")
    from recsys.data.dataset import Dataset

    ds = Dataset.load(workspace / "data")
    for user in ("u0003", "u0010"):
        seen = set(ds.items.raw(ds.train[int(ds.users.index([user])[0])].indices).to_list())
        got = set(recs.filter(pl.col("user_id") == user)["item_id"].to_list())
        assert got and not got & seen and got <= set(log["item_id"].to_list())


def test_recommend_from_users_file_and_prints(workspace):
    users = workspace / "users.txt"
    users.write_text("u0001\nu0002\n")
    out = ok("recommend", workspace / "run", "--users-file", users, "--k", 3)
    assert out.count("u0001") == 3 and out.count("u0002") == 3


BAD_LOGS = [
    ("cols.csv", "user,item\n1,2\n", (), "cols.csv: no column 'user_id'"),
    ("empty.csv", "user_id,item_id\n", (), "empty.csv: no interactions"),
    (
        "bad.csv",
        "user_id,item_id,rating\na,b,5\nc,d,abc\n",
        ("--rating-col", "rating"),
        "bad.csv: line 3",
    ),
    (
        "few.csv",
        "user_id,item_id,rating\na,b,1\n",
        ("--rating-col", "rating", "--min-rating", 4),
        "no interactions left",
    ),
]


@pytest.mark.parametrize("name,content,args,message", BAD_LOGS)
def test_bad_logs_fail_in_one_line_and_write_nothing(tmp_path, name, content, args, message):
    (tmp_path / name).write_text(content)
    fails("data", "prepare", tmp_path / name, "--out", tmp_path / "d", *args, message=message)
    assert not (tmp_path / "d").exists()


def test_user_errors_are_one_line(workspace, tmp_path):
    data, run = workspace / "data", workspace / "run"
    fails("recommend", run, "--user", "nobody", message="unknown user id(s): 'nobody'")
    fails(
        "data", "prepare", tmp_path / "missing.csv", "--out", tmp_path / "d", message="missing.csv"
    )
    fails(
        "train",
        data,
        "--out",
        tmp_path / "r",
        "--model",
        "lightgcn",
        "--layerz",
        2,
        message="unknown option 'layerz'",
    )
    fails("train", data, "--out", tmp_path / "r", "--model", "nope", message="unknown model 'nope'")
    fails(
        "train",
        tmp_path / "nodata",
        "--out",
        tmp_path / "r",
        "--model",
        "mf",
        message="not a dataset folder",
    )
    fails("evaluate", tmp_path / "norun", message="not a run directory")
    fails("evaluate", run, "--k", "ten", message="--k expects")
    fails("recommend", run, message="no users given")
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_run_from_another_dataset_is_refused(workspace, tmp_path):
    ok("data", "prepare", workspace / "log.csv", "--out", tmp_path / "other", "--seed", 9)
    fails("evaluate", workspace / "run", "--data", tmp_path / "other", message="trained on dataset")
    fails(
        "train",
        tmp_path / "other",
        "--out",
        workspace / "run",
        "--resume",
        message="was trained on dataset",
    )


def test_models_lists_hyperparameters():
    out = ok("models", "lightgcn")
    assert "--layers  3" in out and "--reg / --emb_reg" in out


def test_ml100k_lightgcn_beats_mostpop_by_half(tmp_path):
    """Acceptance: ratings >= 4, per-user 80/20 random split, seed 0."""
    source = shared_path("ml-100k", "ml-100k.inter")
    data = tmp_path / "ml"
    ok(
        "data",
        "prepare",
        source,
        "--out",
        data,
        "--rating-col",
        "rating",
        "--time-col",
        "timestamp",
        "--min-rating",
        4,
        "--split",
        "random:0.8",
        "--seed",
        0,
    )
    pop = json.loads(ok("train", data, "--out", tmp_path / "pop", "--model", "mostpop", "--json"))
    lgcn = json.loads(
        ok(
            "train",
            data,
            "--out",
            tmp_path / "lgcn",
            "--model",
            "lightgcn",
            "--epochs",
            30,
            "--lr",
            "5e-3",
            "--no-progress",
            "--json",
        )
    )
    assert lgcn["test"]["recall@20"] >= 1.5 * pop["test"]["recall@20"]
