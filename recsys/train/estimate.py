"""Peak memory and epoch time of a training run, estimated from the graph's size before it starts.

Memory (bytes), with N = n_users + n_items, E = nnz (training interactions), d = dim,
L = layers, b = batch_size:

    peak = BASE                                   interpreter, torch, polars, faiss loaded
         + 12·E                                   the dataset's CSR splits (int32 + float32
                                                  per training edge, ~40% more for valid/test)
         + 40·E + 16·N                            the graph: edge_user, edge_item, by_item
                                                  (int64), values (float32), R̃ᵀ's columns and
                                                  values, two crow arrays
         + 4·N·d·4                                embeddings, their gradients, Adam's m and v
         + max(4·N·d·A·L + 4·b·d·6,               activations kept for backward (A tensors of
                                                  N·d per layer, per model), the batch's rows
                 + 6·min(b·(M+1), 2²⁴),           the sampled softmax's score block (M
                                                  negatives, blocks of 2²⁴ scores, the
                                                  gradient formed in the same pass), float32
                                                  and the bfloat16 copy its GEMMs read on a
                                                  CPU with bfloat16 (counted everywhere)
               3·min(256 MiB, 4·n_users·n_items)) or validation's score block and its top-k
                                                  and mask workspaces, whichever is larger
                                                  (they are not alive together)

Time (seconds), S = steps per epoch:

    epoch = S · (C_EDGE·P_E·E·d·L + C_NODE·P_N·N·d·(L+1) + C_SCORE·b·M·d)

C_EDGE is the cost of one sparse product R̃ @ X per edge and column, forward and backward;
C_NODE that of the dense work per node and column and layer: layer sums, their gradients and
Adam's update of the whole tables, which touches every row at every step. P_E and P_N scale
both to a model's extra views (LightGCL's SVD view and contrast, DCCF's intent views and
learned edge masks). C_EDGE and C_NODE keep the ratio fitted by least squares to one
LightGCN-style step (`calibrated_constants`), scaled to LightGCN's measured epoch at 16M
interactions (so smaller logs are over-estimated: 1.5x at 1M); P_E and P_N are the measured
epochs of LightGCL and DCCF over LightGCN's at 1M. C_SCORE is the sampled softmax's cost per
score and column (M = 0 under BPR). All on this project's 2-core CPU at 2
threads, quiet, freed memory kept (recsys.malloc); re-fit with `calibrated_constants()` elsewhere.
The peak is the one with freed memory returned to the system; training multiplies it by
recsys.malloc.KEEP_FREED_PEAK_FACTOR where it keeps freed memory for speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recsys.models.base import SOFTMAX_SCORES

BASE_BYTES = 300 * 2**20  # `import recsys.api, torch, polars, scipy, faiss`: 276 MB max RSS
DATASET_BYTES_PER_EDGE = 12
GRAPH_BYTES_PER_EDGE = 40
GRAPH_BYTES_PER_NODE = 16
OPTIMIZER_COPIES = 4  # weights, gradients, Adam's first and second moments
EVAL_BLOCK_BYTES = 256 * 2**20  # recsys.evaluate's default score block
EVAL_BLOCK_COPIES = 3  # scores, top-k and mask workspaces: 1.29 GB peak at 50k x 10k (1M log)
BATCH_COPIES = 6  # user, positive and negative rows, and their gradients

# N·d tensors each layer keeps for backward: LightGCN its output and the running sum (plus
# their gradients in backward); LightGCL the same for the graph and the SVD view; DCCF the
# ego, Z, R, H, P embeddings of each layer and their gradients.
ACTIVATIONS_PER_LAYER = {"lightgcn": 4, "lightgcl": 8, "dccf": 12}
# Passes relative to LightGCN's formula, from one measured step each (scale.py, quiet, 1M log,
# 100 steps for each model): LightGCL 17.8 s / 12.0 s = 1.5x, DCCF 107 s / 12.0 s = 8.9x
# (250k: 1.8x and 7.5x per step).
EDGE_PASSES = {"lightgcn": 1.0, "lightgcl": 1.6, "dccf": 9.0}
NODE_PASSES = {"lightgcn": 1.0, "lightgcl": 1.6, "dccf": 9.0}

# calibrated_constants() gave 2.8e-9 and 2.5e-8 on a loaded machine (six graphs of 1-4M edges,
# 60-240k nodes, d = 64, L = 1 and 3, load 6.8-7.9). Their ratio is kept and the scale set by
# LightGCN's quiet 16M epoch, 299 s: 100·(C_E·11.49M·64·3 + C_N·960k·64·4) = 299 s.
SECONDS_PER_EDGE_DIM = 6.8e-10
SECONDS_PER_NODE_DIM = 6.1e-9
# The sampled softmax: gowalla's batch (7,297 rows × 1,024 negatives, d = 64) takes 27.8 ms
# forward and backward at two threads since its gradient is formed in the same pass
# (benchmarks/contrast_ab.py --cases softmax), 5.8e-11 s per score and column. (Before it,
# gowalla's LightGCN epoch took 23 s against BPR's 13 s at one thread: 2.1e-10.) At M 4,096
# with bfloat16 gradient GEMMs the batch takes 104 ms at two threads, 5.4e-11: kept.
SECONDS_PER_SCORE_DIM = 5.8e-11


def estimate(
    n_users: int,
    n_items: int,
    nnz: int,
    dim: int,
    layers: int,
    batch_size: int,
    model_name: str,
    steps_per_epoch: int,
    softmax_negatives: int = 0,
) -> dict[str, float]:
    """Estimated peak resident memory and seconds per epoch of training `model_name`.

    Args:
        n_users, n_items: the dataset's counts.
        nnz: training interactions (edges of the graph).
        dim: embedding size d.
        layers: propagation layers L (0 for a model that does not propagate, e.g. MF).
        batch_size: BPR triples per step.
        model_name: "lightgcn", "lightgcl", "dccf"; any other name is costed as a
            propagation-free embedding model (its layers are taken as 0).
        steps_per_epoch: optimizer steps in one epoch.
        softmax_negatives: M under the sampled softmax loss (at most the batch size are
            scored), 0 under BPR.

    Returns:
        {"peak_bytes": int, "epoch_seconds": float}, by the formulas in the module docstring.
    """
    if model_name not in ACTIVATIONS_PER_LAYER:
        layers = 0
    nodes = n_users + n_items
    activations = ACTIVATIONS_PER_LAYER.get(model_name, 0)
    negatives = min(softmax_negatives, batch_size)  # the batch's own negatives are the shared ones
    scores = min(batch_size * (negatives + 1), SOFTMAX_SCORES) if negatives else 0
    step_memory = (
        4 * nodes * dim * activations * layers
        + 4 * batch_size * dim * BATCH_COPIES
        + 6 * scores  # a float32 block and its bfloat16 copy (models.base._SampledSoftmax)
    )
    peak = (
        BASE_BYTES
        + DATASET_BYTES_PER_EDGE * nnz
        + GRAPH_BYTES_PER_EDGE * nnz * (layers > 0)
        + GRAPH_BYTES_PER_NODE * nodes
        + 4 * nodes * dim * OPTIMIZER_COPIES
        + max(step_memory, EVAL_BLOCK_COPIES * min(EVAL_BLOCK_BYTES, 4 * n_users * n_items))
    )
    per_step = SECONDS_PER_EDGE_DIM * EDGE_PASSES.get(model_name, 0.0) * nnz * dim * layers
    per_step += SECONDS_PER_NODE_DIM * NODE_PASSES.get(model_name, 1.0) * nodes * dim * (layers + 1)
    per_step += SECONDS_PER_SCORE_DIM * batch_size * negatives * dim
    return {"peak_bytes": int(peak), "epoch_seconds": float(steps_per_epoch * per_step)}


def available_bytes() -> int:
    """Memory this process may still use: the cgroup's limit less its usage, if a cgroup
    limit is set, else the kernel's MemAvailable, whichever is smaller."""
    candidates = [meminfo_available()]
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = read_int(limit_file), read_int(usage_file)
        if limit is not None and limit < 2**60:  # v1 writes "no limit" as ~2^63
            candidates.append(limit - (usage or 0))
    return max(0, min(c for c in candidates if c is not None))


def meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, None where there is none (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_int(path: str) -> int | None:
    """The integer in a one-value file, None when absent or not a number (cgroup "max")."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def calibrated_constants(threads: int | None = None, seed: int = 0) -> tuple[float, float]:
    """(SECONDS_PER_EDGE_DIM, SECONDS_PER_NODE_DIM) measured on this machine, about 30 s.

    Times one LightGCN step (propagation, BPR loss, backward, Adam) on random graphs of four
    shapes and fits the time formula by least squares.
    """
    import scipy.sparse as sp
    import torch

    from recsys.graph import normalized_adjacency, propagate

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows, seconds = [], []
    for n_users, n_edges, layers in (
        (20_000, 400_000, 3),
        (20_000, 1_600_000, 3),
        (80_000, 400_000, 3),
        (20_000, 400_000, 1),
    ):
        n_items, dim = n_users // 5, 64
        m = sp.csr_matrix(
            (
                np.ones(n_edges, np.float32),
                (rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)),
            ),
            shape=(n_users, n_items),
        )
        m.sum_duplicates()
        graph = normalized_adjacency(m)
        users = torch.nn.Parameter(torch.randn(n_users, dim) * 0.1)
        items = torch.nn.Parameter(torch.randn(n_items, dim) * 0.1)
        opt = torch.optim.Adam([users, items])
        times = []
        for _ in range(4):
            start = time.perf_counter()
            u, i = users, items
            sum_u, sum_i = u, i
            for _ in range(layers):
                u, i = propagate(graph, u, i)
                sum_u, sum_i = sum_u + u, sum_i + i
            b = torch.randint(0, n_users, (2048,))
            p, q = torch.randint(0, n_items, (2, 2048))
            score = (sum_u[b] * (sum_i[p] - sum_i[q])).sum(1)
            opt.zero_grad()
            (-torch.nn.functional.logsigmoid(score).mean()).backward()
            opt.step()
            times.append(time.perf_counter() - start)
        rows.append([graph.n_edges * dim * layers, (n_users + n_items) * dim * (layers + 1)])
        seconds.append(float(np.median(times[1:])))
    edge, node = np.linalg.lstsq(np.array(rows, float), np.array(seconds), rcond=None)[0]
    return float(edge), float(node)
