"""The blocked InfoNCE shared by the contrastive models (LightGCL, DCCF).

For unit-norm anchors a (A, d) with weights w (A,), positives p (V, A, d) and V candidate
stacks c (V, N, d):

    InfoNCE = Σ_v Σ_a w_a [ log Σ_n exp(a·c_vn / τ) - a·p_va / τ ]

LightGCL: V = 1, the candidates are all users (resp. items), the batch's nodes or a sample,
and w_a = count/B over the batch's distinct anchors (`anchor_weights`). DCCF: V = 3 views,
the candidates are the views' own rows (p = c) and w_a = 1/A.

The log-sum-exp (`weighted_logsumexp`) runs over blocks of anchor rows, each against all V·N
candidate rows, and forms the block's gradient in the same pass: the scalar loss ends the
graph, so with P_v = w ⊙ softmax_n, ∂/∂a = Σ_v P_v c_v / τ and ∂/∂c_v = P_vᵀ a / τ, and no
score matrix outlives its block (nor is recomputed in backward). Per block: three GEMMs, one
exp, one row sum and one scaling pass over the scores. The layout, measured on a yelp DCCF
block (b = 166 anchors, V·N = 3 × 8400, d = 32, 2 threads, CPU) unless said:
- unit rows put every logit at most 1/τ, so 1/τ is a safe shift (no row max pass); it rides
  in an extra GEMM column, [a/τ, -1/τ]·[c, 1]. exp(-2/τ) stays a normal float32 (and
  bfloat16, which has float32's exponent) for τ ≥ 0.025, so no row sum can underflow to 0.
- the scores of a block are one GEMM against the V stacks side by side (b × VN): 1.0 ms,
  against 1.25 ms batched per view;
- after the row sums, the block is scaled in place to P' = [P_1 … P_V] / τ, so each gradient
  is one GEMM over all views: ∂/∂a = P'·[c_1; …; c_V] and ∂/∂[c_1; …; c_V] += P'ᵀ a. In
  float32 this is as fast as the per-view read-back on a strided view of the block that it
  replaced (benchmarks/contrast_ab.py --against 476505e, paired: 1.02, 1.02, 1.01); in
  bfloat16 that strided read-back took a copying path (9.9 ms against 1.0 ms, 341 × 3 × 4096,
  1 thread);
- every block is written into one reused buffer (torch.mm(out=...)): a fresh 16 MiB block per
  iteration is fresh pages to fault in (the whole DCCF InfoNCE 1.36× faster);
- on a CPU with native bfloat16 (`fast_score_dtype`) the models score in bfloat16: the GEMMs,
  the exp and the scaling; row sums, log norms and gradients accumulate in float32.
Block sizes: see SCORE_BLOCK. The positive term is plain autograd (O(V·A·d), no scores).
"""

from __future__ import annotations

import functools

import torch

