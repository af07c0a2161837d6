"""Load test of `recsys serve`: a real server process driven by an async HTTP client.

    python benchmarks/serve_load.py [--run RUNDIR] [--requests 10000] [--clients 32]
        [--index flat] [--workdir DIR]

Without --run it trains ALS with its defaults on ../shared/data/yelp-sslrec into --workdir
(default <temp dir>/recsys-bench/serve_load; reused). Starts `recsys serve RUN --threads 1` in a
subprocess and, with httpx's AsyncClient (one connection per client), first sends 1,000
requests one at a time (latency without queueing), then `--requests` POST /recommend for random
known users (k 20) from `--clients` concurrent clients, with one POST /reload of the same run
when half have been sent. Prints errors, throughput, p50/p95/p99 latency of both phases, and the
in-process `Model.recommend` latency for one user at a time over the same users, measured in this
process before the server starts (so the two never share the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_data import shared_dataset

from recsys import api
from recsys.serving import Model
from recsys.threads import use_threads

K = 20


def percentiles(seconds: list[float]) -> str:
    ms = 1e3 * np.asarray(seconds)
    return "p50 {:.2f} ms, p95 {:.2f} ms, p99 {:.2f} ms".format(*np.percentile(ms, [50, 95, 99]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url: str, users: list, n: int, clients: int, reload_run: str | None) -> dict:
    """`n` requests from `clients` concurrent clients; one /reload at n/2 when `reload_run`."""
    latencies, errors, reloads = [], [], []
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < n:
            i = sent
            sent += 1
            if reload_run and i == n // 2:
                t0 = time.perf_counter()
                r = await http.post(url + "/reload", json={"run": reload_run}, timeout=300)
                reloads.append((r.status_code, time.perf_counter() - t0))
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/recommend", json={"user_id": users[i], "k": K})
                ok = r.status_code == 200 and len(r.json()["item_ids"]) == K
                if not ok:
                    errors.append(f"request {i}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"request {i}: {e!r}")
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall, "reloads": reloads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--index", default="flat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench" / "serve_load"
    )
    args = parser.parse_args()
    use_threads(1)
    run = args.run
    if run is None:
        run = args.workdir / "als"
        if not (run / "metrics.json").is_file():
            api.train(shared_dataset("yelp-sslrec"), run, "als", {}, overwrite=True, progress=False)

    model = Model.load(run, args.index)
    rng = np.random.default_rng(args.seed)
    user_idx = rng.integers(model.dataset.n_users, size=args.requests)
    users = model.dataset.users.raw(user_idx).to_list()
    times = []
    for user in users[:2000]:
        t0 = time.perf_counter()
        model.recommend(user, K)
        times.append(time.perf_counter() - t0)
    print(
        f"in-process Model.recommend, one user, k {K}: {percentiles(times)} over {len(times)} users"
    )
    del model

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "recsys", "serve", str(run), "--port", str(port),
               "--index", args.index, "--threads", "1"]  # fmt: skip
    print("server:", " ".join(command[1:]), flush=True)
    server = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not come up in 60 s")
        info = httpx.get(url + "/model").json()
        print(f"serving {info['model']} ({info['n_users']} users, {info['n_items']} items), "
              f"index {info['index']}")  # fmt: skip
        serial = asyncio.run(drive(url, users[:1000], 1000, 1, None))
        print(
            f"1 client, 1,000 requests: {len(serial['errors'])} errors, "
            f"{1000 / serial['wall']:.0f} req/s, {percentiles(serial['latencies'])}"
        )
        load = asyncio.run(drive(url, users, args.requests, args.clients, str(run)))
        print(
            f"{args.clients} clients, {args.requests:,} requests, /reload at half: "
            f"{len(load['errors'])} errors, {args.requests / load['wall']:.0f} req/s, "
            f"{percentiles(load['latencies'])}; reload {load['reloads']}"
        )
        for e in load["errors"][:5]:
            print("  error:", e)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
