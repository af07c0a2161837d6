import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.errors import ConfigError
from recsys.train.config import resolve_config
from recsys.train.sampler import BPRSampler


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    density=st.floats(0.05, 0.9),
    mode=st.sampled_from(["edge", "user"]),
)
def test_negatives_are_never_positives(seed, density, mode):
    train = sp.random(20, 8, density=density, random_state=seed, format="csr")
    train.data[:] = 1
    sampler = BPRSampler(train, np.random.default_rng(seed), mode)
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


def test_user_sampling_draws_every_user_equally_often():
    # Degrees 1, 9, 0 and 2: 12 pairs per epoch over 3 active users -> 4 draws each.
    dense = np.zeros((4, 10))
    dense[0, 3] = 1
    dense[1, 1:] = 1
    dense[3, [0, 5]] = 1
    train = sp.csr_matrix(dense)
    sampler = BPRSampler(train, np.random.default_rng(0), "user")
    batches = list(sampler.epoch(5))
    users = np.concatenate([b[0] for b in batches])
    pos = np.concatenate([b[1] for b in batches])
    assert len(batches) == sampler.n_batches(5) == 3
    assert np.bincount(users, minlength=4).tolist() == [4, 4, 0, 4]
    assert (dense[users, pos] == 1).all()
    # Each pass over the users is a permutation: the first three draws are three users.
    assert sorted(users[:3].tolist()) == [0, 1, 3]
    # The heavy user's positives are drawn uniformly, not always the same one.
    many = np.concatenate([b[1][b[0] == 1] for _ in range(200) for b in sampler.epoch(12)])
    counts = np.bincount(many, minlength=10)[1:]
    assert counts.min() > 0.5 * counts.mean()


def test_unknown_sampling_mode_is_refused():
    with pytest.raises(ConfigError, match="sampling.*edge, user.*'users'"):
        resolve_config("mf", ("flags", {"sampling": "users"}))
    assert resolve_config("mf", ("flags", {"sampling": "user"})).train.sampling == "user"


@pytest.mark.parametrize("mode", ["edge", "user"])
def test_nothing_to_sample_gives_an_empty_epoch(mode):
    train = sp.csr_matrix(np.ones((2, 3)))  # both users have seen every item
    assert list(BPRSampler(train, np.random.default_rng(0), mode).epoch(4)) == []
