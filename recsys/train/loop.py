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
import scipy.sparse as sp
import torch
from tqdm import tqdm

from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, RunError
from recsys.graph import normalized_adjacency
from recsys.index import build_index, save_index
from recsys.malloc import KEEP_FREED_PEAK_FACTOR, keep_freed_memory
from recsys.models import Batch, Recommender, model_class
from recsys.models.base import RankingLoss
from recsys.threads import rebalance
from recsys.train import distributed
from recsys.train.config import RunConfig, TrainParams, steps_for_log
from recsys.train.estimate import available_bytes, estimate
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
    if model.trainable:
        model.ranking = ranking_loss(config.train)
    return model, graph, generator


def ranking_loss(opts: TrainParams) -> RankingLoss:
    """The run's ranking loss from its TrainParams (`loss`, `loss_negatives`, `loss_temperature`)."""
    return RankingLoss(opts.loss, opts.loss_negatives, opts.loss_temperature)


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM, which starts afresh at exec: the
    rusage maximum carries over a forking parent's, so a run started from a large process
    would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def monitored_users(valid, cap: int, seed: int) -> np.ndarray | None:
    """The users validated after each epoch: all of them (None) unless more than `cap` have
    validation items, else `cap` of those, drawn once from a generator of their own so the
    training draws stay as they were.

    Full ranking costs users × items, so validating every user after every epoch grows with the
    square of the log: a quarter of LightGCN's time on gowalla (4.7 s against a 14 s epoch,
    one thread; 2.5 s sampled), 330 s against a 299 s epoch at 16M interactions (6.0 s
    sampled). The same users every epoch keep the epochs' comparison paired. ml-100k, the
    sample and yelp-sslrec (10,358 validation users) are below the default cap of 16,384, so
    they validate everyone as before.
    """
    if valid is None or not cap:
        return None
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    if len(users) <= cap:
        return None
    return np.sort(np.random.default_rng([seed, 1]).choice(users, cap, replace=False))


