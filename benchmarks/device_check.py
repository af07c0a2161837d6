"""CPU vs CUDA: every graph model gives the same loss terms, gradients and embeddings on both.

Builds each model twice from one seed on a small synthetic dataset, runs one training step's
forward/backward on each device and compares. Needs a CUDA device; prints one line per model.

    python benchmarks/device_check.py [--models lightgcn,lightgcl,dccf]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from recsys import api
from recsys.data.dataset import Dataset
from recsys.models import Batch
from recsys.train.config import resolve_config
from recsys.train.loop import build_model
from recsys.train.sampler import BPRSampler


def one_step(
    model_name: str, ds: Dataset, device: torch.device
) -> tuple[dict, np.ndarray, np.ndarray]:
    config = resolve_config(model_name, ("device check", {"seed": 0}))
    model, graph, _ = build_model(config, ds, device)
    users, pos, neg = next(BPRSampler(ds.train, np.random.default_rng(0)).epoch(512))
    batch = Batch(*(torch.from_numpy(a).to(device) for a in (users, pos, neg)))
    model.train()
    terms = model.loss_terms(batch, graph)
    sum(terms.values()).backward()
    grad = next(p for p in model.parameters() if p.grad is not None).grad.cpu().numpy()
    model.eval()
    with torch.no_grad():
        items = model.final_embeddings(graph)[1].cpu().numpy()
    return {k: float(v) for k, v in terms.items()}, grad, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="mf,lightgcn,lightgcl,dccf")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to compare")
    root = Path(tempfile.mkdtemp())
    api.synth(root / "log.csv", n_users=400, n_items=200, n_intents=4, seed=0)
    api.prepare(root / "log.csv", root / "data", seed=0)
    ds = Dataset.load(root / "data")
    for name in args.models.split(","):
        cpu_terms, cpu_grad, cpu_items = one_step(name, ds, torch.device("cpu"))
        gpu_terms, gpu_grad, gpu_items = one_step(name, ds, torch.device("cuda"))
        term_diff = max(
            abs(cpu_terms[k] - gpu_terms[k]) / max(abs(cpu_terms[k]), 1e-12) for k in cpu_terms
        )
        grad_diff = float(np.abs(cpu_grad - gpu_grad).max() / max(np.abs(cpu_grad).max(), 1e-12))
        emb_diff = float(np.abs(cpu_items - gpu_items).max() / max(np.abs(cpu_items).max(), 1e-12))
        ok = max(term_diff, grad_diff, emb_diff) < 1e-3
        print(
            f"{name:9s} {'OK ' if ok else 'DIFF'} rel. diff: loss terms {term_diff:.1e}, first grad {grad_diff:.1e}, item embeddings {emb_diff:.1e}"
        )


if __name__ == "__main__":
    main()
