"""The run directory: everything a training run leaves, each file written atomically.

config.json       resolved configuration, dataset path and fingerprint
metrics.jsonl     one JSON line per epoch: loss terms, seconds, validation metrics
checkpoint.pt     last state (weights, optimizer, random generators, early-stopping state)
best.pt           weights of the best validated epoch
embeddings.npz    final user and item embeddings of the best weights
index.faiss       FAISS inner-product index over the item embeddings
metrics.json      final summary: best epoch, validation and test metrics, timings
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recsys.atomic import atomic_write, write_json
from recsys.data.dataset import Dataset, first_line, read_json_object
from recsys.errors import ConfigError, RunError


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics_log = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.embeddings = self.path / "embeddings.npz"
        self.index = self.path / "index.faiss"
        self.summary = self.path / "metrics.json"

    def exists(self) -> bool:
        return self.config.is_file()

    def started(self) -> bool:
        """Whether training got as far as a first saved state (a checkpoint or a result)."""
        return any(p.is_file() for p in (self.checkpoint, self.best, self.summary))

    def read_config(self) -> dict:
        """config.json, checked for the sections every reader relies on."""
        if not self.exists():
            raise RunError(
                f"{self.path}: not a run directory (no config.json); make one with 'recsys train'"
            )
        shape = {"model": str, "train": dict, "params": dict, "dataset": dict}
        config = read_json_object(self.config, shape, "run config", RunError)
        if not all(isinstance(config["dataset"].get(k), str) for k in ("path", "fingerprint")):
            raise RunError(f"{self.config}: 'dataset' needs its path and fingerprint")
        return config

    def run_config(self):
        """The run's resolved configuration; bad values name config.json."""
        from recsys.train.config import RunConfig

        try:
            return RunConfig.from_dict(self.read_config())
        except ConfigError as e:
            raise RunError(f"{self.config}: {e}") from None

    def write_config(self, config: dict) -> None:
        write_json(self.config, config)

    def load_dataset(self, dataset_path: str | Path | None = None) -> Dataset:
        """The run's dataset (or `dataset_path`), refused unless its fingerprint matches."""
        config = self.read_config()
        path = Path(dataset_path or config["dataset"]["path"])
        ds = Dataset.load(path)
        if ds.fingerprint != config["dataset"]["fingerprint"]:
            raise RunError(
                f"{self.path}: trained on dataset {config['dataset']['fingerprint']}, but {path} is dataset {ds.fingerprint}"
            )
        return ds

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_log, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_log.is_file():
            return []
        rows = []
        for n, line in enumerate(self.metrics_log.read_bytes().splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                row = {}
            if row is not None and not (
                isinstance(row, dict) and isinstance(row.get("epoch"), int)
            ):
                raise RunError(f"{self.metrics_log}: line {n} is not an epoch record")
            if row is not None:
                rows.append(row)
        return rows

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop log lines after `last_epoch` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        atomic_write(
            self.metrics_log, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        )

    def save_torch(self, target: Path, obj: dict) -> None:
        atomic_write(target, lambda p: torch.save(obj, p))

    def load_torch(self, target: Path, device: torch.device | str = "cpu") -> dict:
        """A checkpoint, read without unpickling code (weights_only)."""
        if not target.is_file():
            raise RunError(f"{target}: missing; the run did not finish a checkpoint")
        try:
            found = torch.load(target, map_location=device, weights_only=True)
        except Exception as e:  # truncated zip, foreign pickle, wrong format
            raise RunError(f"{target}: unreadable checkpoint ({first_line(e)})") from None
        if not isinstance(found, dict):
            raise RunError(f"{target}: not a recsys checkpoint")
        return found

    def load_weights(self, model: torch.nn.Module, target: Path, state: dict | None = None) -> None:
        """Put `target`'s weights (or its `state` already read) into `model`, refusing keys
        or shapes that do not match and values that are not finite."""
        state = (
            self.load_torch(target, next(model.parameters(), torch.empty(0)).device)
            if state is None
            else state
        )
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise RunError(f"{target}: does not fit the model ({first_line(e)})") from None
        if any(
            not torch.isfinite(t).all()
            for t in model.state_dict().values()
            if t.is_floating_point()
        ):
            raise RunError(f"{target}: holds non-finite weights")

    def save_embeddings(self, users: np.ndarray, items: np.ndarray) -> None:
        def write(p: Path) -> None:
            with open(p, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, users=users, items=items)

        atomic_write(self.embeddings, write)

    def load_embeddings(self, ds: Dataset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """User and item embeddings, checked: 2-d, finite, one dimension, and (given the
        dataset) one row per user and per item."""
        if not self.embeddings.is_file():
            raise RunError(f"{self.embeddings}: missing; the run has not finished training")
        try:
            with np.load(self.embeddings, allow_pickle=False) as z:
                users, items = z["users"], z["items"]
        except Exception as e:
            raise RunError(f"{self.embeddings}: unreadable ({first_line(e)})") from None
        problem = None
        if users.ndim != 2 or items.ndim != 2 or users.dtype.kind != "f" or items.dtype.kind != "f":
            problem = "arrays are not 2-d floats"
        elif users.shape[1] != items.shape[1]:
            problem = f"user and item dimensions differ ({users.shape[1]} vs {items.shape[1]})"
        elif ds is not None and (len(users), len(items)) != (ds.n_users, ds.n_items):
            problem = f"{len(users)} users × {len(items)} items, the dataset has {ds.n_users} × {ds.n_items}"
        elif not (np.isfinite(users).all() and np.isfinite(items).all()):
            problem = "holds NaN or infinite values"
        if problem:
            raise RunError(f"{self.embeddings}: {problem}")
        return users.astype(np.float32, copy=False), items.astype(np.float32, copy=False)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary, summary)

    def read_summary(self) -> dict:
        if not self.summary.is_file():
            raise RunError(f"{self.summary}: missing; the run has not finished training")
        return read_json_object(self.summary, {}, "summary", RunError)