class Trainer:
    """One model in training, in memory: model, graph, optimizer, sampler and their state.

    `step` takes one optimizer step on a global batch, `train_epoch` one pass over the training
    interactions, `validate` scores a split, `checkpoint`/`restore` save and reload everything a
    resume needs. The run directory, early stopping and the summary belong to `train`, the one
    loop built on it; benchmarks and tuning drive a Trainer directly, and under torchrun each
    rank's Trainer trains on its rows of every batch (see recsys.train.distributed).

        >>> trainer = Trainer(resolve_config("lightgcn", ("mine", {"dim": 32})), ds)
        >>> for epoch in range(20):
        ...     trainer.train_epoch()
        ...     print(trainer.validate()["recall@20"])
    """

    def __init__(self, config: RunConfig, ds: Dataset):
        self.config, self.ds = config, ds
        self.device = distributed.setup(resolve_device(config.train.device))
        torch.manual_seed(config.train.seed)
        self.model, self.graph, self.generator = build_model(config, ds, self.device)
        batch_size, lr = steps_for_log(config.train, ds.train.nnz, self.model.propagates)
        if (batch_size, lr) != (config.train.batch_size, config.train.lr):
            log.info(
                "%d training interactions: batch %d, lr %.3g (at most %d propagations per epoch)",
                ds.train.nnz, batch_size, lr, config.train.max_steps,
            )  # fmt: skip
        self.opts = dataclasses.replace(config.train, batch_size=batch_size, lr=lr)
        self.rng = np.random.default_rng(self.opts.seed)
        self.monitored = monitored_users(ds.valid, self.opts.valid_users, self.opts.seed)
        self.state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "train_seconds": 0.0}
        self.optimizer = self.sampler = self._loss = None
        if self.model.trainable:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.opts.lr)
            self.sampler = BPRSampler(ds.train, self.rng, self.opts.sampling)
            self._loss = distributed.wrap(self.model, self.device)

    def step(self, users: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
        """One optimizer step on a global batch of BPR triples; each loss term's value."""
        self.model.train()
        shard = distributed.shard((users, pos, neg))
        batch = Batch(*(torch.from_numpy(a).to(self.device) for a in shard))
        loss, terms = self._loss(batch, self.graph)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {name: float(value.detach()) for name, value in terms.items()}

    def train_epoch(self, progress: bool = False) -> dict:
        """One pass over the training interactions (or the closed-form fit of a baseline).

        Returns the epoch's mean loss terms, their sum as "loss", and its seconds; a loss that
        is not finite raises RunError.
        """
        epoch = self.state["epoch"] + 1
        t0 = time.perf_counter()
        if not self.model.trainable:
            self.model.fit(self.ds.train)
            row = {"epoch": epoch}
        else:
            n_batches = self.sampler.n_batches(self.opts.batch_size)
            bar = tqdm(
                self.sampler.epoch(self.opts.batch_size),
                total=n_batches,
                desc=f"epoch {epoch}",
                file=sys.stderr,
                disable=not progress or not sys.stderr.isatty(),  # logs get a line per epoch
                leave=False,
            )
            sums: dict[str, float] = {}
            for arrays in bar:
                for name, value in self.step(*arrays).items():
                    sums[name] = sums.get(name, 0.0) + value
                bar.set_postfix(loss=f"{sum(sums.values()) / (bar.n + 1):.4f}")
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            means = {k: v / n_batches for k, v in distributed.mean_over_ranks(sums).items()}
            row = {"epoch": epoch, "loss": sum(means.values()), **means}
            if not all(math.isfinite(v) for v in row.values()):
                raise RunError(
                    f"loss became {row['loss']} at epoch {epoch}; lower --lr or raise regularisation"
                )
        row["epoch_seconds"] = time.perf_counter() - t0
        self.state["epoch"] = epoch
        self.state["train_seconds"] += row["epoch_seconds"]
        return row

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings of the current weights."""
        self.model.eval()
        return self.model.final_embeddings(self.graph)

    def validate(self, split: str = "valid", users: np.ndarray | None = None) -> dict:
        """Full-ranking metrics on `split` (on its rows `users` only, if given), training items
        excluded."""
        truth = self.ds.split(split)
        if users is not None:
            keep = np.zeros(truth.shape[0], dtype=truth.dtype)
            keep[users] = 1
            truth = sp.diags(keep).dot(truth).tocsr()
        user_emb, item_emb = self.embeddings()
        return distributed.sharded_evaluate(
            user_emb, item_emb, self.ds.train, truth, tuple(self.opts.eval_k)
        )

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "state": self.state,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.generator.get_state(),
        }

    def restore(self, run: RunDir, source: RunDir) -> None:
        """Continue from `source`'s checkpoint (rank 0's, under torchrun)."""
        ckpt = source.load_torch(source.checkpoint, self.device)
        run.load_weights(self.model, source.checkpoint, ckpt.get("model"))
        try:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state = {**self.state, **ckpt["state"]}
            self.rng.bit_generator.state = ckpt["numpy_rng"]
            self.generator.set_state(ckpt["torch_rng"].cpu())
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise RunError(f"{source.checkpoint}: damaged training state ({e!r:.200})") from None


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
    metric = config.train.metric.lower()
    if ds.valid is not None and metric not in {
        f"{m}@{k}"
        for m in ("recall", "ndcg", "precision", "hit", "mrr")
        for k in config.train.eval_k
    }:
        raise ConfigError(
            f"metric {config.train.metric!r} is not computed; use one of recall|ndcg|precision|hit|mrr @ one of eval_k {config.train.eval_k}"
        )
    check_memory(config, ds)
    trainer = Trainer(config, ds)
    rank = distributed.world()[0]
    main_run = RunDir(run_dir)
    # Only rank 0 writes the run; the others keep their own saves in a scratch folder.
    run = main_run if rank == 0 else RunDir(tempfile.mkdtemp(prefix=f"recsys-rank{rank}-"))
    try:
        if resume:
            trainer.restore(run, main_run)
            run.truncate_metrics(trainer.state["epoch"])
            log.info("resuming %s from epoch %d", main_run.path, trainer.state["epoch"])
        else:
            run.path.mkdir(parents=True, exist_ok=True)
            run.metrics_log.unlink(missing_ok=True)
            dataset = {"path": str(Path(dataset_path).resolve()), "fingerprint": ds.fingerprint}
            run.write_config({**config.to_dict(), "dataset": dataset, "device": str(trainer.device),
                              "world_size": distributed.world()[1]})  # fmt: skip
        if not trainer.model.trainable:
            trainer.train_epoch()
            run.save_torch(run.best, trainer.model.state_dict())
        else:
            fit(trainer, run, metric, progress, on_validation)
        return finish(trainer, run, test)
    finally:
        if rank > 0:
            shutil.rmtree(run.path, ignore_errors=True)


def check_memory(config: RunConfig, ds: Dataset) -> None:
    """Log the estimated peak memory and epoch time (recsys.train.estimate) before anything is
    built, refuse a run whose estimate exceeds the memory available, and keep freed memory for
    speed (recsys.malloc) where 1.6 times the estimate fits."""
    cls = model_class(config.model)
    if not cls.trainable:
        return
    batch, _ = steps_for_log(config.train, ds.train.nnz, cls.propagates)
    need = estimate(
        ds.n_users, ds.n_items, ds.train.nnz, getattr(config.params, "dim", 64),
        getattr(config.params, "layers", 0), batch, config.model, -(-ds.train.nnz // batch),
        softmax_negatives=ranking_loss(config.train).shared_negatives,
    )  # fmt: skip
    have = available_bytes()
    if need["peak_bytes"] > have:
        raise ConfigError(
            f"estimated peak memory {need['peak_bytes'] / 2**30:.1f} GiB exceeds the "
            f"{have / 2**30:.1f} GiB available: lower --dim, --layers or --batch-size"
        )
    # Faster steps for more memory where there is room (measured in recsys.malloc).
    peak, kept = need["peak_bytes"], "as malloc is set"
    if peak * KEEP_FREED_PEAK_FACTOR <= have and keep_freed_memory(True):
        peak, kept = peak * KEEP_FREED_PEAK_FACTOR, "kept for speed"
    elif keep_freed_memory(False):
        kept = "returned to the system"
    log.info("estimated peak memory %.2f GiB (%.1f GiB available; freed memory %s), "
             "about %.1f s per epoch", peak / 2**30, have / 2**30, kept, need["epoch_seconds"])  # fmt: skip


def fit(trainer: Trainer, run: RunDir, metric: str, progress: bool, on_validation) -> None:
    """Epochs until `epochs`, early stopping or the time budget; each one logged and saved."""
    opts, state, has_valid = trainer.opts, trainer.state, trainer.ds.valid is not None
    if not has_valid:
        log.warning(
            "dataset has no validation split: training a fixed %d epochs and keeping the last weights",
            opts.epochs,
        )
    # "stopped" is saved with the checkpoint, so resuming an early-stopped run trains no further.
    while state["epoch"] < opts.epochs and not state.get("stopped"):
        if opts.max_minutes and state["train_seconds"] > 60 * opts.max_minutes:
            log.info("time budget of %.1f minutes reached after %d epochs", opts.max_minutes,
                     state["epoch"])  # fmt: skip
            break
        threads = rebalance()
        try:
            row = trainer.train_epoch(progress)
        except RunError as e:
            raise RunError(f"{run.path}: {e}") from None
        epoch = row["epoch"]
        row.update(elapsed_seconds=state["train_seconds"], threads=threads)
        stop, shown = False, ""
        if has_valid and (epoch % opts.eval_every == 0 or epoch == opts.epochs):
            t1 = time.perf_counter()
            row["valid"] = trainer.validate(users=trainer.monitored)
            row["eval_seconds"] = time.perf_counter() - t1
            score = row["valid"][metric]
            shown = f"{metric} {score:.4f}"
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch)
                run.save_torch(run.best, trainer.model.state_dict())
            stop = state["stopped"] = should_stop(epoch, state["best_epoch"], opts)
        elif not has_valid:
            state["best_epoch"] = epoch
            run.save_torch(run.best, trainer.model.state_dict())
        run.append_metrics(row)
        log.info("epoch %d  loss %.4f  %.1fs  %s", epoch, row["loss"], row["epoch_seconds"], shown)
        run.save_torch(run.checkpoint, trainer.checkpoint())
        if on_validation is not None and "valid" in row:
            on_validation(epoch, row["valid"][metric])
        if stop:
            log.info(
                "early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                metric, epoch - state["best_epoch"], state["best"], state["best_epoch"],
            )  # fmt: skip
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
def finish(trainer: Trainer, run: RunDir, test: bool = True) -> dict:
    """Restore the best weights, then write embeddings, index and the final summary."""
    run.load_weights(trainer.model, run.best)
    users, items = (t.float().cpu().numpy() for t in trainer.embeddings())
    run.save_embeddings(users, items)
    save_index(build_index(items), run.index)
    state = trainer.state
    summary = {
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "train_seconds": state["train_seconds"],
        "batch_size": trainer.opts.batch_size,
        "lr": trainer.opts.lr,
    }
    if trainer.model.trainable:
        # why training ended: a tuner continues a run that ran out of time while improving
        summary["stopped_by"] = (
            "early stopping" if state.get("stopped")
            else "epochs" if state["epoch"] >= trainer.opts.epochs
            else "time budget"
        )  # fmt: skip
    rows = run.read_metrics()
    if rows:
        summary["seconds_per_epoch"] = float(np.median([r["epoch_seconds"] for r in rows]))
    # The loop validated the best epoch's weights already, unless it watched a sample of users.
    best = (
        None
        if trainer.monitored is not None
        else next((r for r in rows if r["epoch"] == state["best_epoch"] and "valid" in r), None)
    )
    if best is not None:
        summary["valid"], summary["valid_eval_seconds"] = best["valid"], best.get("eval_seconds")
    for split in ("valid", "test") if test else ("valid",):
        if getattr(trainer.ds, split) is not None and split not in summary:
            t0 = time.perf_counter()
            summary[split] = distributed.sharded_evaluate(
                users, items, trainer.ds.train, trainer.ds.split(split), tuple(trainer.opts.eval_k)
            )
            summary[f"{split}_eval_seconds"] = time.perf_counter() - t0
    summary["peak_rss_mib"] = peak_rss_mib()
    run.write_summary(summary)
    return summary
