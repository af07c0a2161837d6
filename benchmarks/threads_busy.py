"""Training on a busy machine: epoch time with recsys's thread choice against one thread.

    python benchmarks/threads_busy.py [--data DIR] [--model lightgcl] [--epochs 4] [--busy 2]

Starts `--busy` background processes that keep a core each busy (bounded: they stop by
themselves after the benchmark's time), then times training epochs of `--model` in fresh
`recsys train` processes under each setting, quiet and busy:
- `--threads 1` (what OMP_NUM_THREADS=1 gives: the reference),
- the default (free cores, re-checked each epoch; OpenMP waiting passively),
- `--threads` = all cores with OpenMP's spin-waiting (`OMP_WAIT_POLICY=ACTIVE`), what recsys
  did before it chose threads itself.
Prints the median epoch seconds of each and the ratio to one thread; the target is ≤ 1.5× on the
busy machine. Data: ml-100k from ../shared/data when present, else the bundled sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recsys import api
from recsys.threads import allowed_cpus

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k" / "ml-100k.inter"
SAMPLE = ROOT / "data" / "sample.csv"

BUSY_LOOP = (
    "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end: pass\n"
)


def epoch_seconds(
    data: Path, run: Path, model: str, epochs: int, threads: str | None, env: dict
) -> float:
    """Median epoch seconds of one `recsys train` process (the first epoch is warm-up)."""
    args = [sys.executable, "-m", "recsys", "train", str(data), "--out", str(run), "--model", model,
            "--epochs", str(epochs), "--patience", "0", "--no-progress", "--overwrite"]  # fmt: skip
    if model == "lightgcl":
        args += ["--negatives", "sampled"]
    if threads is not None:
        args += ["--threads", threads]
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["epoch_seconds"] for r in rows[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a prepared dataset folder")
    ap.add_argument("--model", default="lightgcl")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--busy", type=int, default=2, help="background processes keeping a core busy")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="threads-busy-"))
    data = args.data
    if data is None:
        source = ML100K if ML100K.is_file() else SAMPLE
        data = work / "data"
        api.prepare(source, data, rating_col="rating", time_col="timestamp", min_rating=4,
                    split="random:0.8", valid=0.1, seed=0)  # fmt: skip
        print(f"data: {source}")
    cores = str(len(allowed_cpus()))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    settings = {
        "--threads 1": ("1", base),
        "default (free cores, passive)": (None, base),
        f"--threads {cores}, spin-waiting": (cores, base | {"OMP_WAIT_POLICY": "ACTIVE"}),
    }
    print(f"{args.model}, {args.epochs} epochs per process, {cores} cores; median epoch seconds")
    for load in ("quiet", "busy"):
        busy = []
        if load == "busy":
            seconds = 600
            busy = [
                subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(seconds)])
                for _ in range(args.busy)
            ]
            time.sleep(1.0)
        try:
            times = {
                name: epoch_seconds(data, work / "run", args.model, args.epochs, threads, env)
                for name, (threads, env) in settings.items()
            }
        finally:
            for p in busy:
                p.kill()
        one = times["--threads 1"]
        label = f"{load} ({args.busy} busy processes)" if busy else load
        for name, t in times.items():
            print(f"  {label:<22} {name:<32} {t:8.3f} s   {t / one:5.2f}× one thread")


if __name__ == "__main__":
    main()
