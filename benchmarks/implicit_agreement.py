"""Do our ALS/BPR rows mean what `implicit` would say? Same factors, two evaluators.

    python benchmarks/implicit_agreement.py [--data DATASET_DIR] [--workdir DIR] [--out DIR]

Without --data it prepares ../shared/data/yelp-sslrec (beside the repository root) once into
--workdir (default <temp dir>/recsys-bench/yelp-sslrec) and reuses it.

Trains `als` and `bpr` through `recsys.api.train` (implicit fits the factors), then scores the
run's factors twice on test: with our evaluator (the table's Recall@20) and with
`implicit.evaluation.ranking_metrics_at_k(K=20)` on an implicit model holding the same factors.

The definitions differ, so the script also recomputes implicit's figures from OUR top-20:
    ours      Recall@20  = mean_u  hits_u / |T_u|                 (macro average)
    implicit  "precision" = Σ_u hits_u / Σ_u min(20, |T_u|)       (micro average)
    both      NDCG@20 = mean_u DCG_u / IDCG_u, IDCG over min(20, |T_u|) positions.
When our ranking equals implicit's, "ours → implicit's formula" matches implicit exactly, and
the remaining gap between the two headline numbers is the definition alone. Acceptance: our
Recall@20 within 5 % relative of implicit's "precision@20".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import implicit.cpu.als
import implicit.cpu.bpr
import numpy as np
import torch
from bench_data import shared_dataset
from implicit.evaluation import ranking_metrics_at_k

from recsys import api
from recsys.data.dataset import Dataset
from recsys.evaluate import evaluate
from recsys.train.rundir import RunDir

# The yardstick settings of ../shared/data/README.md (ALS tuned on valid there).
CONFIGS = {
    "als": {"dim": 64, "reg": 0.01, "alpha": 10.0, "iterations": 50},
    "bpr": {"dim": 128, "learning_rate": 0.01, "reg": 1e-3, "iterations": 200},
}
IMPLICIT_CLASS = {
    "als": implicit.cpu.als.AlternatingLeastSquares,
    "bpr": implicit.cpu.bpr.BayesianPersonalizedRanking,
}
K = 20


def implicit_model_with(model: str, users: np.ndarray, items: np.ndarray):
    """An (unfitted) implicit model of the right class carrying our factors."""
    holder = IMPLICIT_CLASS[model](factors=users.shape[1])
    holder.user_factors, holder.item_factors = users, items
    return holder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a prepared dataset folder (default: prepare ../shared/data/yelp-sslrec into --workdir)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the prepared yelp-sslrec is cached (default: <temp dir>/recsys-bench/yelp-sslrec)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsys-bench" / "implicit_agreement",
        help="where the two runs go (overwritten)",
    )
    args = parser.parse_args()
    args.data = args.data or shared_dataset("yelp-sslrec", args.workdir)
    ds = Dataset.load(args.data)
    train, test = ds.train, ds.split("test")
    n_true = np.diff(test.indptr)
    print(
        f"{args.data}: {ds.n_users} users, {ds.n_items} items, {train.nnz} train, {test.nnz} test; K={K}"
    )
    print(
        f"users with test items: {int((n_true > 0).sum())}, of which {int((n_true > K).sum())} have more than {K}"
    )
    header = f"{'model':<5} {'fit s':>6} {'our recall':>10} {'impl prec':>10} {'rel diff':>9} {'ours→impl':>10} {'our ndcg':>9} {'impl ndcg':>9} {'ours eval s':>11} {'impl eval s':>11}"
    print(header)
    for model, options in CONFIGS.items():
        summary = api.train(
            args.data,
            Path(args.out) / model,
            model,
            options | {"seed": 0},
            overwrite=True,
            progress=False,
        )
        users, items = RunDir(Path(args.out) / model).load_embeddings()
        t0 = time.perf_counter()
        ours = evaluate(users, items, train, test, (K,))
        ours_seconds = time.perf_counter() - t0
        assert abs(ours.metrics[f"recall@{K}"] - summary["test"][f"recall@{K}"]) < 1e-9, (
            "run summary disagrees"
        )
        hits = ours.per_user[f"precision@{K}"] * K
        ours_in_implicit_terms = hits.sum() / np.minimum(K, n_true[ours.users]).sum()
        t0 = time.perf_counter()
        theirs = ranking_metrics_at_k(
            implicit_model_with(model, users, items),
            train,
            test,
            K=K,
            show_progress=False,
            num_threads=torch.get_num_threads(),
        )
        theirs_seconds = time.perf_counter() - t0
        recall = ours.metrics[f"recall@{K}"]
        rel = (recall - theirs["precision"]) / theirs["precision"]
        print(
            f"{model:<5} {summary['train_seconds']:>6.1f} {recall:>10.4f} {theirs['precision']:>10.6f} {rel:>+9.2%} "
            f"{ours_in_implicit_terms:>10.6f} {ours.metrics[f'ndcg@{K}']:>9.6f} {theirs['ndcg']:>9.6f} {ours_seconds:>11.2f} {theirs_seconds:>11.2f}"
        )
        verdict = "PASS" if abs(rel) <= 0.05 else "FAIL"
        print(
            f"      {verdict}: |{rel:+.2%}| {'<=' if verdict == 'PASS' else '>'} 5 % relative; options {options}"
        )
    print(
        "ours→impl: implicit's precision formula applied to our top-20; equal to 'impl prec' means the rankings agree."
    )


if __name__ == "__main__":
    main()
