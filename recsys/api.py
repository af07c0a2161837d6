"""The library's front door: prepare data, train, evaluate and recommend, as plain functions.

The CLI and the notebook call these and nothing below them.

    >>> from recsys import api
    >>> api.prepare("data/sample.csv", "runs/sample-data", rating_col="rating", min_rating=4)
    >>> api.train("runs/sample-data", "runs/lgcn", "lightgcn", {"epochs": 20})
    >>> api.evaluate_run("runs/lgcn", split="test")["metrics"]["recall@20"]
    >>> TrainedModel.load("runs/lgcn").recommend(["u0001", "u0002"], k=10)  # a table
    >>> Model.load("runs/lgcn").recommend_history(["i0007", "i0042"], k=10)  # (ids, scores)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys.atomic import (
    atomic_dir,
    atomic_write,
    claim_file,
    claim_output,
    remove_temporaries,
    write_marker,
)
from recsys.data.dataset import Dataset
from recsys.data.prepare import describe, prepare_dataset
from recsys.data.synth import synth_log
from recsys.errors import ConfigError, RunError
from recsys.evaluate import evaluate, metrics_by_degree
from recsys.models import model_class
from recsys.serving import Model
from recsys.serving import build_run_index as build_run_index  # `recsys index build`
from recsys.train import distributed, loop
from recsys.train.config import RunConfig, read_config_file, resolve_config
from recsys.train.rundir import RunDir

log = logging.getLogger("recsys")


def prepare(source: str | Path, out: str | Path, overwrite: bool = False, **options: Any) -> dict:
    """Read a log (or pre-split folder), filter and split it, save the dataset folder; returns its summary.

    `out` must be new, empty, or (with `overwrite`) a dataset folder; the new one is built
    beside it and swapped in, so a failure leaves the previous dataset.
    """
    claim_output(out, "dataset", overwrite, inputs=[source])
    ds = prepare_dataset(source, **options)
    ds.save(out)
    return describe(ds)


def info(dataset_dir: str | Path) -> dict:
    return describe(Dataset.load(dataset_dir))


def synth(out: str | Path, overwrite: bool = False, **options: Any) -> dict:
    """Write a synthetic interaction log with planted intents as CSV; returns its counts."""
    out = Path(out)
    claim_file(out, overwrite)
    writers = {
        ".csv": pl.DataFrame.write_csv,
        ".tsv": lambda df, p: df.write_csv(p, separator="\t"),
        ".parquet": pl.DataFrame.write_parquet,
    }
    if out.suffix not in writers:
        raise ConfigError(f"{out}: unsupported extension (use .csv, .tsv or .parquet)")
    log = synth_log(**options).log
    atomic_write(out, lambda p: writers[out.suffix](log, p))
    return {
        "path": str(out),
        "interactions": log.height,
        "users": log["user_id"].n_unique(),
        "items": log["item_id"].n_unique(),
    }


def train(
    dataset_dir: str | Path,
    out: str | Path,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a model on a prepared dataset into run directory `out`; returns the final summary.

    Options come from `config_file` (TOML/JSON, flat keys or [train]/[params] tables, may name
    the model) and then `options`, which win. `out` must be new, empty, a run that never
    reached its first checkpoint (restarted in place), or, with `overwrite`, a run (the new one
    is trained beside it and swapped in at the end, so a failure leaves the old run). With
    `resume`, the saved configuration is continued; only RESUMABLE options may change.
    """
    run = RunDir(out)
    ds = Dataset.load(dataset_dir)
    if resume:
        if overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: pass one")
        return resume_run(run, ds, dataset_dir, model, options, config_file, progress)
    if distributed.world()[0] > 0:  # torchrun: rank 0 claims and writes the run
        config = resolve(model, ds, options, config_file)
        return loop.train(ds, dataset_dir, config, run.path, progress=False)
    holds_run = claim_output(run.path, "run", reuse=True, inputs=[dataset_dir])
    remove_temporaries(run.path)  # ours (claimed above): what a killed write left behind
    if holds_run and run.started() and not overwrite:
        raise RunError(
            f"{run.path}: already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    config = resolve(model, ds, options, config_file)
    if holds_run and run.started():
        with atomic_dir(run.path) as beside:
            return loop.train(ds, dataset_dir, config, beside, progress=progress)
    existed = run.path.exists()
    try:
        return loop.train(ds, dataset_dir, config, run.path, progress=progress)
    except BaseException:
        if not run.started():  # nothing to resume: leave the folder as it was (absent or empty)
            if existed:
                for child in run.path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run.path, ignore_errors=True)
        raise


