"""Same-process A/B of the shared InfoNCE (recsys.models.contrast) against the two it replaced.

    OMP_NUM_THREADS=1 python benchmarks/contrast_ab.py --threads 1
    python benchmarks/contrast_ab.py --threads 2 --repeats 15
    python benchmarks/contrast_ab.py --threads 1 --against 476505e --score-dtype bfloat16

The old implementations are DCCF's and LightGCL's own InfoNCE as of --ref (a commit that
still has them), read with `git show` into temporary modules. Both sides run forward and
backward on the same inputs, interleaved (the order alternating every repeat), so load from
other processes hits both alike: medians over the repeats, and "paired", the median of the
per-repeat ratios new/old (robust to load that drifts during the run). Cases, yelp-sized:
  dccf:      n = 8000 anchors, V = 3 views, d = 32, τ = 0.2
  exact:     LightGCL negatives=all: 4096 user anchors × 42,712 users and 7,000 item anchors
             × 26,822 items, d = 64, τ = 0.2 (one call each side, both summed)
  sampled:   LightGCL negatives=sampled: 4096 anchors × 1024 candidates
With --against REF the old side is instead the shared module as of REF, called the same way,
and --score-dtype sets the new side's scores (default: what the models use on this machine,
recsys.models.contrast.fast_score_dtype). Two more cases need --against, and compare the
sampled softmax ranking loss (recsys.models.base.softmax_loss) with REF's:
  softmax:     gowalla's batch, 7,297 rows × 4,096 shared negatives, d = 64, τ = 1
  softmax-16m: the 16M log's batch, 115,000 rows × 4,096 negatives
  (the new side at --score-dtype, the old one as REF computes it)
With --sweep 21,22,23,24 it instead times the new one alone with SCORE_BLOCK = 2^e for each e,
interleaved the same way (how the CPU block size was chosen).
recsys is imported before torch, so OpenMP waits passively as in training (recsys/threads.py);
with spinning workers a loaded 2-core machine makes 2-thread timings measure preemption.
It writes nothing; it only prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recsys  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP

# isort: split
import torch
import torch.nn.functional as F

from recsys.models import base, contrast

REPO = Path(__file__).resolve().parents[1]
# The last commit with DCCF's _InfoNCE and LightGCL's _WeightedLogSumExp side by side.
OLD_REF = "3a5479f564caea771e38d2b016f74b603149de3b"


def old_module(ref: str, path: str, name: str):
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    Path(f.name).unlink()
    return module


def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1).requires_grad_()


def dccf_case(old, gen, shared_old, score_dtype):
    anchor, views = unit(8000, 32, gen=gen), unit(3, 8000, 32, gen=gen)
    if shared_old is None:
        old_call = lambda: old.info_nce(anchor, views, 0.2)  # noqa: E731
    else:
        old_call = lambda: shared_old.info_nce(anchor, views, views, 0.2)  # noqa: E731
    return (
        old_call,
        (lambda: contrast.info_nce(anchor, views, views, 0.2, score_dtype=score_dtype)),
        (anchor, views),
    )


def lightgcl_case(old, gen, sides, shared_old, score_dtype):
    """sides: [(anchors A, candidates N, negatives M or None for all N)]."""
    data = []
    for n_anchors, n_cands, sampled in sides:
        svd = torch.randn(n_anchors, 64, generator=gen).requires_grad_()
        main = torch.randn(n_cands, 64, generator=gen).requires_grad_()
        idx = torch.randperm(n_cands, generator=gen)[:n_anchors]
        drawn = None if sampled is None else torch.randint(0, n_cands, (sampled,), generator=gen)
        weights = torch.rand(n_anchors, generator=gen) + 0.5
        data.append((svd, main, idx, drawn, weights / weights.sum()))

    def old_call():
        if shared_old is not None:
            return shared_call(shared_old)
        total = 0
        for svd, main, idx, drawn, w in data:
            negatives = main if drawn is None else main[drawn]
            total = total + old.info_nce(svd, main[idx], w, negatives, 0.2)
        return total

    def shared_call(module, **score_dtype):
        total = 0
        for svd, main, idx, drawn, w in data:
            negatives = main if drawn is None else main[drawn]
            g, e = F.normalize(svd, dim=1), F.normalize(main[idx], dim=1)
            cands = F.normalize(negatives, dim=1)[None]
            total = total + module.info_nce(g, e, cands, 0.2, w, **score_dtype)
        return total

    def new_call():
        return shared_call(contrast, score_dtype=score_dtype)

    leaves = [t for svd, main, *_ in data for t in (svd, main)]
    return old_call, new_call, leaves


def softmax_case(old_base, gen, rows, score_dtype):
    users, pos = (0.3 * unit(rows, 64, gen=gen)).detach(), (0.3 * unit(rows, 64, gen=gen)).detach()
    neg = (0.3 * unit(base.SOFTMAX_NEGATIVES, 64, gen=gen)).detach()
    leaves = [x.requires_grad_() for x in (users, pos, neg)]
    return (
        lambda: old_base.softmax_loss(*leaves, 1.0),
        lambda: base.softmax_loss(*leaves, 1.0, score_dtype),
        leaves,
    )


def timed(fn, leaves) -> float:
    for t in leaves:
        t.grad = None
    t0 = time.perf_counter()
    fn().backward()
    return time.perf_counter() - t0


def check(old_fn, new_fn, leaves) -> float:
    """Largest relative difference of the two sides' value and gradients."""
    results = []
    for fn in (old_fn, new_fn):
        for t in leaves:
            t.grad = None
        value = fn()
        value.backward()
        results.append([value.detach()] + [t.grad.clone() for t in leaves])
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(*results)
    )


