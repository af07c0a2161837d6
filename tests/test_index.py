import numpy as np
import pytest
import scipy.sparse as sp

from recsys.index import build_index, load_index, recall_vs_exact, save_index, search


def brute_force(users, items, seen, k):
    scores = users @ items.T
    scores[seen.toarray() > 0] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_flat_index_equals_brute_force_with_seen_items_excluded():
    rng = np.random.default_rng(0)
    users, items = (
        rng.normal(size=(40, 16)).astype(np.float32),
        rng.normal(size=(300, 16)).astype(np.float32),
    )
    seen = sp.random(40, 300, density=0.05, random_state=0, format="csr")
    index = build_index(items)
    got, scores = search(index, users, 20, seen, np.arange(40))
    np.testing.assert_array_equal(got, brute_force(users, items, seen, 20))
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert not any(np.isin(got[u], seen[u].indices).any() for u in range(40))


def test_queries_name_their_row_of_seen_in_any_order_and_unsorted_rows_are_handled():
    rng = np.random.default_rng(2)
    users, items = rng.normal(size=(30, 8)), rng.normal(size=(200, 8))
    users, items = users.astype(np.float32), items.astype(np.float32)
    seen = sp.random(30, 200, density=0.2, random_state=1, format="csr")
    rows = rng.permutation(30)[:12]  # 12 queries, for users 'rows' of seen
    expected = brute_force(users[rows], items, seen[rows], 20)
    shuffled = seen.copy()
    for r in range(30):  # the same sets, each row's indices reversed
        lo, hi = shuffled.indptr[r], shuffled.indptr[r + 1]
        shuffled.indices[lo:hi] = shuffled.indices[lo:hi][::-1].copy()
        shuffled.data[lo:hi] = shuffled.data[lo:hi][::-1].copy()
    shuffled.has_sorted_indices = False
    for matrix in (seen, shuffled):
        got, _ = search(build_index(items), users[rows], 20, matrix, rows)
        np.testing.assert_array_equal(got, expected)


def test_a_user_who_has_seen_thousands_of_items_still_gets_k_unseen():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(5000, 8)).astype(np.float32)
    user = items[:1] * 3  # most similar to item 0 and its neighbours
    ranked = np.argsort(-(user @ items.T)[0])
    seen = sp.csr_matrix((np.ones(4000), (np.zeros(4000), ranked[:4000])), shape=(1, 5000))
    got, _ = search(build_index(items), user, 10, seen, np.array([0]))
    np.testing.assert_array_equal(got[0], ranked[4000:4010])


def test_a_user_with_fewer_unseen_items_than_k_gets_padding():
    items = np.eye(4, dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 1, 1, 0]]))
    got, scores = search(build_index(items), np.ones((1, 4), np.float32), 3, seen, np.array([0]))
    assert got.tolist() == [[3, -1, -1]]
    assert np.isneginf(scores[0, 1:]).all()


def test_save_load_round_trip(tmp_path):
    items = np.random.default_rng(2).normal(size=(100, 8)).astype(np.float32)
    save_index(build_index(items), tmp_path / "items.faiss")
    loaded = load_index(tmp_path / "items.faiss")
    q = items[:5]
    np.testing.assert_array_equal(search(loaded, q, 7)[0], search(build_index(items), q, 7)[0])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_report_their_recall(kind):
    rng = np.random.default_rng(3)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    assert recall_vs_exact(build_index(items, "flat"), items, queries) == 1.0
    assert 0.6 < recall_vs_exact(build_index(items, kind), items, queries) <= 1.0