def resolve(model, ds, options, config_file) -> RunConfig:
    """A new run's configuration: model defaults, the dataset's, the file's, the command line's."""
    file_options = read_config_file(config_file) if config_file else {}
    model = model or file_options.get("model")
    file_options.pop("model", None)
    if not model:
        raise ConfigError("no model given: pass --model or set 'model' in the config file")
    return resolve_config(
        model,
        ("dataset", model_class(model).data_defaults(ds.train)),
        (str(config_file), file_options),
        ("command line", options or {}),
    )


# Options a resumed run may change: they bound or schedule the loop, and shape no saved state.
RESUMABLE = ("epochs", "patience", "min_epochs", "max_minutes", "eval_every", "device")


def resume_run(run, ds, dataset_dir, model, options, config_file, progress) -> dict:
    """Continue `run` from its last checkpoint, applying changes to RESUMABLE options only."""
    saved = run.read_config()
    writer = distributed.world()[0] == 0  # under torchrun, rank 0 alone writes the run
    if writer:
        remove_temporaries(run.path)
    if saved["dataset"]["fingerprint"] != ds.fingerprint:
        raise RunError(
            f"{run.path}: was trained on dataset {saved['dataset']['fingerprint']}, not {dataset_dir} ({ds.fingerprint})"
        )
    if model and model != saved["model"]:
        raise ConfigError(
            f"{run.path}: is a {saved['model']!r} run; --resume cannot change --model"
        )
    if not run.checkpoint.is_file() and not run.started():
        raise RunError(f"{run.path}: has no checkpoint to resume; start it again without --resume")
    requested = read_config_file(config_file) if config_file else {}
    requested.pop("model", None)
    before = run.run_config()
    config = resolve_config(
        saved["model"],
        ("config.json", {**saved["train"], **saved["params"]}),
        (str(config_file), requested),
        ("command line", options or {}),
    )
    old, new = before.to_dict(), config.to_dict()
    changed = [k for part in ("train", "params") for k in new[part] if new[part][k] != old[part][k]]
    locked = [k for k in changed if k not in RESUMABLE]
    if locked:
        raise ConfigError(
            f"--resume cannot change {', '.join(locked)} (only {', '.join(RESUMABLE)} may change); "
            "start a new run with --overwrite or another --out"
        )
    if changed and writer:
        run.write_config({**saved, "train": new["train"]})
        log.info("resuming with %s", ", ".join(f"{k}={new['train'][k]}" for k in changed))
    return loop.train(
        ds, dataset_dir, config, run.path, resume=run.checkpoint.is_file(), progress=progress
    )


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    ks: tuple[int, ...] = (10, 20, 40),
    by_degree: bool = False,
    exclude_valid: bool = False,
    dataset_dir: str | Path | None = None,
) -> dict:
    """Full-ranking metrics of a finished run on one split (training items always excluded;
    validation items too when testing with `exclude_valid`)."""
    if split not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {split!r}")
    run = RunDir(run_dir)
    ds = run.load_dataset(dataset_dir)
    users, items = run.load_embeddings(ds)
    seen = ds.train
    if exclude_valid and split == "test" and ds.valid is not None:
        seen = ds.train + ds.valid
    result = evaluate(users, items, seen, ds.split(split), ks, progress=True)
    out = {"run": str(run.path), "split": split, "metrics": result.metrics}
    if by_degree:
        out["by_degree"] = metrics_by_degree(result, ds.train)
    return out


