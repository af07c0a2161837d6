"""The shared blocked InfoNCE: values and gradients against dense float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.models import contrast
from recsys.models.contrast import anchor_weights, info_nce, weighted_logsumexp

ONE_ROW = 1  # SCORE_BLOCK entries: fewer than any row's V·N scores, so one anchor per block
ONE_BLOCK = 1 << 24


def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


def dense_info_nce(anchors, positives, cands, temperature, weights):
    """Σ_v Σ_a w_a [logsumexp_n(a·c_vn/τ) - a·p_va/τ] with the whole score matrix formed."""
    scores = torch.einsum("ad,vnd->van", anchors, cands) / temperature
    positive = (anchors * positives).sum(-1) / temperature
    return (weights * (torch.logsumexp(scores, 2) - positive)).sum()


@pytest.mark.parametrize("n_views", [1, 3])
@pytest.mark.parametrize("rows", [1, 2, None])  # anchor rows per block: 5 blocks, 2 + 2 + 1, one
@pytest.mark.parametrize("weighted", [True, False])
def test_info_nce_matches_dense_reference_values_and_gradients(
    monkeypatch, n_views, rows, weighted
):
    n_anchors, n_cands = 5, 7
    block = ONE_BLOCK if rows is None else rows * n_views * n_cands + n_cands - 1
    monkeypatch.setattr(contrast, "SCORE_BLOCK", block)
    assert contrast.block_rows(n_views * n_cands, torch.device("cpu")) == rows or rows is None
    gen = torch.Generator().manual_seed(n_views)
    raw = [
        torch.randn(n_anchors, 4, generator=gen, dtype=torch.float64),
        torch.randn(n_views, n_anchors, 4, generator=gen, dtype=torch.float64),
        torch.randn(n_views, n_cands, 4, generator=gen, dtype=torch.float64),
    ]
    weights = torch.rand(n_anchors, generator=gen, dtype=torch.float64) if weighted else None
    dense_weights = weights if weighted else torch.full((n_anchors,), 1 / n_anchors).double()
    results = []
    for fn, w in ((info_nce, weights), (dense_info_nce, dense_weights)):
        leaves = [x.clone().requires_grad_() for x in raw]
        a, p, c = (F.normalize(x, dim=-1) for x in leaves)
        value = fn(a, p, c, 0.3, w)
        (2.0 * value).backward()  # an upstream gradient other than 1
        results.append((value.detach(), *(x.grad for x in leaves)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def naive_dccf_info_nce(anchor, views, temperature):
    """DCCF's [ssl] by the book: Σ_v mean_n -log exp(a_n·b_vn/τ) / Σ_m exp(a_n·b_vm/τ)."""
    total = 0.0
    for view in views:
        for n in range(anchor.shape[0]):
            scores = torch.stack(
                [anchor[n] @ view[m] / temperature for m in range(anchor.shape[0])]
            )
            total = (
                total - torch.log(torch.exp(scores[n]) / torch.exp(scores).sum()) / anchor.shape[0]
            )
    return total


