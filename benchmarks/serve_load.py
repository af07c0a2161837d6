"""Load test of `recsys serve`: a real server process driven by an async HTTP client.

    python benchmarks/serve_load.py [--run RUNDIR] [--requests 10000] [--clients 32]
        [--workers 1] [--index flat] [--workdir DIR]

Without --run it trains ALS with its defaults on ../shared/data/yelp-sslrec into --workdir
(default <temp dir>/recsys-bench/serve_load; reused). Starts `recsys serve RUN --threads 1` in a
subprocess (`--workers` uvicorn processes) and, with aiohttp's client (one keep-alive
connection per client; chosen over httpx's AsyncClient because the generator shares the two
cores with the server and aiohttp spends less CPU per request), first sends 1,000
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

import aiohttp
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

    async def client() -> None:
        nonlocal sent
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while sent < n:
                i = sent
                sent += 1
                if reload_run and i == n // 2:
                    t0 = time.perf_counter()
                    async with http.post(url + "/reload", json={"run": reload_run}) as r:
                        await r.read()
                        reloads.append((r.status, round(time.perf_counter() - t0, 2)))
                t0 = time.perf_counter()
                try:
                    async with http.post(
                        url + "/recommend", json={"user_id": users[i], "k": K}
                    ) as r:
                        body = await r.json()
                        if r.status != 200 or len(body["item_ids"]) != K:
                            errors.append(f"request {i}: {r.status} {str(body)[:200]}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    errors.append(f"request {i}: {e!r}")
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "latencies": latencies,
        "errors": errors,
        "wall": time.perf_counter() - t0,
        "reloads": reloads,
    }


async def health(url: str) -> dict | None:
    """/model once /health answers, None if the server is not up yet."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as r:
                if r.status != 200:
                    return None
            async with http.get(url + "/model") as r:
                return await r.json()
    except aiohttp.ClientError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--index", default="flat")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn server processes")
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
               "--index", args.index, "--threads", "1", "--workers", str(args.workers)]  # fmt: skip
    print("server:", " ".join(command[1:]), flush=True)
    server = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(600):
            info = asyncio.run(health(url))
            if info:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not come up in 60 s")
        print(f"serving {info['model']} ({info['n_users']} users, {info['n_items']} items), "
              f"index {info['index']}, {args.workers} worker(s)")  # fmt: skip
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
