"""One-command benchmark: tune every model on validation within a budget, test each once.

    >>> from recsys.benchmark import run_benchmark
    >>> run_benchmark("data/sample.csv", "results/sample", ["mostpop", "als", "lightgcn"], budget_minutes=3)

Each model is tuned by `recsys.tune.tune`, in process (Optuna TPE on the validation split,
median pruning; the model's defaults are the first trial), with the benchmark's `--threads`;
its row records the `recsys tune` command that reproduces it. Peak RSS is the process's
high-water mark so far, so it bounds a model's own from above. The budget is shared: the closed-form baselines (ALS, BPR)
take at most a minute each, MostPop one trial, and the gradient-trained models split the rest
evenly (whatever a model leaves unused goes to the ones after it). The best trial of each model
is its row; test is evaluated once, for that trial only. A row whose best validation Recall@20
never rose above MostPop's is flagged, in the table and in the log.

The results folder holds `results.md`, `results.csv`, `curves.png`, `by_degree.png`,
`popularity.png`, `data/` (when given a log), `tune/<model>/` (the study, every finished trial's
run directory, `best.toml`; the best run holds a `manifest.json`: data and split fingerprint,
config, seed, package versions, device).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Figure, not pyplot: no global backend or state, so a notebook's inline backend stays as it was.
from matplotlib.figure import Figure

import recsys
from recsys import api
from recsys.atomic import atomic_write, claim_output, removed_on_failure, write_json, write_marker
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, RecsysError
from recsys.evaluate import evaluate
from recsys.index import search
from recsys.models import model_class
from recsys.train.rundir import RunDir

log = logging.getLogger("recsys")

KS = (10, 20, 40)
TABLE_METRICS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit") for k in KS] + [
    "coverage@20"
]
COSTS = ["train_seconds", "seconds_per_epoch", "best_epoch", "test_eval_seconds", "peak_rss_mib"]
PACKAGES = ("torch", "numpy", "scipy", "polars", "faiss-cpu", "implicit", "optuna")
#: minutes of search for a closed-form baseline (a trial takes seconds)
BASELINE_MINUTES = 1.0


def run_benchmark(
    data: str | Path,
    out: str | Path,
    models: list[str],
    budget_minutes: float = 60.0,
    seed: int = 0,
    threads: int | None = None,
) -> list[dict]:
    """Tune, select and test each model on `data`; write tables, plots and manifests to `out`.

    Args:
        data: a dataset folder with a validation split, or a log / pre-split folder that is
            prepared into `out/data` with `api.prepare`'s defaults.
        out: the results folder.
        models: registry names; unavailable ones are reported in the table, not fatal.
        budget_minutes: tuning time for all models together (see the module docstring).
        seed: seed of every study and run.
        threads: threads of every subprocess (None: each uses the cores left free).

    Returns:
        One row per model: status, chosen options, how they were chosen, the commands, and
        (when trained) metrics and costs.
    """
    if budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {budget_minutes}")
    classes, rows = {}, []
    for name in models:
        try:
            classes[name] = model_class(name)
        except ConfigError as e:
            log.warning("benchmark: %s", e)
            rows.append({"model": name, "status": f"unavailable: {e}"})
    if not classes:
        raise ConfigError(f"no model to benchmark among {', '.join(models) or 'none given'}")
    out = Path(out)
    claim_output(out, "benchmark", reuse=True, inputs=[data])
    with removed_on_failure(out):
        return benchmark_into(out, data, classes, rows, budget_minutes, seed, threads)


def benchmark_into(out, data, classes, rows, budget_minutes, seed, threads) -> list[dict]:
    write_marker(out, "benchmark")
    started = time.perf_counter()
    data_dir = dataset_folder(data, out)
    ds = Dataset.load(data_dir)
    if ds.valid is None:
        raise ConfigError(
            f"{data_dir}: has no validation split to tune on (prepare it with --valid > 0)"
        )
    floor = mostpop_valid_recall(ds)
    deadline = started + 60 * budget_minutes
    for i, (name, cls) in enumerate(classes.items()):
        left = max((deadline - time.perf_counter()) / 60, 0.05)
        gradient_models_left = sum(c.trainable for c in list(classes.values())[i:])
        if not cls.search_space:
            minutes = 0.1
        elif not cls.trainable:
            minutes = min(BASELINE_MINUTES, left / max(len(classes) - i, 1))
        else:
            reserve = sum(
                BASELINE_MINUTES for c in list(classes.values())[i + 1 :] if not c.trainable
            )
            minutes = max((left - reserve) / gradient_models_left, 0.05)
        row = tuned_run(name, data_dir, out, minutes, seed, threads)
        best_valid = row.get("summary", {}).get("valid", {}).get("recall@20")
        if best_valid is not None and best_valid <= floor and name != "mostpop":
            row["flag"] = f"validation Recall@20 never above MostPop's {floor:.4f}"
            log.warning("benchmark: %s: %s (best %.4f)", name, row["flag"], best_valid)
        rows.append(row)
    write_results(rows, out, data_dir, time.perf_counter() - started, budget_minutes, floor)
    return rows


def dataset_folder(data: str | Path, out: Path) -> Path:
    """`data` itself if it is a dataset folder, else the folder it is prepared into."""
    data = Path(data)
    if (data / "dataset.json").is_file():
        return data
    summary = api.prepare(data, out / "data", overwrite=True)
    log.info(
        "benchmark: prepared %s into %s (%s users, %s items)",
        data,
        out / "data",
        summary["users"],
        summary["items"],
    )
    return out / "data"


def mostpop_valid_recall(ds: Dataset) -> float:
    """The floor every model must clear: MostPop's validation Recall@20."""
    popularity = torch.from_numpy(np.asarray(ds.train.getnnz(axis=0), np.float32))
    # rank, not count, as MostPop itself: equal counts keep the lower index first
    order = np.lexsort((np.arange(ds.n_items), -popularity.numpy()))
    score = np.empty(ds.n_items, np.float32)
    score[order] = np.arange(ds.n_items, 0, -1, dtype=np.float32)
    users = np.ones((ds.n_users, 1), np.float32)
    return evaluate(users, score[:, None], ds.train, ds.valid, (20,)).metrics["recall@20"]


