"""LightGCN on gowalla-lightgcn with the paper's settings, and the evaluator's overhead.

Prints, in one run:
  * training: seconds per epoch, epochs done in the budget, test Recall@20 / NDCG@20 against
    the LightGCN paper's 0.1830 / 0.1554 (3 layers, d=64, lr 1e-3, batch 2048, reg 1e-4);
  * evaluation: full ranking of all test users (median of --repeats) against the bare
    score matmul + top-k over the same embeddings and user blocks, and their ratio.

    python benchmarks/gowalla_lightgcn.py --minutes 30
    python benchmarks/gowalla_lightgcn.py --minutes 0        # evaluator timing only (untrained)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_data import shared_dataset

from recsys import api
from recsys.data.dataset import Dataset
from recsys.evaluate import evaluate
from recsys.train.config import resolve_config
from recsys.train.loop import build_model
from recsys.train.rundir import RunDir

PAPER = {"recall@20": 0.1830, "ndcg@20": 0.1554}


def bare_topk_seconds(
    users: torch.Tensor, items: torch.Tensor, rows: np.ndarray, k: int, block: int
) -> float:
    """Only the unavoidable work: score matmul and top-k, in the evaluator's user blocks."""
    t0 = time.perf_counter()
    for start in range(0, len(rows), block):
        scores = users[torch.from_numpy(rows[start : start + block])] @ items.T
        scores.topk(k, dim=1)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=30.0,
        help="training budget (0: evaluate untrained embeddings)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timing repetitions (median reported)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the dataset and run go (default: the run in a fresh temp dir, the dataset in a reused one)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a prepared gowalla dataset folder (default: prepare it from ../shared)",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gowalla-"))
    run_dir = work / "lightgcn"
    # valid=0: the published split, train.txt / test.txt as given.
    data_dir = args.data or shared_dataset(
        "gowalla-lightgcn", args.workdir / "data" if args.workdir else None, valid=0
    )
    ds = Dataset.load(data_dir)
    print(
        f"gowalla-lightgcn: {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} train, {ds.test.nnz} test"
    )
    options = {
        "layers": 3,
        "dim": 64,
        "lr": 1e-3,
        "batch_size": 2048,
        "reg": 1e-4,
        "device": args.device,
    }

    if args.minutes > 0:
        t0 = time.perf_counter()
        summary = api.train(
            data_dir,
            run_dir,
            "lightgcn",
            {**options, "epochs": 1000, "max_minutes": args.minutes},
            overwrite=True,
        )
        wall = time.perf_counter() - t0
        test = summary["test"]
        print(
            f"trained {summary['epochs']} epochs in {wall / 60:.1f} min ({summary['seconds_per_epoch']:.1f} s/epoch median)"
        )
        for m in ("recall@20", "ndcg@20"):
            print(
                f"  test {m}: {test[m]:.4f}   paper {PAPER[m]:.4f}   ({test[m] / PAPER[m]:.0%} of the paper, which trains ~1000 epochs)"
            )
        device = torch.device(
            "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
        )
        users, items = (torch.from_numpy(a).to(device) for a in RunDir(run_dir).load_embeddings())
    else:
        config = resolve_config("lightgcn", ("benchmark", {**options, "device": "cpu"}))
        model, graph, _ = build_model(config, ds, torch.device("cpu"))
        with torch.no_grad():
            users, items = model.final_embeddings(graph)

    rows = np.flatnonzero(np.diff(ds.test.indptr) > 0)
    block = max(1, 256 * 2**20 // (4 * ds.n_items))  # the evaluator's default block
    full, bare = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        evaluate(users, items, ds.train, ds.test, (20,))
        full.append(time.perf_counter() - t0)
        bare.append(bare_topk_seconds(users, items, rows, 20, block))
    f, b = statistics.median(full), statistics.median(bare)
    print(
        f"evaluation of {len(rows)} users (median of {args.repeats}): full {f:.2f} s, bare matmul+top-k {b:.2f} s, ratio {f / b:.2f} (target <= 1.3)"
    )


if __name__ == "__main__":
    main()
