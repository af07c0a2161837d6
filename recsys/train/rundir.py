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
from recsys.data.dataset import Dataset
from recsys.errors import RunError


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
        if not self.exists():
            raise RunError(
                f"{self.path}: not a run directory (no config.json); make one with 'recsys train'"
            )
        return json.loads(self.config.read_text())

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
        return [
            json.loads(line) for line in self.metrics_log.read_text().splitlines() if line.strip()
        ]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop log lines after `last_epoch` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        atomic_write(
            self.metrics_log, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        )

    def save_torch(self, target: Path, obj: dict) -> None:
        atomic_write(target, lambda p: torch.save(obj, p))

    def load_torch(self, target: Path, device: torch.device | str = "cpu") -> dict:
        if not target.is_file():
            raise RunError(f"{target}: missing; the run did not finish a checkpoint")
        return torch.load(target, map_location=device, weights_only=True)

    def save_embeddings(self, users: np.ndarray, items: np.ndarray) -> None:
        def write(p: Path) -> None:
            with open(p, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, users=users, items=items)

        atomic_write(self.embeddings, write)

    def load_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.embeddings.is_file():
            raise RunError(f"{self.embeddings}: missing; the run has not finished training")
        with np.load(self.embeddings, allow_pickle=False) as z:
            return z["users"], z["items"]

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary, summary)

    def read_summary(self) -> dict:
        if not self.summary.is_file():
            raise RunError(f"{self.summary}: missing; the run has not finished training")
        return json.loads(self.summary.read_text())