def tuned_run(
    name: str, data_dir: Path, out: Path, minutes: float, seed: int, threads: int | None
) -> dict:
    """`recsys tune` for `name`, in process; the table row of its best trial (and the
    command that reproduces it)."""
    from recsys import tune as tuning
    from recsys.threads import use_threads

    tune_dir = out / "tune" / name
    args = [
        "tune", str(data_dir), "--model", name, "--out", str(tune_dir),
        "--budget-minutes", f"{minutes:.3g}", "--seed", str(seed), "--overwrite",
    ]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    row: dict[str, Any] = {"model": name, "tune_command": shlex.join(["recsys", *args])}
    log.info("benchmark: %s", row["tune_command"])
    use_threads(threads)
    try:
        study = tuning.tune(data_dir, tune_dir, name, minutes, None, None, {}, seed, True)
    except RecsysError as e:
        log.warning("benchmark: %s failed: %s", name, e)
        return row | {"status": f"failed: {e}"}
    best = study["best"]
    if best is None:
        return row | {"status": f"no trial finished in {minutes:.2g} minutes"}
    run = RunDir(best["run_dir"])
    summary = run.read_summary() | {"test": best["test"]}
    command = shlex.join(
        ["recsys", "train", str(data_dir), "--out", f"runs/{name}", "--config", best["config"]]
    )
    write_json(run.path / "manifest.json", manifest(run, command))
    counts = study["trials"]
    gain = best["gain_over_defaults"]
    chosen = (
        f"TPE, {sum(counts.values())} trials ({counts.get('pruned', 0)} pruned), {minutes:.2g} min"
        if best["options"]
        else "defaults (nothing to tune)"
    )
    if gain and gain["trial"] != best["trial"]:
        chosen += f"; defaults kept (best trial {gain['mean']:+.4f} ± {gain['se']:.4f}: noise)"
    return row | {
        "status": "ok",
        "options": best["options"],
        "chosen_by": chosen,
        "command": command,
        "run_dir": str(run.path),
        "summary": summary,
    }


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
    """One CSV/Markdown row: test metrics, costs, setting and commands, from the run and study."""
    flat = {"model": row["model"], "status": row["status"]}
    summary = row.get("summary", {})
    flat.update({m: (summary.get("test") or {}).get(m) for m in TABLE_METRICS})
    flat["valid_recall@20"] = summary.get("valid", {}).get("recall@20")
    flat.update({c: summary.get(c) for c in COSTS})
    flat["flag"] = row.get("flag", "")
    flat["options"] = json.dumps(row.get("options", {}))
    flat["chosen_by"] = row.get("chosen_by", "")
    flat["command"] = row.get("command", "")
    flat["tune_command"] = row.get("tune_command", "")
    return flat