# Score entries held at once. On CPU 16 MiB of float32: the exp and the two GEMMs that read a
# block back then find it in cache. Forward and backward, yelp-sized, ms with 2^21 / 2^22 /
# 2^23 / 2^24 entries (benchmarks/contrast_ab.py --sweep, loaded 2-core machine):
#   DCCF (A = N = 8000, V = 3, d = 32)   1 thread  406 / 403 / 522 / 699
#                                        2 threads 418 / 415 / 624 / 733
#   LightGCL exact (4096 × 42,712 users  1 thread  1569 / 1465 / 2352 / 2618
#   and 7,000 × 26,822 items, d = 64)    2 threads 1916 / 1554 / 2041 / 2169
# (an earlier DCCF-only sweep, 2 threads: 236 / 227 / 228 / 325; 1 thread: 379 / 378 / 414 /
# 714). LightGCL's own copy used 2^24 entries, fresh per block, read back with d + 1 columns:
# the exact call is ~1.8x faster here (1 thread), 1.45x (2 threads).
# With bfloat16 scores (fast_score_dtype), quiet, 1 thread: DCCF 270 / 260 / 385 / 615 and
# LightGCL exact 921 / 788 / 765 / 1375, so 2^22 entries stay (8 MiB in bfloat16).
# On CUDA, larger blocks keep the kernel launches few (32 MiB: the size measured on the H200).
SCORE_BLOCK = 1 << 22
CUDA_SCORE_BLOCK = 1 << 23
# Scores in bfloat16 where the CPU multiplies it natively (fast_score_dtype). Forward and
# backward against float32 (contrast_ab.py --against 476505e --score-dtype bfloat16, paired
# medians, 1 thread): DCCF 0.48×, LightGCL exact 0.39×, sampled 0.52×. Per DCCF block (341 ×
# 3 × 4096, d = 32): score GEMM 3.30 → 0.84 ms, exp 2.93 → 1.37, the two gradient GEMMs 3.75
# → 0.71 and 5.59 → 1.03; the float32 row sum costs 0.67 ms where a bfloat16 one would cost
# 0.20 and round each norm to 0.4 %. A logit (a·c - 1)/τ ≤ 0 carries 8 significant bits: the
# largest terms, near 0, are exact to 0.4 % and the loss to about 1e-4 (tests/test_contrast).
BF16_SCORES = True


