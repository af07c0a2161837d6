"""The quality matrix: every model on every dataset, with its defaults and tuned within a budget.

    python benchmarks/quality_matrix.py --out results/matrix \\
        [--datasets ml-100k,yelp-sslrec,gowalla-lightgcn,sample] \\
        [--models mostpop,als,mf,lightgcn,lightgcl,dccf] [--columns defaults,tuned] \\
        [--tune-minutes 15] [--max-minutes 0] [--threads N] [--jobs 1]

Datasets come from ../shared/data (ml-100k: ratings ≥ 4, per-user random 80/20, 10 % of train
for validation, seed 0; ml-100k-all: the same with every rating; yelp-sslrec: its given train/valid/test; gowalla-lightgcn: its given
train/test with 10 % of each user's training interactions carved out for validation) and from
the bundled data/sample.csv (as `recsys demo` prepares it); a dataset that is absent is
skipped. Each cell runs the CLI in a subprocess and the table shows its command:
- defaults: `recsys train DATA --model M` (nothing else but `--max-minutes` when given),
- tuned: `recsys tune DATA --model M --budget-minutes T` (Optuna on validation; test once).
Test Recall@20 (NDCG@20) is reported, and at the end each contrastive cell's paired per-user
difference from the best baseline of its dataset, with its standard error (a tie or a win is
then told from noise). Results go to OUT/matrix.json and OUT/matrix.md after every cell; a cell already in matrix.json is not run again, so an interrupted matrix resumes.
`--jobs 2` runs two cells at a time (give each `--threads 1` on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock

from recsys.atomic import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PREPARE = {
    "ml-100k": [str(SHARED / "ml-100k" / "ml-100k.inter"), "--rating-col", "rating",
                "--time-col", "timestamp", "--min-rating", "4", "--split", "random:0.8"],
    # every rating: a denser log (76 training interactions per user) that chose no default
    "ml-100k-all": [str(SHARED / "ml-100k" / "ml-100k.inter"), "--rating-col", "rating",
                    "--time-col", "timestamp", "--split", "random:0.8"],
    "yelp-sslrec": [str(SHARED / "yelp-sslrec")],
    "gowalla-lightgcn": [str(SHARED / "gowalla-lightgcn")],
    "sample": [str(ROOT / "data" / "sample.csv"), "--rating-col", "rating", "--time-col",
               "timestamp", "--min-rating", "4", "--split", "random:0.8"],
}  # fmt: skip
MODELS = "mostpop,als,mf,lightgcn,lightgcl,dccf"


def recsys(*args: str, log: Path) -> dict:
    """Run `recsys ARGS --json` in a subprocess; its JSON, or {"error": last line}."""
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "recsys", *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    if proc.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout)


def prepared(name: str, out: Path) -> Path | None:
    """The dataset folder for `name` (prepared once under OUT/data), or None if its source is absent."""
    source = Path(PREPARE[name][0])
    if not source.exists():
        print(f"{name}: {source} not found, skipped", file=sys.stderr)
        return None
    target = out / "data" / name
    if not (target / "dataset.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        result = recsys(
            "data",
            "prepare",
            *PREPARE[name],
            "--out",
            str(target),
            log=out / "logs" / f"prepare-{name}.log",
        )
        if "error" in result:
            sys.exit(f"{name}: prepare failed: {result['error']}")
    return target


def cell(dataset: str, data: Path, model: str, column: str, args: argparse.Namespace) -> dict:
    """One (dataset, model, column) run: its command, test metrics and seconds."""
    tag = f"{dataset}-{model}-{column}"
    threads = ["--threads", str(args.threads)] if args.threads else []
    if column == "defaults":
        command = ["train", str(data), "--out", str(args.out / "runs" / tag), "--model", model,
                   "--overwrite", "--no-progress", *threads]  # fmt: skip
        if args.max_minutes:
            command += ["--max-minutes", str(args.max_minutes)]
    else:
        command = ["tune", str(data), "--model", model, "--out", str(args.out / "tune" / tag),
                   "--budget-minutes", str(args.tune_minutes), "--overwrite", *threads]  # fmt: skip
    t0 = time.perf_counter()
    result = recsys(*command, log=args.out / "logs" / f"{tag}.log")
    row = {"dataset": dataset, "model": model, "column": column, "seconds": time.perf_counter() - t0,
           "command": shlex.join(["recsys", *command])}  # fmt: skip
    if "error" in result:
        return row | {"error": result["error"]}
    if column == "defaults":
        return row | {
            "test": result.get("test"),
            "valid": result.get("valid"),
            "epochs": result.get("epochs"),
        }
    best = result["best"] or {}
    return row | {"test": best.get("test"), "valid": best.get("valid"), "options": best.get("options"),
                  "trials": result["trials"]}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The matrix of every cell run so far: a row per model, a column per dataset and setting,
    test Recall@20 / NDCG@20 in each cell."""
    found = {(r["dataset"], r["model"], r["column"]): r for r in rows}
    datasets = [d for d in PREPARE if any(r["dataset"] == d for r in rows)]
    models = [m for m in MODELS.split(",") if any(r["model"] == m for r in rows)]
    columns = [c for c in ("defaults", "tuned") if any(r["column"] == c for r in rows)]
    head = ["model"] + [f"{d} {c}" for d in datasets for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        cells = [model]
        for d in datasets:
            for c in columns:
                r = found.get((d, model, c))
                if r is None:
                    cells.append("not run")
                elif "error" in r or not r.get("test"):
                    cells.append("failed")
                else:
                    cells.append(f"{r['test']['recall@20']:.4f} / {r['test']['ndcg@20']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (seconds each took):", ""]
    lines += [f"- {r['dataset']} / {r['model']} / {r['column']}: `{r['command']}` ({r['seconds']:.0f} s)"
              + (f" — {r['error']}" if "error" in r else "") for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


BASELINES = ("als", "mf", "lightgcn")
CONTRASTIVE = ("lightgcl", "dccf")


def run_dir(out: Path, row: dict) -> Path | None:
    """The run directory whose weights a cell's test figures come from."""
    tag = f"{row['dataset']}-{row['model']}-{row['column']}"
    if row["column"] == "defaults":
        return out / "runs" / tag
    summary = out / "tune" / tag / "tune.json"
    best = json.loads(summary.read_text()).get("best") if summary.is_file() else None
    return Path(best["run_dir"]) if best else None


def per_user_recall(out: Path, row: dict, ds):
    """Test Recall@20 of every test user for a cell's saved weights (None if they are gone)."""
    from recsys.evaluate import evaluate
    from recsys.train.rundir import RunDir

    path = run_dir(out, row)
    if path is None or not (path / "embeddings.npz").is_file():
        return None
    users, items = RunDir(path).load_embeddings()
    return evaluate(users, items, ds.train, ds.test, (20,)).per_user["recall@20"]


def paired_gaps(rows: list[dict], out: Path) -> list[str]:
    """Each contrastive cell against the dataset's best baseline cell (by test Recall@20), as the
    mean per-user difference of test Recall@20 with its standard error: the same test users
    score both, so the pairing removes most of the users' spread. Within about two standard
    errors a difference is noise."""
    import numpy as np

    from recsys.data.dataset import Dataset

    lines = []
    for dataset in PREPARE:
        cells = [
            r for r in rows if r["dataset"] == dataset and (r.get("test") or {}).get("recall@20")
        ]
        baselines = [r for r in cells if r["model"] in BASELINES]
        if not baselines or not any(r["model"] in CONTRASTIVE for r in cells):
            continue
        ds = Dataset.load(out / "data" / dataset)
        best = max(baselines, key=lambda r: r["test"]["recall@20"])
        reference = per_user_recall(out, best, ds)
        if reference is None:
            continue
        for row in (r for r in cells if r["model"] in CONTRASTIVE):
            scores = per_user_recall(out, row, ds)
            if scores is None:
                continue
            diff = scores - reference
            se = diff.std(ddof=1) / np.sqrt(len(diff))
            lines.append(f"- {dataset}: {row['model']} {row['column']} − {best['model']} "
                         f"{best['column']}: {diff.mean():+.4f} ± {se:.4f} "
                         f"({diff.mean() / se:+.1f} SE, {len(diff)} test users)")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/matrix"))
    ap.add_argument("--datasets", default=",".join(PREPARE))
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--columns", default="defaults,tuned")
    ap.add_argument("--tune-minutes", type=float, default=15.0)
    ap.add_argument(
        "--max-minutes", type=float, default=0.0, help="cap of a defaults run (0: none)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once")
    args = ap.parse_args()
    datasets, models = args.datasets.split(","), args.models.split(",")
    columns = args.columns.split(",")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    store = args.out / "matrix.json"
    rows = json.loads(store.read_text()) if store.is_file() else []
    done = {(r["dataset"], r["model"], r["column"]) for r in rows if "error" not in r}
    rows = [r for r in rows if "error" not in r]
    todo = []
    for name in datasets:
        data = prepared(name, args.out)
        if data is not None:
            todo += [
                (name, data, m, c) for c in columns for m in models if (name, m, c) not in done
            ]
    lock = Lock()

    def run(job) -> None:
        row = cell(*job, args)
        with lock:
            rows.append(row)
            write_json(store, rows)
            table = markdown(rows)
            atomic_write(args.out / "matrix.md", lambda p: p.write_text(table))
            test = row.get("test") or {}
            print(f"{row['dataset']:>17} {row['model']:>9} {row['column']:>8}  "
                  + (f"test recall@20 {test['recall@20']:.4f}" if test else row.get("error", "?"))
                  + f"  ({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))
    gaps = paired_gaps(rows, args.out)
    if gaps:
        head = ("Contrastive models against the best baseline of their dataset: mean per-user "
                "difference of test Recall@20 ± its standard error:")  # fmt: skip
        print("\n".join([head, *gaps]))
        table = markdown(rows) + "\n" + "\n".join([head, "", *gaps]) + "\n"
        atomic_write(args.out / "matrix.md", lambda p: p.write_text(table))
    print(f"matrix in {args.out / 'matrix.md'}")


if __name__ == "__main__":
    main()