def write_results(
    rows: list[dict],
    out: Path,
    data_dir: Path,
    wall_seconds: float,
    budget_minutes: float,
    floor: float,
) -> None:
    flat = [flat_row(r) for r in rows]

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)

    atomic_write(out / "results.csv", write_csv)
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        plot_curves(ok, out / "curves.png", floor)
        plot_by_degree(ok, out / "by_degree.png")
        plot_popularity(ok, data_dir, out / "popularity.png")
    atomic_write(
        out / "results.md",
        lambda p: p.write_text(
            results_markdown(flat, data_dir, wall_seconds, budget_minutes, floor)
        ),
    )


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def setting(options_json: str) -> str:
    """The chosen options, compactly: `lr 0.005, layers 3`."""
    options = json.loads(options_json)
    return (
        ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items()
        )
        or "defaults"
    )


def results_markdown(
    flat: list[dict], data_dir: Path, wall_seconds: float, budget_minutes: float, floor: float
) -> str:
    ds = Dataset.load(data_dir)
    head = [
        "model",
        *TABLE_METRICS,
        "valid R@20",
        "train s",
        "s/epoch",
        "epochs to best",
        "peak RSS MiB",
        "setting (chosen on validation)",
        "chosen by",
    ]
    lines = [
        f"# Benchmark on `{data_dir}`",
        "",
        f"{ds.n_users:,} users, {ds.n_items:,} items, splits: "
        + ", ".join(f"{s} {getattr(ds, s).nnz:,}" for s in ds.split_names)
        + f"; dataset fingerprint `{ds.fingerprint}`. Full ranking over all items, training items "
        "excluded. Every model tuned on validation (Optuna TPE, its defaults the first trial), "
        f"test evaluated once for the chosen trial. Budget {budget_minutes:g} min; wall time "
        f"{wall_seconds / 60:.1f} min. MostPop's validation Recall@20: {floor:.4f}; a ⚠ marks a "
        "model whose validation never rose above it.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for f in flat:
        if f["status"] != "ok":
            continue
        cells = [
            f["model"] + (" ⚠" if f["flag"] else ""),
            *(fmt(f[m]) for m in TABLE_METRICS),
            fmt(f["valid_recall@20"]),
            fmt(f["train_seconds"], 1),
            fmt(f["seconds_per_epoch"], 2),
            fmt(f["best_epoch"]) if f["seconds_per_epoch"] is not None else "—",
            fmt(f["peak_rss_mib"], 0),
            setting(f["options"]),
            f["chosen_by"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [f for f in flat if f["flag"]]
    if flagged:
        lines += ["", "Flagged:", *(f"- ⚠ **{f['model']}**: {f['flag']}" for f in flagged)]
    missing = [f for f in flat if f["status"] != "ok"]
    if missing:
        lines += ["", "Not in the table:", *(f"- **{f['model']}**: {f['status']}" for f in missing)]
    lines += ["", "## Reproduce each row", ""]
    lines += [
        f"- {f['model']}: `{f['command']}` (chosen by `{f['tune_command']}`)"
        for f in flat
        if f["command"]
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


def plot_curves(rows: list[dict], target: Path, floor: float) -> None:
    """Validation Recall@20 against epoch and against wall-clock seconds (training + validation),
    with MostPop's as the floor."""
    fig = Figure(figsize=(12, 4.5))
    by_epoch, by_time = fig.subplots(1, 2)
    for ax in (by_epoch, by_time):
        ax.axhline(floor, linestyle=":", color="0.4", label="MostPop (floor)")
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
