"""The benchmarks' datasets: prepared once from ../shared/data into a reused cache folder.

Imported by the scripts beside it (`python benchmarks/X.py` puts this folder on sys.path).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from recsys import api

# The folder beside the repository root: <parent of repo>/shared/data.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str, workdir: Path | str | None = None, **options: Any) -> Path:
    """The prepared dataset folder for ../shared/data/<name>, preparing it if needed.

    workdir: where the prepared dataset lives (default: <system temp>/recsys-bench/<name>,
    reused between runs). It is prepared only when its dataset.json is missing (the save is
    atomic, so an interrupted run leaves no half dataset). `options` go to `api.prepare`.
    Exits with a message when the source folder is absent.
    """
    target = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "recsys-bench" / name
    if not (target / "dataset.json").exists():
        source = SHARED_DATA / name
        if not source.exists():
            raise SystemExit(
                f"{source} not found: this benchmark needs ../shared/data/{name} "
                "(beside the repository root), or pass --data with a prepared dataset folder"
            )
        print(f"preparing {source} into {target}", flush=True)
        api.prepare(source, target, **options)
    return target
