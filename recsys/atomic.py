"""Atomic writes: every file a user keeps is written beside its target, then renamed over it.

A crash or a bad input mid-write leaves the old file (or nothing), never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from recsys.errors import ConfigError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give what a plain open() would
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(target: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then move the finished file onto `target`."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_json(target: str | Path, obj: object) -> None:
    atomic_write(target, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The folders recsys writes, each recognised by the file only it writes there. Folders without
# a natural signature (benchmark results, the demo) carry a MARKER naming their kind.
MARKER = ".recsys"
SIGNATURES = {
    "dataset": ("dataset.json", ("format_version", "fingerprint")),
    "run": ("config.json", ("model", "train", "params", "dataset")),
    "tuning": ("tune.json", ("model",)),
}


def artifact_kind(folder: Path) -> str | None:
    """Which recsys artifact `folder` is (dataset, run, tuning, benchmark, demo), or None."""
    for kind, (name, keys) in SIGNATURES.items():
        found = _json_object(folder / name)
        if found is not None and all(key in found for key in keys):
            return kind
    marker = _json_object(folder / MARKER)
    return marker.get("kind") if marker else None


def write_marker(folder: Path, kind: str) -> None:
    write_json(folder / MARKER, {"kind": kind})


def _json_object(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def claim_output(
    out: str | Path,
    kind: str,
    overwrite: bool = False,
    inputs=(),
    reuse: bool = False,
    flag: str = "--out",
) -> bool:
    """Check that `out` may receive a `kind` artifact; True when it already holds one.

    Refused: a file; a non-empty folder that is not a recsys `kind` (whatever the flags: recsys
    never deletes what it did not write); the inputs themselves or a folder holding them; an
    existing `kind` without `overwrite` (unless `reuse`, for commands that continue one).
    """
    out = Path(out)
    for source in inputs:
        source = Path(source).resolve()
        target = out.resolve()
        if source == target or target in source.parents:
            raise ConfigError(f"{out}: {flag} would overwrite the input {source}; choose another")
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"{out}: exists and is a file, not a {kind} folder; choose another {flag}"
        )
    if not out.is_dir() or not any(not is_temporary(p) for p in out.iterdir()):
        return False
    found = artifact_kind(out)
    if found != kind:
        what = f"it is a recsys {found}" if found else "it holds files recsys did not write"
        raise ConfigError(
            f"{out}: exists and is not a recsys {kind} folder ({what}); recsys will not replace "
            f"it: choose another {flag}"
        )
    if not (overwrite or reuse):
        raise ConfigError(
            f"{out}: already holds a recsys {kind} folder; pass --overwrite to replace it"
        )
    return True


def claim_file(out: str | Path, overwrite: bool, inputs=(), flag: str = "--out") -> None:
    """Check that file `out` may be written: not a folder, not an input, not an existing file
    unless `overwrite`."""
    out = Path(out)
    for source in inputs:
        if Path(source).resolve() == out.resolve():
            raise ConfigError(f"{out}: {flag} is the input file; choose another")
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; {flag} takes a file name")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: exists; pass --overwrite to replace it")


@contextlib.contextmanager
def removed_on_failure(folder: str | Path) -> Iterator[Path]:
    """If `folder` does not exist yet, a failure inside the block removes what it made."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def is_temporary(path: Path) -> bool:
    """A file or folder atomic_path/atomic_dir left behind when a process was killed mid-write."""
    return path.name.startswith(".") and path.name.endswith((".tmp", ".old"))


def remove_temporaries(folder: Path) -> None:
    """Sweep what killed writes left in `folder` (only recsys's own temporary names)."""
    for path in folder.iterdir() if folder.is_dir() else ():
        if is_temporary(path):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
