import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.train.sampler import BPRSampler


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.05, 0.9))
def test_negatives_are_never_positives(seed, density):
    train = sp.random(20, 8, density=density, random_state=seed, format="csr")
    train.data[:] = 1
    sampler = BPRSampler(train, np.random.default_rng(seed))
    dense = train.toarray() > 0
    for users, pos, neg in sampler.epoch(7):
        assert dense[users, pos].all()
        assert not dense[users, neg].any()


def test_an_epoch_covers_every_training_pair_once():
    train = sp.random(50, 30, density=0.2, random_state=0, format="csr")
    train.data[:] = 1
    sampler = BPRSampler(train, np.random.default_rng(0))
    batches = list(sampler.epoch(64))
    users = np.concatenate([b[0] for b in batches])
    pos = np.concatenate([b[1] for b in batches])
    assert len(batches) == sampler.n_batches(64)
    assert sorted(zip(users.tolist(), pos.tolist())) == sorted(zip(*train.nonzero()))


def test_same_seed_same_batches_and_full_users_are_dropped():
    dense = np.zeros((3, 4))
    dense[0] = 1  # user 0 has seen every item: no negative exists
    dense[1, [0, 1, 2]] = 1  # user 1's only negative is item 3
    train = sp.csr_matrix(dense)
    a = list(BPRSampler(train, np.random.default_rng(5)).epoch(2))
    b = list(BPRSampler(train, np.random.default_rng(5)).epoch(2))
    assert all(np.array_equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))
    users = np.concatenate([x[0] for x in a])
    negs = np.concatenate([x[2] for x in a])
    assert set(users.tolist()) == {1} and set(negs.tolist()) == {3}
