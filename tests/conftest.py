"""Shared fixtures: a prepared synthetic dataset, and the benchmark data when it is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys import api

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a clean skip where the benchmark data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"benchmark data not present: {path}")
    return path


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A small prepared dataset (300 users, 120 items, planted intents) with train/valid/test."""
    root = tmp_path_factory.mktemp("synth")
    api.synth(root / "log.csv", n_users=300, n_items=120, n_intents=4, seed=1)
    api.prepare(
        root / "log.csv",
        root / "data",
        rating_col="rating",
        time_col="timestamp",
        split="random:0.8",
        valid=0.15,
        seed=0,
    )
    return root / "data"
