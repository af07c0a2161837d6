import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.evaluate import evaluate, metrics_by_degree, top_k_items


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def scores_as_embeddings(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """User embeddings = the score rows, item embeddings = identity: u·i = scores[u, i]."""
    return scores.astype(np.float32), np.eye(scores.shape[1], dtype=np.float32)


def test_hand_computed_metrics_for_three_users():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # seen {0}; ranking 1,2,3,4,5; truth {2, 5}
            [
                0.1,
                0.2,
                0.3,
                0.4,
                0.5,
                0.6,
            ],  # nothing seen; ranking 5,4,3,2,1,0; truth {5} (one item)
            [
                0.6,
                0.5,
                0.4,
                0.3,
                0.2,
                0.1,
            ],  # nothing seen; ranking 0..5; truth {1,2,3,4} (more than K=2)
        ]
    )
    seen = csr([[0], [], []], 6)
    truth = csr([[2, 5], [5], [1, 2, 3, 4]], 6)
    m = evaluate(*scores_as_embeddings(scores), seen, truth, ks=(2, 3)).metrics
    log2 = math.log2
    # user 0: top2 = [1, 2] -> hit at rank 2; top3 = [1, 2, 3]
    u0 = dict(
        r2=1 / 2,
        n2=(1 / log2(3)) / (1 + 1 / log2(3)),
        p2=1 / 2,
        mrr=1 / 2,
        r3=1 / 2,
        n3=(1 / log2(3)) / (1 + 1 / log2(3)),
    )
    # user 1: top = [5, 4, 3] -> hit at rank 1
    u1 = dict(r2=1.0, n2=1.0, p2=1 / 2, mrr=1.0, r3=1.0, n3=1.0)
    # user 2: top2 = [0, 1] -> hit at rank 2 of 4 true; IDCG over min(4, 2) = 2 positions
    u2 = dict(
        r2=1 / 4,
        n2=(1 / log2(3)) / (1 + 1 / log2(3)),
        p2=1 / 2,
        mrr=1 / 2,
        r3=2 / 4,
        n3=(1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4)),
    )
    mean = lambda key: (u0[key] + u1[key] + u2[key]) / 3  # noqa: E731
    assert m["recall@2"] == pytest.approx(mean("r2"))
    assert m["ndcg@2"] == pytest.approx(mean("n2"))
    assert m["precision@2"] == pytest.approx(mean("p2"))
    assert m["mrr@2"] == pytest.approx(mean("mrr"))
    assert m["hit@2"] == pytest.approx(1.0)
    assert m["recall@3"] == pytest.approx(mean("r3"))
    assert m["ndcg@3"] == pytest.approx(mean("n3"))
    assert m["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert m["n_users"] == 3
    # top-2 lists: {1,2}, {5,4}, {0,1} -> 5 distinct of 6 items
    assert m["coverage@2"] == pytest.approx(5 / 6)


def test_ties_rank_the_lower_item_index_first():
    # items 1, 2, 4 tie at 3.0; the cut at k=2 must keep 1 and 2, never 4
    scores = torch.tensor([[1.0, 3, 3, 2, 3, 0]])
    assert top_k_items(scores, 2).tolist() == [[1, 2]]
    assert top_k_items(scores, 4).tolist() == [[1, 2, 4, 3]]
    truth = csr([[4]], 6)
    m = evaluate(*scores_as_embeddings(scores.numpy()), None, truth, ks=(2, 3)).metrics
    assert m["recall@2"] == 0.0  # item 4 loses the tie at the cut
    assert m["recall@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_all_equal_scores_follow_item_order():
    truth = csr([[0], [3]], 4)
    m = evaluate(
        np.ones((2, 1), np.float32), np.ones((4, 1), np.float32), None, truth, ks=(1,)
    ).metrics
    assert m["recall@1"] == 0.5  # both users get item 0 first


def test_users_without_truth_are_skipped_and_seen_items_never_ranked():
    scores = np.array([[5.0, 4, 3], [1, 2, 3], [3, 2, 1]])
    seen = csr([[0], [2], []], 3)
    truth = csr([[1], [], [2]], 3)
    res = evaluate(*scores_as_embeddings(scores), seen, truth, ks=(1,))
    assert res.users.tolist() == [0, 2]
    assert res.per_user["recall@1"].tolist() == [1.0, 0.0]  # user 0: item 0 masked, item 1 first


def test_blocks_do_not_change_the_result():
    rng = np.random.default_rng(0)
    users, items = (
        rng.normal(size=(50, 8)).astype(np.float32),
        rng.normal(size=(40, 8)).astype(np.float32),
    )
    seen = sp.random(50, 40, density=0.1, random_state=1, format="csr")
    truth = sp.random(50, 40, density=0.1, random_state=2, format="csr")
    truth = truth - truth.multiply(seen > 0)
    truth.eliminate_zeros()
    a = evaluate(users, items, seen, truth, ks=(5, 10)).metrics
    b = evaluate(users, items, seen, truth, ks=(5, 10), block_bytes=4 * 40 * 3).metrics
    assert a == b


def test_metrics_by_degree_groups_users_by_training_degree():
    scores = np.tile(np.arange(10, 0, -1, dtype=np.float32), (4, 1))
    train = csr([[9], [8, 9], [7, 8, 9], [6, 7, 8, 9]], 10)
    truth = csr([[0], [5], [0], [5]], 10)
    res = evaluate(*scores_as_embeddings(scores), train, truth, ks=(1,))
    groups = metrics_by_degree(res, train, n_groups=2)
    assert [(g["min_degree"], g["max_degree"], g["n_users"]) for g in groups] == [
        (1, 2, 2),
        (3, 4, 2),
    ]
    assert [g["recall@1"] for g in groups] == [0.5, 0.5]
