"""Fold-in against training: do users the model never saw get recommendations as good as if
they had been trained in?

    python benchmarks/foldin.py [--models lightgcn,lightgcl,dccf,als] [--max-minutes 15]
        [--trained-in lightgcn=RUNDIR ...] [--workdir DIR] [--threads 1] [--data DIR]

Prepares ../shared/data/yelp-sslrec (benchmarks/bench_data.py), or takes the prepared dataset
--data, draws 10 % of the users that have training and test items (seed 0) and writes, under
--workdir (default <temp dir>/recsys-bench/foldin, or foldin-NAME for --data NAME), a copy
of the dataset whose train and valid rows of those users are empty. Each model is trained with
its defaults twice: on that reduced copy ("held out") and on the full data ("trained in",
unless --trained-in names a finished run on the same dataset).
Finished runs in the workdir are reused. Then the held-out users are folded in from their
training items (recsys.serving.Model.fold_in, one user at a time, timed) and both sides are
scored by the one evaluator on the same users' test items, training items excluded. Prints the
Recall@20 of each side, their ratio (target ≥ 0.90) and the median milliseconds per fold-in
(target ≤ 20), and the ratio over a small grid of the fold-in's (λ, α) for BPR-trained models,
which is how recsys.serving's defaults were chosen.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from bench_data import shared_dataset

from recsys import api
from recsys.atomic import claim_output
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError
from recsys.evaluate import evaluate
from recsys.serving import Model, fold_in
from recsys.threads import use_threads

K = 20
GRID = [(reg, alpha) for reg in (0.1, 1.0, 10.0) for alpha in (1.0, 10.0, 100.0)]


def holdout_dataset(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, np.ndarray]:
    """A copy of `ds` with the train and valid rows of `fraction` of the users emptied."""
    eligible = np.flatnonzero((np.diff(ds.train.indptr) > 0) & (np.diff(ds.test.indptr) > 0))
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(eligible, int(fraction * len(eligible)), replace=False))
    keep = np.ones(ds.n_users, np.float32)
    keep[held] = 0
    mask = sp.diags(keep)
    emptied = [None if m is None else sp.csr_matrix(mask @ m) for m in (ds.train, ds.valid)]
    for m in emptied:
        if m is not None:
            m.eliminate_zeros()
    meta = {**ds.meta, "held_out_users": len(held), "held_out_seed": seed}
    return Dataset(emptied[0], emptied[1], ds.test, ds.users, ds.items, meta), held


def trained_run(data: Path, out: Path, model: str, max_minutes: float) -> Path:
    if not (out / "metrics.json").is_file():
        print(f"training {model} into {out}", flush=True)
        t0 = time.perf_counter()
        api.train(data, out, model, {"max_minutes": max_minutes}, overwrite=True, progress=False)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def recall(user_emb: np.ndarray, item_emb: np.ndarray, ds: Dataset, users: np.ndarray) -> float:
    """Test Recall@K of `users` (rows of user_emb, in `users` order), train items excluded."""
    return evaluate(user_emb, item_emb, ds.train[users], ds.test[users], (K,)).metrics[
        f"recall@{K}"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lightgcn,lightgcl,dccf,als")
    parser.add_argument(
        "--data", type=Path, help="a prepared dataset folder instead of yelp-sslrec"
    )
    parser.add_argument("--max-minutes", type=float, default=15.0, help="per training run")
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained-in", action="append", default=[], metavar="MODEL=RUNDIR")
    parser.add_argument(
        "--workdir", type=Path, help="default: <temp dir>/recsys-bench/foldin[-<--data's name>]"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train-only", action="store_true", help="train the held-out runs, compare nothing"
    )
    args = parser.parse_args()
    use_threads(args.threads)
    full_dir = args.data or shared_dataset("yelp-sslrec")
    if args.workdir is None:
        suffix = f"-{args.data.resolve().name}" if args.data else ""
        args.workdir = Path(tempfile.gettempdir()) / "recsys-bench" / f"foldin{suffix}"
    full = Dataset.load(full_dir)
    reduced_dir = args.workdir / "data"
    reduced, held = holdout_dataset(full, args.holdout, args.seed)
    try:  # a folder recsys did not write is never replaced
        holds_copy = claim_output(
            reduced_dir, "dataset", reuse=True, inputs=[full_dir], flag="--workdir"
        )
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if not holds_copy:
        reduced.save(reduced_dir)
    elif Dataset.load(reduced_dir).fingerprint != reduced.fingerprint:
        # Its held-out runs were trained on another dataset, holdout or seed.
        raise SystemExit(f"{args.workdir}: holds another held-out copy; give another --workdir")
    print(f"{len(held)} of {full.n_users} users held out of training", flush=True)
    given = dict(item.split("=", 1) for item in args.trained_in)
    names = args.models.split(",")
    heldout = {
        name: trained_run(
            reduced_dir, args.workdir / "runs" / f"{name}-heldout", name, args.max_minutes
        )
        for name in names
    }
    if args.train_only:
        return

    for name in names:
        out = heldout[name]
        ref = (
            Path(given[name])
            if name in given
            else trained_run(
                full_dir, args.workdir / "runs" / f"{name}-full", name, args.max_minutes
            )
        )
        folded, trained = Model.load(out), Model.load(ref)
        if trained.dataset.fingerprint != full.fingerprint:
            raise SystemExit(f"{ref}: trained on another dataset ({trained.dataset.fingerprint})")
        history = full.train[held]
        times, vecs = [], []
        for b in range(len(held)):
            t0 = time.perf_counter()
            vecs.append(folded.fold_in(history[b]))
            times.append(time.perf_counter() - t0)
        r_fold = recall(np.concatenate(vecs), folded.item_emb, full, held)
        r_in = recall(trained.user_emb[held], trained.item_emb, full, held)
        print(
            f"{name:>9}  held-out users' test Recall@{K}: folded in {r_fold:.4f}, trained in "
            f"{r_in:.4f}, ratio {r_fold / r_in:.3f};  fold-in {1e3 * np.median(times):.2f} ms "
            f"median ({1e3 * np.percentile(times, 99):.2f} ms p99) over {len(held)} users",
            flush=True,
        )
        if name not in ("als", "mostpop"):
            y = folded.item_emb
            scale = float(np.einsum("ij,ij->", y, y)) / y.shape[1]
            grid = [
                f"λ {reg:g}, α {alpha:g}: "
                f"{recall(fold_in(y, history, reg * scale, alpha), y, full, held) / r_in:.3f}"
                for reg, alpha in GRID
            ]
            print(
                "           ratio by (λ relative to tr(YᵀY)/d, α): " + "; ".join(grid), flush=True
            )


if __name__ == "__main__":
    main()