@pytest.mark.parametrize("block", [1 << 23, 5])  # 5 entries: one row per block
def test_views_as_their_own_candidates_match_naive_dccf_loss(monkeypatch, block):
    monkeypatch.setattr(contrast, "SCORE_BLOCK", block)
    gen = torch.Generator().manual_seed(1)
    raw_a, raw_v = (
        torch.randn(7, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 7, 5, generator=gen, dtype=torch.float64),
    )
    grads = []
    for fn in (lambda a, v, t: info_nce(a, v, v, t), naive_dccf_info_nce):
        a, v = raw_a.clone().requires_grad_(), raw_v.clone().requires_grad_()
        loss = fn(F.normalize(a, dim=1), F.normalize(v, dim=2), 0.5)
        (2.0 * loss).backward()
        grads.append((loss.detach(), a.grad, v.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def naive_lightgcl_info_nce(svd_view, main_view, nodes, temperature, cands=None):
    """LightGCL's L_s: mean over batch entries (repeats included) of the cosine InfoNCE."""
    g = F.normalize(svd_view[nodes], dim=1)
    e = F.normalize(main_view, dim=1)
    negatives = e if cands is None else e[cands]
    logits = g @ negatives.T / temperature
    positive = (g * e[nodes]).sum(1) / temperature
    return (torch.logsumexp(logits, 1) - positive).mean()


@pytest.mark.parametrize(
    "nodes, cands",
    [
        ([0, 3, 5, 7], None),  # distinct anchors, exact (all nodes)
        ([2, 2, 2, 9, 4, 9, 0], None),  # repeated anchors count with their multiplicity
        ([2, 2, 2, 9, 4, 9, 0], "batch"),  # in-batch negatives
        ([1, 1, 6], [3, 3, 8, 0, 11]),  # sampled negatives, drawn with repeats
    ],
)
@pytest.mark.parametrize("block", [7, ONE_BLOCK])  # many blocks of anchor rows, or one
def test_weighted_distinct_anchors_match_naive_mean_over_batch(monkeypatch, nodes, cands, block):
    monkeypatch.setattr(contrast, "SCORE_BLOCK", block)
    gen = torch.Generator().manual_seed(3)
    svd_view = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    main_view = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    nodes = torch.tensor(nodes)
    cands = (
        torch.unique(nodes) if cands == "batch" else None if cands is None else torch.tensor(cands)
    )
    anchors, inverse, weights = anchor_weights(nodes)
    torch.testing.assert_close(anchors[inverse], nodes)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))

    def deduplicated(s, m):
        negatives = m if cands is None else m[cands]
        g, e = F.normalize(s[anchors], dim=1), F.normalize(m[anchors], dim=1)
        return info_nce(g, e, F.normalize(negatives, dim=1)[None], 0.3, weights.double())

    grads = []
    for fn in (deduplicated, lambda s, m: naive_lightgcl_info_nce(s, m, nodes, 0.3, cands)):
        s, m = svd_view.clone().requires_grad_(), main_view.clone().requires_grad_()
        value = fn(s, m)
        value.backward()
        grads.append((value.detach(), s.grad, m.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("block", [ONE_ROW, ONE_BLOCK])
def test_value_without_gradients_and_gradient_for_one_input_only(monkeypatch, block):
    monkeypatch.setattr(contrast, "SCORE_BLOCK", block)
    gen = torch.Generator().manual_seed(4)
    a, c, w = unit(6, 3, gen=gen), unit(2, 9, 3, gen=gen), torch.rand(6, generator=gen).double()
    want = weighted_logsumexp(a.clone().requires_grad_(), c.clone().requires_grad_(), 0.4, w)
    with torch.no_grad():
        torch.testing.assert_close(weighted_logsumexp(a, c, 0.4, w), want.detach())
    for which in range(2):
        leaves = [a.clone(), c.clone()]
        leaves[which].requires_grad_()
        weighted_logsumexp(*leaves, 0.4, w).backward()
        full = [x.clone().requires_grad_() for x in (a, c)]
        weighted_logsumexp(*full, 0.4, w).backward()
        torch.testing.assert_close(leaves[which].grad, full[which].grad)
        assert leaves[1 - which].grad is None


def test_unweighted_is_the_mean_over_anchors():
    gen = torch.Generator().manual_seed(5)
    a, c = unit(4, 3, gen=gen), unit(1, 6, 3, gen=gen)
    torch.testing.assert_close(
        weighted_logsumexp(a, c, 0.5), torch.logsumexp(a @ c[0].T / 0.5, 1).mean()
    )


def test_smallest_temperature_stays_finite_in_float32_when_every_score_is_lowest():
    # τ = 0.025 and every candidate antipodal: each shifted logit is -2/τ = -80, and
    # exp(-80) is still a normal float32, so the row sum is not 0 and its log is finite.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    c = torch.tensor([[[-1.0, 0.0], [0.0, -1.0], [-0.6, -0.8]]], requires_grad=True)
    c_far = c.detach()[:, [0, 0, 0]].clone().requires_grad_()  # every candidate at -a_0
    value = weighted_logsumexp(a[:1], c_far, 0.025)
    value.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(c_far.grad).all()
    torch.testing.assert_close(value, torch.tensor(-40.0 + float(torch.log(torch.tensor(3.0)))))
    both = weighted_logsumexp(a, c, 0.025, torch.tensor([0.5, 0.5]))
    scores = (a @ c[0].T / 0.025).double()
    torch.testing.assert_close(
        both.double(), torch.logsumexp(scores, 1).mean(), rtol=1e-6, atol=1e-5
    )


def test_block_rows_bounds_the_block_and_cuda_takes_larger_ones():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert contrast.block_rows(3 * 8000, cpu) == contrast.SCORE_BLOCK // 24000
    assert contrast.block_rows(3 * 8000, cuda) == contrast.CUDA_SCORE_BLOCK // 24000
    assert contrast.block_rows(contrast.SCORE_BLOCK + 1, cpu) == 1
    assert contrast.block_rows(0, cpu) == contrast.SCORE_BLOCK


@pytest.mark.parametrize("n_views", [1, 3])
@pytest.mark.parametrize("block", [ONE_ROW, 300, ONE_BLOCK])
def test_bfloat16_scores_stay_within_their_precision_of_the_exact_loss(monkeypatch, n_views, block):
    # bfloat16 keeps 8 significant bits per score (0.4 %); the value and the gradients,
    # accumulated in float32, land within 1e-4 and 0.5 % of the exact ones.
    monkeypatch.setattr(contrast, "SCORE_BLOCK", block)
    gen = torch.Generator().manual_seed(6)
    raw = [torch.randn(40, 16, generator=gen), torch.randn(n_views, 60, 16, generator=gen)]
    positives_at = torch.arange(40) % 60
    results = []
    for score_dtype in (torch.float64, torch.bfloat16):
        leaves = [x.clone().requires_grad_() for x in raw]
        a, c = (F.normalize(x, dim=-1) for x in leaves)
        if score_dtype == torch.float64:
            a, c = a.double(), c.double()
        positives = c[:, positives_at] if n_views > 1 else c[0, positives_at]
        value = info_nce(a, positives, c, 0.2, score_dtype=score_dtype)
        value.backward()
        results.append((value.detach().float(), *(x.grad for x in leaves)))
    (exact, *exact_grads), (fast, *fast_grads) = results
    assert fast.dtype == torch.float32 and fast_grads[0].dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=0)
    for got, want in zip(fast_grads, exact_grads):
        assert float((got - want).norm() / want.norm()) < 5e-3


def test_fast_score_dtype_is_bfloat16_only_for_float32_on_a_native_bfloat16_cpu(monkeypatch):
    rows = torch.zeros(2, 3)
    for caps, want in (
        ({"avx512_bf16": True}, torch.bfloat16),
        ({"amx_bf16": True}, torch.bfloat16),
        ({"avx512_bf16": False, "avx2": True}, torch.float32),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        contrast.native_bfloat16.cache_clear()
        assert contrast.fast_score_dtype(rows) == want
        assert contrast.fast_score_dtype(rows.double()) == torch.float64
    monkeypatch.setattr(contrast, "BF16_SCORES", False)
    assert contrast.fast_score_dtype(rows) == torch.float32
    monkeypatch.undo()
    contrast.native_bfloat16.cache_clear()  # the real CPU's answer for the tests that follow
