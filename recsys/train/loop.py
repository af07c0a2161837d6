"""The one training loop: every model, every device, with early stopping and resume."""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, RunError
from recsys.graph import normalized_adjacency
from recsys.index import build_index, save_index
from recsys.models import Batch, Recommender, model_class
from recsys.threads import rebalance
from recsys.train import distributed
from recsys.train.config import RunConfig, steps_for_log
from recsys.train.rundir import RunDir
from recsys.train.sampler import BPRSampler

log = logging.getLogger("recsys")


def resolve_device(device: str) -> torch.device:
    """The one device decision: auto picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r} (choose from: auto, cpu, cuda)")
    return torch.device(device)


def build_model(
    config: RunConfig, ds: Dataset, device: torch.device
) -> tuple[Recommender, object, torch.Generator]:
    """Model, training graph and the torch generator it draws from, all on `device`."""
    generator = torch.Generator().manual_seed(config.train.seed)
    graph = normalized_adjacency(ds.train, device)
    model = model_class(config.model)(ds.n_users, ds.n_items, config.params, graph, generator).to(
        device
    )
    return model, graph, generator


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(
    ds: Dataset,
    dataset_path: str | Path,
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
    test: bool = True,
) -> dict:
    """Train `config.model` on `ds`, writing the run directory; returns the final summary.

    Early stopping watches `config.train.metric` on the validation split; without one, the
    model trains for a fixed number of epochs and the last weights are kept. The test split,
    if any, is evaluated once, at the end, with the selected weights (not at all with
    `test=False`, as tuning trials must not see it). `on_validation(epoch, score)` is called
    after each validation, once the epoch is saved; an exception it raises (a tuner's pruning)
    ends training there and propagates.
    """
    opts = config.train
    device = distributed.setup(resolve_device(opts.device))
    rank, world_size = distributed.world()
    main_run = RunDir(run_dir)
    # Only rank 0 writes the run; the others keep their own saves in a scratch folder.
    run = main_run if rank == 0 else RunDir(tempfile.mkdtemp(prefix=f"recsys-rank{rank}-"))
    try:
        return _train(ds, dataset_path, config, run, main_run, device, opts, resume, progress,
                      on_validation, test)  # fmt: skip
    finally:
        if rank > 0:
            shutil.rmtree(run.path, ignore_errors=True)


def _train(ds, dataset_path, config, run, main_run, device, opts, resume, progress,
           on_validation, test) -> dict:  # fmt: skip
    torch.manual_seed(opts.seed)
    model, graph, generator = build_model(config, ds, device)
    rng = np.random.default_rng(opts.seed)
    has_valid = ds.valid is not None
    metric_name = opts.metric.lower()
    if has_valid and metric_name not in {
        f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit", "mrr") for k in opts.eval_k
    }:
        raise ConfigError(
            f"metric {opts.metric!r} is not computed; use one of recall|ndcg|precision|hit|mrr @ one of eval_k {opts.eval_k}"
        )

    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "train_seconds": 0.0}
    batch_size, lr = steps_for_log(opts, ds.train.nnz, model.propagates)
    if (batch_size, lr) != (opts.batch_size, opts.lr):
        log.info(
            "%d training interactions: batch %d, lr %.3g (at most %d propagations per epoch)",
            ds.train.nnz, batch_size, lr, opts.max_steps,
        )  # fmt: skip
    opts = dataclasses.replace(opts, batch_size=batch_size, lr=lr)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr) if model.trainable else None
    if resume:
        ckpt = main_run.load_torch(main_run.checkpoint, device)
        run.load_weights(model, main_run.checkpoint, ckpt.get("model"))
        try:
            if optimizer is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            state = {**state, **ckpt["state"]}
            rng.bit_generator.state = ckpt["numpy_rng"]
            generator.set_state(ckpt["torch_rng"].cpu())
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise RunError(f"{run.checkpoint}: damaged training state ({e!r:.200})") from None
        run.truncate_metrics(state["epoch"])
        log.info("resuming %s from epoch %d", run.path, state["epoch"])
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        run.metrics_log.unlink(missing_ok=True)
        run.write_config(
            {
                **config.to_dict(),
                "dataset": {
                    "path": str(Path(dataset_path).resolve()),
                    "fingerprint": ds.fingerprint,
                },
                "device": str(device),
                "world_size": distributed.world()[1],
            }
        )

    if not model.trainable:
        t0 = time.perf_counter()
        model.fit(ds.train)
        state["train_seconds"] = time.perf_counter() - t0
        run.save_torch(run.best, model.state_dict())
    else:
        if not has_valid:
            log.warning(
                "dataset has no validation split: training a fixed %d epochs and keeping the last weights",
                opts.epochs,
            )
        sampler = BPRSampler(ds.train, rng, opts.sampling)
        _fit(
            model,
            graph,
            optimizer,
            sampler,
            ds,
            opts,
            run,
            state,
            has_valid,
            metric_name,
            device,
            progress,
            on_validation,
        )

    return finish(model, graph, ds, run, state, opts, test)


def _fit(
    model,
    graph,
    optimizer,
    sampler,
    ds,
    opts,
    run,
    state,
    has_valid,
    metric_name,
    device,
    progress,
    on_validation,
):
    n_batches = sampler.n_batches(opts.batch_size)
    step = distributed.wrap(model, device)
    last_metrics: dict = {}
    # "stopped" is saved with the checkpoint, so resuming an early-stopped run trains no further.
    while state["epoch"] < opts.epochs and not state.get("stopped"):
        if opts.max_minutes and state["train_seconds"] > 60 * opts.max_minutes:
            log.info(
                "time budget of %.1f minutes reached after %d epochs",
                opts.max_minutes,
                state["epoch"],
            )
            break
        epoch = state["epoch"] + 1
        threads = rebalance()
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        bar = tqdm(
            sampler.epoch(opts.batch_size),
            total=n_batches,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            disable=not progress or not sys.stderr.isatty(),  # logs get one line per epoch instead
            leave=False,
        )
        for users, pos, neg in bar:
            shard = distributed.shard((users, pos, neg))
            batch = Batch(*(torch.from_numpy(a).to(device) for a in shard))
            loss, terms = step(batch, graph)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", **last_metrics)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sums = distributed.mean_over_ranks(sums)
        epoch_seconds = time.perf_counter() - t0
        state["train_seconds"] += epoch_seconds
        row = {
            "epoch": epoch,
            "loss": sum(sums.values()) / n_batches,
            **{k: v / n_batches for k, v in sums.items()},
        }
        if not all(math.isfinite(v) for v in row.values()):
            raise RunError(
                f"{run.path}: loss became {row['loss']} at epoch {epoch}; lower --lr or raise regularisation"
            )
        row.update(
            epoch_seconds=epoch_seconds, elapsed_seconds=state["train_seconds"], threads=threads
        )
        state["epoch"] = epoch
        stop = False
        if has_valid and (epoch % opts.eval_every == 0 or epoch == opts.epochs):
            t1 = time.perf_counter()
            result = validate(model, graph, ds.train, ds.valid, opts.eval_k)
            row["eval_seconds"] = time.perf_counter() - t1
            row["valid"] = result
            score = result[metric_name]
            last_metrics = {metric_name: f"{score:.4f}"}
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch)
                run.save_torch(run.best, model.state_dict())
            stop = state["stopped"] = should_stop(epoch, state["best_epoch"], opts)
        elif not has_valid:
            state["best_epoch"] = epoch
            run.save_torch(run.best, model.state_dict())
        run.append_metrics(row)
        log.info(
            "epoch %d  loss %.4f  %.1fs  %s",
            epoch,
            row["loss"],
            epoch_seconds,
            " ".join(f"{k} {v}" for k, v in last_metrics.items()),
        )
        run.save_torch(
            run.checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "numpy_rng": sampler.rng.bit_generator.state,
                "torch_rng": model.generator.get_state(),
            },
        )
        if on_validation is not None and "valid" in row:
            on_validation(epoch, row["valid"][metric_name])
        if stop:
            log.info(
                "early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                metric_name,
                epoch - state["best_epoch"],
                state["best"],
                state["best_epoch"],
            )
            break


def should_stop(epoch: int, best_epoch: int, opts) -> bool:
    """Early stopping: the best validation is `patience` epochs old, and `min_epochs` are done.

    Counted in epochs, not validations, so `eval_every` does not change its meaning. The floor
    of `min_epochs` outlasts the warm-up plateau: on ml-100k, LightGCN at lr 1e-3 reaches
    MostPop's level at epoch 4 (valid Recall@20 0.194), stays there until epoch 22, then climbs.
    Patience alone stopped it at epoch 14 (test 0.185), a floor of 20 at epoch 20 (0.185), a
    floor of 30 let it run to epoch 171 (test 0.333).
    """
    return opts.patience > 0 and epoch >= opts.min_epochs and epoch - best_epoch >= opts.patience


@torch.no_grad()
def validate(model: Recommender, graph, seen, truth, ks) -> dict:
    model.eval()
    users, items = model.final_embeddings(graph)
    return distributed.sharded_evaluate(users, items, seen, truth, tuple(ks))


@torch.no_grad()
def finish(
    model: Recommender, graph, ds: Dataset, run: RunDir, state: dict, opts, test: bool = True
) -> dict:
    """Restore the best weights, then write embeddings, index and the final summary."""
    run.load_weights(model, run.best)
    model.eval()
    users, items = (t.float().cpu().numpy() for t in model.final_embeddings(graph))
    run.save_embeddings(users, items)
    save_index(build_index(items), run.index)
    summary = {
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "train_seconds": state["train_seconds"],
    }
    rows = run.read_metrics()
    if rows:
        summary["seconds_per_epoch"] = float(np.median([r["epoch_seconds"] for r in rows]))
    for split in ("valid", "test") if test else ("valid",):
        if getattr(ds, split) is not None:
            t0 = time.perf_counter()
            summary[split] = distributed.sharded_evaluate(
                users, items, ds.train, getattr(ds, split), tuple(opts.eval_k)
            )
            summary[f"{split}_eval_seconds"] = time.perf_counter() - t0
    summary["peak_rss_mib"] = peak_rss_mib()
    run.write_summary(summary)
    return summary
