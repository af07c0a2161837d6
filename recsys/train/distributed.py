"""Training on several processes or machines with `torchrun` (torch.distributed, DDP).

    torchrun --standalone --nproc-per-node 2 -m recsys train DATA --out RUN --model lightgcn
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:29500 --nproc-per-node 4 -m recsys train …

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them nothing here does anything. Every
rank builds the same model from the same seed and draws the same global batches (the sampler
shares the seed); rank r trains on rows r, r+W, r+2W, … of each batch, and
DistributedDataParallel averages the gradients, so W processes take the steps one process
takes with the same global batch. Validation is split by users and gathered, so every rank
makes the same early-stopping decision. Only rank 0 writes the run directory (recording the
world size); the other ranks keep their checkpoints in a scratch folder removed at the end,
and a resume reads rank 0's checkpoint on every rank. Backend: NCCL when the device is CUDA
(one GPU per local rank), gloo on CPU.

The graph itself is replicated: each rank propagates the whole graph, so W ranks divide the
batch work (BPR, InfoNCE, the optimizer) and not the propagation.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from recsys.evaluate import METRICS, evaluate


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup(device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    rank, size = world()
    if size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """This rank's rows of a global batch."""
    rank, size = world()
    return arrays if size == 1 else tuple(a[rank::size] for a in arrays)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (epoch loss sums, for the log)."""
    if world()[1] == 1 or not values:
        return values
    names = sorted(values)
    t = torch.tensor([values[n] for n in names], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(names, (t / world()[1]).tolist()))


def sharded_evaluate(users, items, seen, truth, ks) -> dict:
    """`evaluate`'s metrics, each rank scoring every W-th user, gathered on every rank."""
    rank, size = world()
    if size == 1:
        return evaluate(users, items, seen, truth, ks).metrics
    mine = np.zeros(truth.shape[0], dtype=truth.dtype)
    mine[rank::size] = 1
    part = evaluate(users, items, seen, truth.multiply(mine[:, None]).tocsr(), ks)
    gathered: list = [None] * size
    dist.all_gather_object(gathered, (part.per_user, part.recommended))
    metrics = {}
    for name in part.per_user:
        values = np.concatenate([per_user[name] for per_user, _ in gathered])
        metrics[name] = float(values.mean()) if len(values) else float("nan")
    for k in ks:
        covered = np.logical_or.reduce([recommended[k] for _, recommended in gathered])
        metrics[f"coverage@{k}"] = float(covered.sum()) / len(covered)
    metrics["n_users"] = sum(len(per_user[f"{METRICS[0]}@{ks[0]}"]) for per_user, _ in gathered)
    return metrics


class LossModule(torch.nn.Module):
    """The model's summed loss as `forward`, the call DDP wraps to average gradients."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, graph) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.model.loss_terms(batch, graph)
        return sum(terms.values()), terms


def wrap(model: torch.nn.Module, device: torch.device):
    """A callable (batch, graph) -> (loss, terms): the model itself, or DDP over it."""
    module = LossModule(model)
    if world()[1] == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
