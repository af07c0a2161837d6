"""One-command benchmark: train several models on one dataset, test each once, tabulate and plot.

    >>> from recsys.benchmark import run_benchmark
    >>> run_benchmark("data/sample.csv", "results/sample", ["mostpop", "als", "lightgcn"], budget_minutes=1)

For every model, each point of its option grid is trained on a copy of the dataset without
the test split and scored on validation (Recall@20); the winner is then trained once more on
the full dataset, in a subprocess (`recsys train ...`), so its peak RSS is its own and the
command that made the row is the command printed beside it. Test is evaluated only there.

Default grids (`GRIDS`): ALS and BPR get a small grid around the settings that suit sparse
data such as yelp-sslrec; MF and LightGCN take larger batches and learning rate so that a
budget of minutes gets them somewhere; LightGCL and DCCF run the settings that won on
yelp-sslrec's validation split (README: sampled negatives, lr 5e-3, λ2 1e-5 for LightGCL;
batch 4096, emb_reg 4e-3, temp 0.2, ssl_reg 0.01 for DCCF), otherwise the papers' defaults.
All gradient-trained models are early-stopped on validation within their share of the budget.
The budget is split evenly between the gradient-trained models; the closed-form baselines take
seconds and are not charged.

The results folder holds `results.md`, `results.csv`, `curves.png`, `by_degree.png`,
`popularity.png`, `data/` (when given a log), `tune/` and `runs/<model>/` (each with a
`manifest.json`: data and split fingerprint, config, seed, package versions, device), and
`logs/<model>.log`.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Figure, not pyplot: no global backend or state, so a notebook's inline backend stays as it was.
from matplotlib.figure import Figure

import recsys
from recsys import api
from recsys.atomic import atomic_write, write_json
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.index import search
from recsys.models import model_class
from recsys.train.rundir import RunDir

log = logging.getLogger("recsys")

GRIDS: dict[str, list[dict[str, Any]]] = {
    "als": [
        {"dim": d, "reg": r, "alpha": 10.0, "iterations": 15}
        for d in (64, 128)
        for r in (0.01, 0.1)
    ],
    "bpr": [
        {"dim": 128, "learning_rate": lr, "reg": r, "iterations": 200}
        for lr in (0.01, 0.05)
        for r in (1e-3, 1e-2)
    ],
    # Budget-friendly steps for the two models without their own training defaults: on a
    # loaded 2-core CPU a step's cost is mostly fixed overhead (and, for LightGCN, one full
    # propagation), so 4× larger batches with a 5× larger Adam rate get much further per minute.
    "mf": [{"batch_size": 8192, "lr": 5e-3}],
    "lightgcn": [{"batch_size": 8192, "lr": 5e-3}],
    "lightgcl": [{"negatives": "sampled", "lr": 5e-3, "weight_decay": 1e-5}],
    "dccf": [{"batch_size": 4096, "reg": 4e-3, "temperature": 0.2, "ssl_weight": 0.01}],
}
KS = (10, 20, 40)
TABLE_METRICS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit") for k in KS] + [
    "coverage@20"
]
COSTS = ["train_seconds", "seconds_per_epoch", "best_epoch", "test_eval_seconds", "peak_rss_mib"]
PACKAGES = ("torch", "numpy", "scipy", "polars", "faiss-cpu", "implicit")


def run_benchmark(
    data: str | Path,
    out: str | Path,
    models: list[str],
    budget_minutes: float = 60.0,
    grids: dict[str, list[dict[str, Any]]] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Tune, train and test each model on `data`; write tables, plots and manifests to `out`.

    Args:
        data: a dataset folder, or a log / pre-split folder that is prepared into `out/data`
            with `api.prepare`'s defaults.
        out: the results folder.
        models: registry names; unavailable ones are reported in the table, not fatal.
        budget_minutes: training time shared evenly by the gradient-trained models.
        grids: per-model lists of option dicts (flags of `recsys train`), replacing `GRIDS`.
        seed: seed of every run.

    Returns:
        One row per model: status, options, command, and (when trained) metrics and costs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = dataset_folder(data, out)
    grids = {**GRIDS, **(grids or {})}
    classes = {}
    rows = []
    for name in models:
        try:
            classes[name] = model_class(name)
        except ConfigError as e:
            log.warning("benchmark: %s", e)
            rows.append({"model": name, "status": f"unavailable: {e}"})
    n_trainable = sum(cls.trainable for cls in classes.values())
    tune_dir = None
    for name, cls in classes.items():
        grid = grids.get(name, [{}])
        minutes = (
            budget_minutes / max(n_trainable, 1) / (len(grid) + (len(grid) > 1))
            if cls.trainable
            else 0.0
        )
        common = {"seed": seed} | ({"max_minutes": round(minutes, 3)} if cls.trainable else {})
        options, tuning = grid[0], []
        if len(grid) > 1:
            tune_dir = tune_dir or validation_only(data_dir, out / "tune-data")
            options, tuning = tune(name, grid, tune_dir, out / "tune" / name, common)
        rows.append(final_run(name, data_dir, out, common | options) | {"tuning": tuning})
    write_results(rows, out, data_dir, time.perf_counter() - started, budget_minutes)
    return rows


def dataset_folder(data: str | Path, out: Path) -> Path:
    """`data` itself if it is a dataset folder, else the folder it is prepared into."""
    data = Path(data)
    if (data / "dataset.json").is_file():
        return data
    summary = api.prepare(data, out / "data")
    log.info(
        "benchmark: prepared %s into %s (%s users, %s items)",
        data,
        out / "data",
        summary["users"],
        summary["items"],
    )
    return out / "data"


def validation_only(data_dir: Path, target: Path) -> Path:
    """A copy of the dataset without its test split, so tuning cannot see test."""
    ds = Dataset.load(data_dir)
    if ds.valid is None:
        raise ConfigError(
            f"{data_dir}: has no validation split to tune on (prepare it with --valid > 0)"
        )
    Dataset(
        ds.train, ds.valid, None, ds.users, ds.items, {**ds.meta, "tuning_copy_of": str(data_dir)}
    ).save(target)
    return target


def tune(
    name: str, grid: list[dict], tune_data: Path, tune_out: Path, common: dict
) -> tuple[dict, list[dict]]:
    """The grid point with the best validation Recall@20, and every point's score."""
    scores = []
    for i, point in enumerate(grid):
        summary = api.train(
            tune_data, tune_out / str(i), name, common | point, overwrite=True, progress=False
        )
        scores.append({"options": point, "valid_recall@20": summary["valid"]["recall@20"]})
        log.info(
            "benchmark: %s %s valid recall@20 %.4f", name, point, scores[-1]["valid_recall@20"]
        )
    best = max(scores, key=lambda s: s["valid_recall@20"])
    return best["options"], scores


