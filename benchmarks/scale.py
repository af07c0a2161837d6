"""How recsys's costs grow with the log: power-law logs of 250k to 16M interactions.

Per size: generating the log, `recsys data prepare` (time and peak RSS), one epoch of each
graph model (`recsys train --epochs 1`: seconds per epoch and peak RSS from its summary, next
to `recsys.train.estimate`'s prediction), full test evaluation (`recsys evaluate`), and top-20
recommendations for every user to Parquet (`recsys recommend --users-file`). Every command runs
in its own process, timed by wall clock, its peak RSS read from os.wait4; each has a time limit
(--timeout-minutes). Each figure gets its growth exponent between consecutive sizes,
log(t2/t1) / log(n2/n1): 1 is linear, 2 quadratic. The load average (1 min) is recorded beside
every figure, since other jobs on the machine slow everything.

Writes scale.json, scale.md and scale.png (log-log) into --out, updated after every step.

    python benchmarks/scale.py --sizes 250k,1m,4m --threads 2
    python benchmarks/scale.py --sizes 16m --stages generate,prepare --work /data/scale
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from recsys.data import powerlaw_chunks
from recsys.train.estimate import estimate

STAGES = ("generate", "prepare", "train", "evaluate", "recommend")
SUFFIXES = {"k": 1_000, "m": 1_000_000}


def parse_size(text: str) -> int:
    """'250k' -> 250 000, '16m' -> 16 000 000, '5000' -> 5000."""
    text = text.strip().lower()
    scale = SUFFIXES.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def size_name(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def write_log(path: Path, n: int, seed: int) -> float:
    """Stream the power-law log to CSV chunk by chunk; returns seconds taken."""
    start = time.perf_counter()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for i, chunk in enumerate(powerlaw_chunks(n, seed)):
            chunk.write_csv(f, include_header=i == 0)
    tmp.rename(path)
    return time.perf_counter() - start


def run_cli(args: list[str], threads: int, timeout_s: float) -> dict:
    """Run `recsys ARGS` in a fresh process: wall seconds, its own peak RSS, stdout, status."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), POLARS_MAX_THREADS=str(threads))
    cmd = [sys.executable, "-m", "recsys", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        status, usage = wait_with_timeout(proc, timeout_s)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    result = {
        "command": "recsys " + " ".join(args),
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "status": status,
    }
    if status != "ok":
        result["stderr"] = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    result["stdout"] = stdout
    return result


def wait_with_timeout(proc: subprocess.Popen, timeout_s: float):
    """(status, rusage) of `proc`: "ok", "exit N" or "timeout" (then its group is killed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(code)
            return ("ok" if proc.returncode == 0 else f"exit {proc.returncode}"), usage
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            _, code, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return "timeout", usage
        time.sleep(0.2)


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def measure_size(n: int, opts: argparse.Namespace, record) -> dict:
    """Every stage for one log size; `record` is called after each stage to save progress."""
    work = opts.work / size_name(n)
    work.mkdir(parents=True, exist_ok=True)
    log, data = work / "log.csv", work / "data"
    row: dict = {"n": n}
    timeout = 60 * opts.timeout_minutes
    if "generate" in opts.stages or not log.exists():
        row["generate"] = {"seconds": round(write_log(log, n, opts.seed), 2), "load1": load1()}
        record(row)
    if "prepare" in opts.stages:
        load = load1()
        prepared = run_cli(
            [
                "data",
                "prepare",
                str(log),
                "--out",
                str(data),
                "--time-col",
                "timestamp",
                "--split",
                "random:0.8",
                "--overwrite",
                "--json",
            ],
            opts.threads,
            timeout,
        )
        row["prepare"] = dict(slim(prepared), load1=load)
        record(row)
    if not (data / "dataset.json").exists():
        return row
    header = json.loads((data / "dataset.json").read_text())
    row["users"], row["items"] = header["n_users"], header["n_items"]
    row["train_nnz"] = header["splits"]["train"]
    runs = {}
    if "train" in opts.stages:
        for model in opts.models:
            run = work / f"run-{model}"
            args = [
                "train",
                str(data),
                "--out",
                str(run),
                "--model",
                model,
                "--epochs",
                "1",
                "--threads",
                str(opts.threads),
                "--no-progress",
                "--json",
                "--overwrite",
            ]
            if opts.max_minutes:
                args += ["--max-minutes", str(opts.max_minutes)]
            load = load1()
            result = run_cli(args, opts.threads, timeout)
            entry = dict(slim(result), load1=load)
            summary = last_json(result["stdout"]) if result["status"] == "ok" else {}
            for key in ("seconds_per_epoch", "batch_size", "test_eval_seconds"):
                if key in summary:
                    entry[key] = round(summary[key], 3)
            if summary:
                entry["estimate"] = estimated(run, row, summary)
                runs[model] = run
            row[model] = entry
            record(row)
    run = next(iter(runs.values()), None)
    if run is None and "train" not in opts.stages:
        run = next((work / f"run-{m}" for m in opts.models if (work / f"run-{m}").exists()), None)
    if run is not None and "evaluate" in opts.stages:
        load = load1()
        result = run_cli(
            ["evaluate", str(run), "--split", "test", "--threads", str(opts.threads), "--json"],
            opts.threads,
            timeout,
        )
        row["evaluate"] = dict(slim(result), load1=load, run=run.name)
        record(row)
    if run is not None and "recommend" in opts.stages:
        users_file = work / "users.txt"
        users = pl.read_parquet(data / "users.parquet")["id"].cast(pl.String)
        users_file.write_text("\n".join(users.to_list()) + "\n")
        load = load1()
        result = run_cli(
            [
                "recommend",
                str(run),
                "--users-file",
                str(users_file),
                "--k",
                "20",
                "--output",
                str(work / "recs.parquet"),
                "--threads",
                str(opts.threads),
            ],
            opts.threads,
            timeout,
        )
        row["recommend"] = dict(slim(result), load1=load, run=run.name, users=len(users))
        record(row)
    return row


def slim(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "stdout"}


def estimated(run: Path, row: dict, summary: dict) -> dict:
    """recsys.train.estimate's prediction for this run, from its resolved config."""
    config = json.loads((run / "config.json").read_text())
    params, nnz, batch = config["params"], row["train_nnz"], summary["batch_size"]
    got = estimate(
        row["users"],
        row["items"],
        nnz,
        params.get("dim", 64),
        params.get("layers", 0),
        batch,
        config["model"],
        -(-nnz // batch),
    )
    return {
        "peak_rss_mib": round(got["peak_bytes"] / 2**20),
        "epoch_seconds": round(got["epoch_seconds"], 1),
    }


FIGURES = {  # label -> (stage, key)
    "generate s": ("generate", "seconds"),
    "prepare s": ("prepare", "seconds"),
    "prepare peak MiB": ("prepare", "peak_rss_mib"),
    "lightgcn epoch s": ("lightgcn", "seconds_per_epoch"),
    "lightgcn peak MiB": ("lightgcn", "peak_rss_mib"),
    "lightgcl epoch s": ("lightgcl", "seconds_per_epoch"),
    "lightgcl peak MiB": ("lightgcl", "peak_rss_mib"),
    "dccf epoch s": ("dccf", "seconds_per_epoch"),
    "dccf peak MiB": ("dccf", "peak_rss_mib"),
    "evaluate s": ("evaluate", "seconds"),
    "recommend-all s": ("recommend", "seconds"),
}


def figure(row: dict, stage: str, key: str) -> float | None:
    entry = row.get(stage)
    if not isinstance(entry, dict) or entry.get("status", "ok") != "ok":
        return None
    return entry.get(key)


def growth(rows: list[dict], stage: str, key: str) -> list[float | None]:
    """log(t2/t1)/log(n2/n1) between consecutive sizes (None where a figure is missing)."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        fa, fb = figure(a, stage, key), figure(b, stage, key)
        ok = fa and fb and fa > 0 and fb > 0 and b["n"] != a["n"]
        out.append(round(math.log(fb / fa) / math.log(b["n"] / a["n"]), 2) if ok else None)
    return out


def markdown(rows: list[dict], threads: int) -> str:
    sizes = [size_name(r["n"]) for r in rows]
    steps = [f"{a}→{b}" for a, b in zip(sizes, sizes[1:], strict=False)]
    head = ["figure", *sizes, *(f"exp {s}" for s in steps)]
    lines = [
        f"Power-law logs, `--split random:0.8`, {threads} threads. "
        "Growth exponent log(t2/t1)/log(n2/n1): 1 is linear.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    counts = [
        f"{r.get('users', '?')} / {r.get('items', '?')} / {r.get('train_nnz', '?')}" for r in rows
    ]
    lines.append("| users / items / train | " + " | ".join(counts) + " |" + " |" * len(steps))
    for label, (stage, key) in FIGURES.items():
        values = [figure(r, stage, key) for r in rows]
        if all(v is None for v in values):
            continue
        cells = [cell(r, stage, key) for r in rows]
        exps = ["" if e is None else f"{e:.2f}" for e in growth(rows, stage, key)]
        lines.append(f"| {label} | " + " | ".join(cells + exps) + " |")
    lines.append("")
    lines.append("Estimates (`recsys.train.estimate`) beside the measured epoch:")
    lines.append("")
    for r in rows:
        for model in ("lightgcn", "lightgcl", "dccf"):
            entry = r.get(model)
            if isinstance(entry, dict) and "estimate" in entry:
                est = entry["estimate"]
                lines.append(
                    f"- {size_name(r['n'])} {model}: epoch {entry.get('seconds_per_epoch')} s "
                    f"(estimated {est['epoch_seconds']} s), peak {entry['peak_rss_mib']} MiB "
                    f"(estimated {est['peak_rss_mib']} MiB), batch {entry.get('batch_size')}"
                )
    lines.append("")
    lines.append("Commands (each in its own process; load average at its start):")
    lines.append("")
    for r in rows:
        for stage in ("prepare", "lightgcn", "lightgcl", "dccf", "evaluate", "recommend"):
            entry = r.get(stage)
            if isinstance(entry, dict) and "command" in entry:
                lines.append(
                    f"- `{entry['command']}`: {entry['status']}, {entry['seconds']} s, "
                    f"{entry['peak_rss_mib']} MiB, load {entry['load1']}"
                )
    return "\n".join(lines) + "\n"


def cell(row: dict, stage: str, key: str) -> str:
    entry = row.get(stage)
    if not isinstance(entry, dict):
        return ""
    if entry.get("status", "ok") != "ok":
        return entry["status"]
    value = entry.get(key)
    return "" if value is None else f"{value:g} (load {entry.get('load1')})"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, (stage, key) in FIGURES.items():
        if key == "peak_rss_mib":
            continue
        points = [(r["n"], figure(r, stage, key)) for r in rows]
        points = [(n, v) for n, v in points if v]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if rows:
        n0 = rows[0]["n"]
        ns = [r["n"] for r in rows]
        ax.plot(ns, [n / n0 for n in ns], "k:", label="linear (from 1 s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions in the log")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250k,1m,4m,16m", help="comma-separated, e.g. 1m,4m")
    parser.add_argument("--models", default="lightgcn,lightgcl,dccf")
    parser.add_argument("--stages", default=",".join(STAGES), help=", ".join(STAGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=0, help="train's own time budget")
    parser.add_argument("--timeout-minutes", type=float, default=15, help="limit per command")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recsys-scale")
    parser.add_argument("--out", type=Path, default=None, help="report folder [WORK/report]")
    opts = parser.parse_args()
    opts.sizes = sorted(parse_size(s) for s in opts.sizes.split(","))
    opts.models = [m for m in opts.models.split(",") if m]
    opts.stages = set(opts.stages.split(","))
    out = opts.out or opts.work / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(row: dict) -> None:
        done = [r for r in rows if r["n"] != row["n"]] + [row]
        done.sort(key=lambda r: r["n"])
        report = {"threads": opts.threads, "sizes": done}
        (out / "scale.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "scale.md").write_text(markdown(done, opts.threads))
        plot(done, out / "scale.png")
        print(json.dumps(row), flush=True)

    for n in opts.sizes:
        rows.append(measure_size(n, opts, record))
        record(rows[-1])
    print((out / "scale.md").read_text())


if __name__ == "__main__":
    main()
