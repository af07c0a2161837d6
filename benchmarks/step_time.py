"""Training steps with bfloat16 scores against float32, in one process.

    python benchmarks/step_time.py DATASET_DIR [--models dccf,lightgcl] [--threads 1] [--steps 8]

DATASET_DIR is a prepared dataset (`recsys data prepare`). For each model, one Trainer with the
dataset's defaults takes `--steps` optimizer steps on batches drawn up front, alternating the
score dtype of the InfoNCE and of the sampled softmax (recsys.models.contrast.BF16_SCORES)
step by step after a warm-up step of each, so load from other processes hits both alike.
Prints the median step seconds of each and their ratio. On a CPU without native bfloat16 both sides are float32. It writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import recsys  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP
from recsys.data.dataset import Dataset
from recsys.models import contrast, model_class
from recsys.threads import use_threads
from recsys.train.config import resolve_config
from recsys.train.loop import Trainer


def step_seconds(trainer: Trainer, batches: list, bf16: bool) -> float:
    contrast.BF16_SCORES = bf16
    t0 = time.perf_counter()
    trainer.step(*batches.pop())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--models", default="dccf,lightgcl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each dtype")
    args = parser.parse_args()
    use_threads(args.threads)
    ds = Dataset.load(args.data)
    contrast.BF16_SCORES = True
    for model in args.models.split(","):
        config = resolve_config(model, ("dataset", model_class(model).data_defaults(ds.train)))
        trainer = Trainer(config, ds)
        score_dtype = contrast.fast_score_dtype(trainer.model.user_emb)
        epoch = trainer.sampler.epoch(trainer.opts.batch_size)
        batches = [next(epoch) for _ in range(2 * args.steps + 2)]
        times = {True: [], False: []}
        for i in range(2 * args.steps + 2):
            bf16 = i % 2 == 0
            seconds = step_seconds(trainer, batches, bf16)
            if i >= 2:
                times[bf16].append(seconds)
        fast, exact = (statistics.median(times[k]) for k in (True, False))
        print(
            f"{model:9s} batch {trainer.opts.batch_size}, {args.threads} thread(s): "
            f"float32 {exact:.3f} s  bfloat16 {fast:.3f} s  ratio {fast / exact:.2f}"
            f"  (score dtype here: {score_dtype})"
        )
        contrast.BF16_SCORES = True


if __name__ == "__main__":
    main()