def block_rows(scores_per_row: int, device: torch.device) -> int:
    """Anchor rows per block when each row has `scores_per_row` (= V·N) scores.

    Args:
        scores_per_row: V·N, the candidate rows every anchor is scored against.
        device: where the scores live (CUDA takes larger blocks).

    Returns:
        At least 1, at most SCORE_BLOCK (CUDA_SCORE_BLOCK) // scores_per_row.
    """
    block = SCORE_BLOCK if device.type == "cpu" else CUDA_SCORE_BLOCK
    return max(1, block // max(1, scores_per_row))


class _WeightedLogSumExp(torch.autograd.Function):
    """Σ_v Σ_a w_a log Σ_n exp(a·c_vn / τ) for unit rows, in blocks of anchor rows (see the
    module docstring for the layout). Weights are constants: they get no gradient."""

    @staticmethod
    def forward(ctx, anchors, cands, weights, temperature: float, score_dtype: torch.dtype):
        n_views, n_cands, dim = cands.shape
        n_anchors = anchors.shape[0]
        need_anchors, need_cands = ctx.needs_input_grad[:2]
        exact = score_dtype == anchors.dtype
        flat = cands.reshape(n_views * n_cands, dim).to(score_dtype)
        cands_1 = torch.cat([flat, flat.new_ones(n_views * n_cands, 1)], 1)
        shifted = torch.cat(
            [anchors / temperature, anchors.new_full((n_anchors, 1), -1 / temperature)], 1
        ).to(score_dtype)
        rows = min(n_anchors, block_rows(n_views * n_cands, anchors.device))
        buffer = flat.new_empty(rows, n_views * n_cands)
        log_norms = anchors.new_empty(n_views, n_anchors)
        # Gradients accumulate in the anchors' dtype whatever the scores' dtype.
        grad_anchors = torch.empty_like(anchors) if need_anchors else None
        grad_flat = anchors.new_zeros(n_views * n_cands, dim) if need_cands else None
        for start in range(0, n_anchors, rows):
            stop = min(start + rows, n_anchors)
            scores = torch.mm(shifted[start:stop], cands_1.T, out=buffer[: stop - start]).exp_()
            by_row = scores.view(stop - start, n_views, n_cands)
            norm = by_row.sum(2, dtype=anchors.dtype)  # (b, V)
            log_norms[:, start:stop] = norm.T.log()
            if not (need_anchors or need_cands):
                continue
            # P_v = w ⊙ softmax_n / τ in place: each gradient is then one GEMM over all views.
            scale = weights[start:stop, None] / (temperature * norm)
            by_row.mul_(scale.to(score_dtype)[:, :, None])
            if need_anchors and exact:
                torch.mm(scores, flat, out=grad_anchors[start:stop])
            elif need_anchors:
                grad_anchors[start:stop] = torch.mm(scores, flat)
            if need_cands and exact:
                grad_flat.addmm_(scores.T, anchors[start:stop])
            elif need_cands:
                grad_flat += torch.mm(scores.T, anchors[start:stop].to(score_dtype))
        grad_cands = None if grad_flat is None else grad_flat.view(n_views, n_cands, dim)
        ctx.save_for_backward(grad_anchors, grad_cands)
        return (weights * (log_norms.sum(0) + n_views / temperature)).sum()

    @staticmethod
    def backward(ctx, grad_out):
        grad_anchors, grad_cands = ctx.saved_tensors
        return (
            None if grad_anchors is None else grad_out * grad_anchors,
            None if grad_cands is None else grad_out * grad_cands,
            None,
            None,
            None,
        )


def weighted_logsumexp(
    anchors: torch.Tensor,
    cands: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
    score_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Σ_v Σ_a w_a · log Σ_n exp(anchors_a · cands_vn / temperature), a scalar.

    Args:
        anchors: (A, d) unit rows.
        cands: (V, N, d) unit rows, V candidate stacks.
        temperature: τ ≥ 0.025 (float32 range of exp(-2/τ)).
        weights: (A,) constant anchor weights w_a; None for 1/A each.
        score_dtype: dtype of the scores and their GEMMs (`fast_score_dtype`); None for the
            anchors' own. Row sums, the value and the gradients stay in the anchors' dtype.

    Returns:
        A 0-d tensor of anchors' dtype, differentiable in anchors and cands.
    """
    if weights is None:
        weights = anchors.new_full((anchors.shape[0],), 1 / anchors.shape[0])
    return _WeightedLogSumExp.apply(
        anchors, cands, weights, temperature, score_dtype or anchors.dtype
    )


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    cands: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
    score_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Σ_v Σ_a w_a [log Σ_n exp(a·c_vn/τ) - a·p_va/τ] for unit rows, a scalar.

    Args:
        anchors: (A, d) unit rows a.
        positives: (V, A, d) unit rows p_va, each anchor's positive in stack v (may be cands);
            (A, d) when V = 1.
        cands: (V, N, d) unit rows c_vn, the candidates of stack v.
        temperature: τ ≥ 0.025.
        weights: (A,) constant anchor weights w_a; None for 1/A each (the mean over anchors).
        score_dtype: see `weighted_logsumexp`; the positive term is always exact.

    Returns:
        A 0-d tensor, the InfoNCE summed over the V stacks.
    """
    if weights is None:
        weights = anchors.new_full((anchors.shape[0],), 1 / anchors.shape[0])
    positive = (weights * (anchors * positives).sum(-1)).sum() / temperature
    return weighted_logsumexp(anchors, cands, temperature, weights, score_dtype) - positive


def fast_score_dtype(like: torch.Tensor) -> torch.dtype:
    """The scores' dtype for float32 rows `like`: bfloat16 on a CPU that multiplies it
    natively (AVX512-BF16 or AMX; see BF16_SCORES), else `like`'s own dtype. Float64 rows (the
    tests' references) and CUDA (not measured there) stay exact."""
    if like.dtype != torch.float32 or like.device.type != "cpu" or not BF16_SCORES:
        return like.dtype
    return torch.bfloat16 if native_bfloat16() else like.dtype


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (asked once: called at every step)."""
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16", False) or caps.get("amx_bf16", False))


def anchor_weights(nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's entries as distinct anchors weighted by multiplicity.

    Args:
        nodes: (B,) int64 node indices, with repeats.

    Returns:
        Distinct anchors (A,), each entry's position among them (B,), and weights count/B (A,)
        float32: Σ_a w_a f(a) = mean_b f(nodes_b).
    """
    anchors, inverse, counts = torch.unique(nodes, return_inverse=True, return_counts=True)
    return anchors, inverse, counts.float() / nodes.numel()