def sweep(name: str, fn, leaves, exponents: list[int], repeats: int) -> None:
    default = contrast.SCORE_BLOCK
    times = {e: [] for e in exponents}
    for r in range(repeats):
        for e in exponents if r % 2 == 0 else exponents[::-1]:
            contrast.SCORE_BLOCK = 1 << e
            times[e].append(timed(fn, leaves))
    contrast.SCORE_BLOCK = default
    cells = "  ".join(f"2^{e} {1e3 * statistics.median(times[e]):7.1f}" for e in exponents)
    print(f"{name:8s} new, ms by SCORE_BLOCK: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--ref", default=OLD_REF, help="commit with the old implementations")
    parser.add_argument("--cases", default="dccf,exact,sampled")
    parser.add_argument("--sweep", help="comma-separated exponents e of SCORE_BLOCK = 2^e")
    parser.add_argument("--against", help="commit whose shared contrast module is the old side")
    parser.add_argument("--score-dtype", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dccf = old_module(args.ref, "recsys/models/dccf.py", "_old_dccf")
    lightgcl = old_module(args.ref, "recsys/models/lightgcl.py", "_old_lightgcl")
    shared = args.against and old_module(args.against, "recsys/models/contrast.py", "_old_shared")
    old_base = args.against and old_module(args.against, "recsys/models/base.py", "_old_base")
    if args.score_dtype:
        dtype = getattr(torch, args.score_dtype)
    else:
        dtype = contrast.fast_score_dtype(torch.zeros(1))
    gen = torch.Generator().manual_seed(0)
    exact_sides = [(4096, 42712, None), (7000, 26822, None)]
    cases = {
        "dccf": lambda: dccf_case(dccf, gen, shared, dtype),
        "exact": lambda: lightgcl_case(lightgcl, gen, exact_sides, shared, dtype),
        "sampled": lambda: lightgcl_case(lightgcl, gen, [(4096, 42712, 1024)], shared, dtype),
        "softmax": lambda: softmax_case(old_base, gen, 7297, dtype),
        "softmax-16m": lambda: softmax_case(old_base, gen, 115_000, dtype),
    }
    old = args.against or args.ref
    print(
        f"threads {torch.get_num_threads()}, {args.repeats} repeats, old = {old[:10]}, new {dtype}"
    )
    for name in args.cases.split(","):
        old_fn, new_fn, leaves = cases[name]()
        diff = check(old_fn, new_fn, leaves)  # also the warm-up
        if args.sweep:
            sweep(name, new_fn, leaves, [int(e) for e in args.sweep.split(",")], args.repeats)
            continue
        times = {"old": [], "new": []}
        for r in range(args.repeats):
            order = (("old", old_fn), ("new", new_fn))
            for label, fn in order if r % 2 == 0 else order[::-1]:
                times[label].append(timed(fn, leaves))
        old_ms, new_ms = (1e3 * statistics.median(times[k]) for k in ("old", "new"))
        paired = statistics.median(n / o for o, n in zip(times["old"], times["new"]))
        print(
            f"{name:8s} old {old_ms:8.1f} ms  new {new_ms:8.1f} ms  new/old {new_ms / old_ms:.3f}"
            f"  paired {paired:.3f}  (max rel diff {diff:.1e})"
        )


if __name__ == "__main__":
    main()
