"""DCCF on yelp-sslrec: epoch time against its floor, evaluation cost, memory, accuracy over time.

    python benchmarks/dccf_yelp.py                       # paper defaults (batch 10240, lr 1e-3)
    python benchmarks/dccf_yelp.py --batch-size 4096 --lr 5e-3 --minutes 20
    python benchmarks/dccf_yelp.py --smoke               # a minute: one epoch, small trade table

The floor of a step is its unavoidable dense and sparse products, timed alone on the same
shapes: per layer the graph hop (forward and backward: 4 sparse products) and the two learned
hops (per view 3 sampled products for the cosines and ∂w, 6 sparse products for the hop, ∂E, ∂h),
the 2·L·2 intent GEMM pairs x C, softmax(·) Cᵀ (forward and backward), and the 3 InfoNCE GEMMs
per (layer, side) at the batch's distinct-node counts, in row blocks of whichever size is
fastest for them (2^19..2^23 score entries; the model uses 2^22). Everything else (softmax,
exp, masks, degrees, gathers, Adam, sampling) is overhead counted in the epoch but not the floor.

Validation and test Recall@20 are printed after every `--eval-every` epochs for the curve
only; nothing is selected on test. Wall clock counts from process start (cold: data load,
graph build, training, evaluations). Writes nothing to disk but, on the first run without
--data, the dataset cache: ../shared/data/yelp-sslrec prepared into --workdir.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

T_START = time.perf_counter()

import torch  # noqa: E402
from bench_data import shared_dataset  # noqa: E402

from recsys.data.dataset import Dataset  # noqa: E402
from recsys.models import Batch  # noqa: E402
from recsys.train.config import resolve_config  # noqa: E402
from recsys.train.loop import Trainer  # noqa: E402


def timed(fn, reps: int = 3) -> float:
    """Median seconds of `fn()` over `reps` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_of_step(model, graph, batch: Batch) -> dict[str, float]:
    """Seconds of one step's sparse products, intent GEMMs and InfoNCE GEMMs, each alone."""
    p, d = model.params, model.params.dim
    users = torch.randn(graph.n_users, d, requires_grad=True)
    items = torch.randn(graph.n_items, d, requires_grad=True)
    grad_users, grad_items = torch.randn(graph.n_users, d), torch.randn(graph.n_items, d)
    weights = torch.rand(graph.n_edges)
    by_users, by_items = graph.user_major(weights), graph.item_major(weights)

    def sparse():
        with torch.no_grad():
            for _ in range(p.layers):
                # Z = ÂE, forward and backward: four products.
                for w in (graph.adj, graph.adj_t, graph.adj_t, graph.adj):
                    torch.sparse.mm(w, items if w is graph.adj else users)
                for _view in ("H", "P"):
                    # Learned hop: cosines (sampled) and the hop; backward: ∂w (two sampled),
                    # ∂E and ∂h (four products).
                    torch.sparse.sampled_addmm(graph.adj, users, items.T, beta=0.0)
                    torch.sparse.mm(by_users, items), torch.sparse.mm(by_items, users)
                    torch.sparse.sampled_addmm(graph.adj, grad_users, items.T, beta=0.0)
                    torch.sparse.sampled_addmm(graph.adj, users, grad_items.T, beta=0.0)
                    torch.sparse.mm(by_users, grad_items), torch.sparse.mm(by_items, grad_users)
                    torch.sparse.mm(by_users, items), torch.sparse.mm(by_items, users)

    def intents():
        for _ in range(p.layers):
            for x, c in ((users, model.user_intents), (items, model.item_intents)):
                out = (x @ c) @ c.T
                out.backward(torch.randn_like(out))

    counts = [int(torch.unique(batch.users).numel()), int(torch.unique(batch.pos_items).numel())]
    views = [torch.randn(3 * n, d) for n in counts]
    anchors = [torch.randn(n, d) for n in counts]

    def info_nce(block_entries: int):
        # The model's row blocks: `rows` anchors against all 3n view rows at a time.
        blocks = [max(1, block_entries // (3 * n)) for n in counts]
        scores = [torch.randn(rows, 3 * n) for rows, n in zip(blocks, counts)]

        def run():
            for _ in range(p.layers):
                for n, a, v, rows, s in zip(counts, anchors, views, blocks, scores):
                    for start in range(0, n, rows):
                        b = min(rows, n - start)
                        a[start : start + b] @ v.T, s[:b] @ v, s[:b].T @ a[start : start + b]

        return run

    return {
        "sparse": timed(sparse),
        "intents": timed(intents),
        "info_nce": min(timed(info_nce(1 << e)) for e in (19, 20, 21, 22, 23)),
        "distinct": counts,
    }


def step_seconds(trainer: Trainer, arrays) -> float:
    return timed(lambda: trainer.step(*arrays), reps=2)


def to_batch(arrays) -> Batch:
    return Batch(*(torch.from_numpy(a) for a in arrays))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a prepared dataset folder (default: prepare ../shared/data/yelp-sslrec into --workdir)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the prepared yelp-sslrec is cached (default: <temp dir>/recsys-bench/yelp-sslrec)",
    )
    ap.add_argument("--batch-size", type=int, default=10240)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sampling", default="edge", choices=("edge", "user"))
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument(
        "--trade", default="1024,2048,4096,10240", help="batch sizes for the trade table"
    )
    ap.add_argument("--smoke", action="store_true", help="one epoch, trade table of 2048 and 10240")
    ap.add_argument("--option", action="append", default=[], help="extra model option key=value")
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.trade = 0.01, "2048,10240"

    args.data = args.data or shared_dataset("yelp-sslrec", args.workdir)
    ds = Dataset.load(args.data)
    options = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "sampling": args.sampling,
        "device": "cpu",
        **dict(o.split("=", 1) for o in args.option),
    }
    config = resolve_config("dccf", ("benchmark", options))
    trainer = Trainer(config, ds)
    model, graph, sampler = trainer.model, trainer.graph, trainer.sampler
    print(
        f"dccf on {args.data}: {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} train edges; {config.params}"
    )
    print(
        f"batch {args.batch_size} ({config.train.sampling} sampling), lr {args.lr}, {sampler.n_batches(args.batch_size)} steps/epoch, {torch.get_num_threads()} threads"
    )

    print("\nepoch  epoch_s  train_s  wall_s  valid_R@20  test_R@20  test_N@20")
    epoch_times, train_s, epoch = [], 0.0, 0
    while train_s < 60 * args.minutes:
        epoch_times.append(trainer.train_epoch()["epoch_seconds"])
        train_s += epoch_times[-1]
        epoch += 1
        if epoch % args.eval_every == 0 or train_s >= 60 * args.minutes:
            valid, test = trainer.validate("valid"), trainer.validate("test")
            wall = time.perf_counter() - T_START
            print(
                f"{epoch:5d}  {epoch_times[-1]:7.1f}  {train_s:7.0f}  {wall:6.0f}  {valid['recall@20']:10.4f}  {test['recall@20']:9.4f}  {test['ndcg@20']:9.4f}",
                flush=True,
            )

    def full_eval():
        trainer.validate("test")

    eval_s = timed(full_eval, reps=2)
    peak_gib = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    )  # before the floor's own buffers
    model.train()
    first = to_batch(next(sampler.epoch(args.batch_size)))
    floor = floor_of_step(model, graph, first)
    n_steps = sampler.n_batches(args.batch_size)
    floor_epoch = n_steps * (floor["sparse"] + floor["intents"] + floor["info_nce"])
    epoch_s = statistics.median(epoch_times)
    print(f"\nseconds per epoch (median of {len(epoch_times)}): {epoch_s:.1f}")
    print(
        f"floor per epoch: {floor_epoch:.1f} s = {n_steps} steps x (sparse {floor['sparse']:.3f} + intents {floor['intents']:.3f} + InfoNCE {floor['info_nce']:.3f}) s; distinct users/items per batch {floor['distinct']}"
    )
    print(f"epoch / floor: {epoch_s / floor_epoch:.2f}")
    print(f"full evaluation (final embeddings + test ranking, median): {eval_s:.2f} s")
    print(f"peak RSS (training and evaluation): {peak_gib:.2f} GiB")

    print("\nbatch  steps/epoch  distinct u/i  step_s  epoch_s(est)  floor_epoch_s  ratio")
    for size in (int(s) for s in args.trade.split(",")):
        arrays = next(sampler.epoch(size))
        batch = to_batch(arrays)
        steps = sampler.n_batches(size)
        step = step_seconds(trainer, arrays)
        f = floor_of_step(model, graph, batch)
        floor_s = steps * (f["sparse"] + f["intents"] + f["info_nce"])
        print(
            f"{size:5d}  {steps:11d}  {f['distinct'][0]:5d}/{f['distinct'][1]:<5d}  {step:6.3f}  {steps * step:12.1f}  {floor_s:13.1f}  {steps * step / floor_s:5.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