def train_command(name: str, data_dir: Path, run_dir: Path, options: dict) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return [
        "train",
        str(data_dir),
        "--out",
        str(run_dir),
        "--model",
        name,
        *flags,
        "--no-progress",
        "--overwrite",
    ]


def final_run(name: str, data_dir: Path, out: Path, options: dict) -> dict:
    """Train `name` in a subprocess into out/runs/name; the table row it yields."""
    run_dir = out / "runs" / name
    args = train_command(name, data_dir, run_dir, options)
    row = {
        "model": name,
        "options": options,
        "command": shlex.join(["recsys", *args]),
        "run_dir": str(run_dir),
    }
    log_path = out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("benchmark: %s", row["command"])
    with open(log_path, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-c", "from recsys.cli import main; main()", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    if proc.returncode != 0:
        last = [line for line in log_path.read_text().splitlines() if line.strip()][-1:] or [
            "no output"
        ]
        log.warning("benchmark: %s failed: %s", name, last[0])
        return row | {"status": f"failed (exit {proc.returncode}): {last[0]}"}
    run = RunDir(run_dir)
    summary = run.read_summary()
    write_json(run_dir / "manifest.json", manifest(run, row["command"]))
    return row | {"status": "ok", "summary": summary}


def manifest(run: RunDir, command: str) -> dict:
    config = run.read_config()
    versions = {"recsys": recsys.__version__}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "command": command,
        "dataset": config["dataset"],
        "config": {"model": config["model"], "train": config["train"], "params": config["params"]},
        "seed": config["train"]["seed"],
        "device": config["device"],
        "platform": {
            "python": platform.python_version(),
            "system": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": versions,
    }


def flat_row(row: dict) -> dict:
    """One CSV/Markdown row: test metrics, costs, options and command, straight from metrics.json."""
    flat = {"model": row["model"], "status": row["status"]}
    summary = row.get("summary", {})
    flat.update({m: summary.get("test", {}).get(m) for m in TABLE_METRICS})
    flat.update({c: summary.get(c) for c in COSTS})
    flat["options"] = json.dumps(row.get("options", {}))
    flat["command"] = row.get("command", "")
    return flat


def write_results(
    rows: list[dict], out: Path, data_dir: Path, wall_seconds: float, budget_minutes: float
) -> None:
    flat = [flat_row(r) for r in rows]

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)

    if flat:
        atomic_write(out / "results.csv", write_csv)
    ok = [r for r in rows if r["status"] == "ok"]
    if ok and Dataset.load(data_dir).valid is not None:
        plot_curves(ok, out / "curves.png")
    if ok:
        plot_by_degree(ok, out / "by_degree.png")
        plot_popularity(ok, data_dir, out / "popularity.png")
    atomic_write(
        out / "results.md",
        lambda p: p.write_text(
            results_markdown(rows, flat, data_dir, wall_seconds, budget_minutes)
        ),
    )


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def results_markdown(
    rows: list[dict], flat: list[dict], data_dir: Path, wall_seconds: float, budget_minutes: float
) -> str:
    ds = Dataset.load(data_dir)
    head = [
        "model",
        *TABLE_METRICS,
        "train s",
        "s/epoch",
        "epochs to best",
        "test eval s",
        "peak RSS MiB",
    ]
    lines = [
        f"# Benchmark on `{data_dir}`",
        "",
        f"{ds.n_users:,} users, {ds.n_items:,} items, splits: "
        + ", ".join(f"{s} {getattr(ds, s).nnz:,}" for s in ds.split_names)
        + f"; dataset fingerprint `{ds.fingerprint}`. Full ranking over all items, training items excluded; "
        f"test evaluated once per model. Budget {budget_minutes:g} min; wall time {wall_seconds / 60:.1f} min.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for f in flat:
        if f["status"] != "ok":
            continue
        cells = [
            f["model"],
            *(fmt(f[m]) for m in TABLE_METRICS),
            fmt(f["train_seconds"], 1),
            fmt(f["seconds_per_epoch"], 2),
        ]
        cells += [
            fmt(f["best_epoch"]) if f["seconds_per_epoch"] is not None else "—",
            fmt(f["test_eval_seconds"], 2),
            fmt(f["peak_rss_mib"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [f for f in flat if f["status"] != "ok"]
    if missing:
        lines += ["", "Not in the table:", *(f"- **{f['model']}**: {f['status']}" for f in missing)]
    lines += ["", "## Reproduce each row", ""]
    lines += [f"- {f['model']}: `{f['command']}`" for f in flat if f["command"]]
    tuned = [r for r in rows if r.get("tuning")]
    if tuned:
        lines += ["", "## Tuning (validation Recall@20, on a copy of the data without test)", ""]
        for r in tuned:
            lines += [
                f"- {r['model']}: "
                + "; ".join(
                    f"`{json.dumps(t['options'])}` {t['valid_recall@20']:.4f}" for t in r["tuning"]
                )
            ]
    lines += [
        "",
        "![validation curves](curves.png)",
        "",
        "![by degree](by_degree.png)",
        "",
        "![popularity](popularity.png)",
        "",
    ]
    return "\n".join(lines)


def save_figure(fig, target: Path) -> None:
    atomic_write(target, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))


def plot_curves(rows: list[dict], target: Path) -> None:
    """Validation Recall@20 against epoch and against wall-clock seconds (training + validation)."""
    fig = Figure(figsize=(12, 4.5))
    by_epoch, by_time = fig.subplots(1, 2)
    for i, row in enumerate(rows):
        color = f"C{i}"
        epochs = RunDir(row["run_dir"]).read_metrics()
        if epochs:
            clock = np.cumsum([r["epoch_seconds"] + r.get("eval_seconds", 0.0) for r in epochs])
            points = [
                (r["epoch"], t, r["valid"]["recall@20"])
                for r, t in zip(epochs, clock, strict=True)
                if "valid" in r
            ]
            x_epoch, x_time, values = zip(*points, strict=True)
            by_epoch.plot(x_epoch, values, marker=".", color=color, label=row["model"])
            by_time.plot(x_time, values, marker=".", color=color, label=row["model"])
        else:
            value = row["summary"]["valid"]["recall@20"]
            by_epoch.axhline(
                value, linestyle="--", color=color, label=f"{row['model']} (fitted, no epochs)"
            )
            by_time.plot(
                [row["summary"]["train_seconds"]],
                [value],
                marker="*",
                markersize=12,
                linestyle="",
                color=color,
                label=row["model"],
            )
    by_epoch.set(
        xlabel="epoch", ylabel="validation Recall@20", title="Validation Recall@20 by epoch"
    )
    by_time.set(
        xlabel="wall-clock seconds (training + validation, log scale)",
        ylabel="validation Recall@20",
        title="Validation Recall@20 by time",
    )
    by_time.set_xscale("symlog", linthresh=1.0)
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, target)


def plot_by_degree(rows: list[dict], target: Path) -> None:
    """Test Recall@20 and NDCG@20 by quintile of the users' training degree, one bar per model."""
    groups = {
        row["model"]: api.evaluate_run(row["run_dir"], "test", KS, by_degree=True)["by_degree"]
        for row in rows
    }
    first = next(iter(groups.values()))
    labels = [f"{g['min_degree']}-{g['max_degree']}" for g in first]
    x = np.arange(len(labels))
    width = 0.8 / len(groups)
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("recall@20", "ndcg@20"), strict=True):
        for i, (model, rows_) in enumerate(groups.items()):
            ax.bar(
                x + (i - (len(groups) - 1) / 2) * width,
                [g[metric] for g in rows_],
                width,
                label=model,
                color=f"C{i}",
            )
        ax.set_xticks(x, labels)
        ax.set(
            xlabel="user training degree (quintile group, interactions)",
            ylabel=f"test {metric}",
            title=f"Test {metric} by user degree",
        )
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    save_figure(fig, target)


def plot_popularity(rows: list[dict], data_dir: Path, target: Path, k: int = 20) -> None:
    """Training popularity of the recommended items (top-k of every test user) against that of
    the training interactions themselves: how far each model leans towards the head."""
    ds = Dataset.load(data_dir)
    popularity = np.asarray(ds.train.getnnz(axis=0))
    users = np.flatnonzero(np.diff(ds.split("test" if ds.test is not None else "valid").indptr) > 0)
    bins = np.unique(
        np.concatenate([[0], np.geomspace(1, max(popularity.max(), 1) + 1, 30).astype(int)])
    )
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.hist(
        popularity[ds.train.indices],
        bins=bins,
        histtype="stepfilled",
        color="0.8",
        density=True,
        label="training interactions",
    )
    for i, row in enumerate(rows):
        trained = api.TrainedModel.load(row["run_dir"])
        items, _ = search(trained.index, trained.user_emb[users], k, ds.train, users)
        ax.hist(
            popularity[items[items >= 0]],
            bins=bins,
            histtype="step",
            linewidth=1.5,
            density=True,
            color=f"C{i}",
            label=f"{row['model']} top-{k}",
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    ax.set(
        xlabel="item popularity (training interactions, log scale)",
        ylabel="density",
        title=f"Popularity of recommended items (top-{k}) vs training",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, target)