class TrainedModel:
    """A finished run, ready to serve, as a table: a thin wrapper of `recsys.serving.Model`.

    `recommend` returns one row per (user, rank); everything else (`recommend_history`,
    `similar_items`, `save`, `dataset`, `index`, ...) is the wrapped Model's.
    """

    def __init__(self, model: Model):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    @classmethod
    def load(cls, run_dir: str | Path, index_kind: str = "flat") -> TrainedModel:
        return cls(Model.load(run_dir, index_kind))

    def recommend(self, user_ids: list, k: int = 20, explain: bool = False) -> pl.DataFrame:
        """One row per (user, rank): user_id, rank (1-based), item_id, score[, explanation].

        Train and valid items are excluded."""
        user_idx = self.dataset.users.index(user_ids)
        ids, scores = self.model.recommend(list(user_ids), k)
        valid = np.isfinite(scores)
        rows = np.repeat(np.arange(len(user_idx)), valid.sum(1))
        frame = pl.DataFrame(
            {
                "user_id": self.dataset.users.raw(user_idx[rows]),
                "rank": np.concatenate([np.arange(1, n + 1) for n in valid.sum(1)]).astype(np.int32)
                if len(rows)
                else np.zeros(0, np.int32),
                "item_id": pl.Series(ids[valid].tolist(), dtype=self.dataset.items.ids.dtype),
                "score": scores[valid],
            }
        )
        if explain:
            items = np.where(valid, 0, -1)
            items[valid] = self.dataset.items.index(frame["item_id"])
            notes = self.explain(user_idx, items)
            frame = frame.with_columns(
                pl.Series(
                    "explanation",
                    [json.dumps(n) for row, v in zip(notes, valid) for n, ok in zip(row, v) if ok],
                )
            )
        return frame

    def explain(self, user_idx: np.ndarray, items: np.ndarray) -> list[list[dict]]:
        """Per recommended item, the model's own account of its score (models with `explain`)."""
        config = self.run.run_config()
        model, graph, _ = loop.build_model(config, self.dataset, torch.device("cpu"))
        if not hasattr(model, "explain"):
            raise RunError(
                f"{self.run.path}: model {config.model!r} cannot explain its scores (--explain needs an intent model: dccf)"
            )
        self.run.load_weights(model, self.run.best)
        model.eval()
        with torch.no_grad():
            return model.explain(graph, torch.tensor(user_idx), torch.tensor(np.maximum(items, 0)))


def recommend_all(
    run_dir: str | Path,
    out: str | Path,
    k: int = 20,
    index_kind: str = "flat",
    block_users: int = 50_000,
    overwrite: bool = False,
) -> dict:
    """Top-k for every user of the run, streamed by blocks of users into partitioned Parquet
    (`out/part-00000.parquet`, …: one block's table in memory at a time). The folder is built
    beside `out` and swapped in, so a failure leaves the previous one."""
    from tqdm import tqdm

    claim_output(out, "recommendations", overwrite)
    trained = TrainedModel.load(run_dir, index_kind)
    ids = trained.dataset.users.ids
    starts = range(0, len(ids), block_users)
    rows = 0
    with atomic_dir(out) as tmp:
        write_marker(tmp, "recommendations")
        for part, start in enumerate(tqdm(starts, desc="recommending", unit="block", leave=False,
                                          disable=not sys.stderr.isatty())):  # fmt: skip
            frame = trained.recommend(ids[start : start + block_users].to_list(), k)
            frame.write_parquet(tmp / f"part-{part:05d}.parquet")
            rows += frame.height
    return {"path": str(out), "users": len(ids), "recommendations": rows, "parts": len(starts)}


def write_table(frame: pl.DataFrame, out: str | Path) -> None:
    """Write a result table atomically as .csv, .parquet or .json (records)."""
    out = Path(out)
    writers = {
        ".csv": lambda p: frame.write_csv(p),
        ".parquet": lambda p: frame.write_parquet(p),
        ".json": lambda p: p.write_text(json.dumps(frame.to_dicts(), indent=1, default=str) + "\n"),
    }
    if out.suffix not in writers:
        raise ConfigError(f"{out}: unsupported output extension (use .csv, .parquet or .json)")
    atomic_write(out, writers[out.suffix])
