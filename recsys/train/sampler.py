"""Vectorised BPR sampling, uniform negatives; an epoch is as many triples as training pairs.

Two ways to pick the (user, positive) pairs:
- "edge": every training interaction exactly once per epoch, in random order. Heavy users get
  as many steps as they have items.
- "user": users in random order, each equally often (a fresh permutation of the users with
  training items per pass, so a batch repeats a user only across a pass boundary; the last,
  partial pass of an epoch makes counts differ by at most one), with one of their positives
  drawn uniformly. This is the protocol of the LightGCN and DCCF reference
  code; it weighs every user the same, as user-averaged Recall@K and NDCG@K do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp


class BPRSampler:
    """Yields (users, pos_items, neg_items) int64 arrays covering all training pairs per epoch.

    Negatives are drawn uniformly over items and redrawn where they hit one of the user's
    positives; membership is a binary search over sorted (user · n_items + item) keys, so no
    Python loop runs per interaction.
    """

    MODES = ("edge", "user")

    def __init__(self, train: sp.csr_matrix, rng: np.random.Generator, mode: str = "edge"):
        if mode not in self.MODES:
            raise ValueError(f"sampling must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        train = sp.csr_matrix(train)
        train.sort_indices()
        self.n_items = train.shape[1]
        self.users = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
        self.items = train.indices.astype(np.int64)
        self.keys = self.users * self.n_items + self.items  # sorted: CSR rows, sorted columns
        self.rng = rng
        full = np.diff(train.indptr) >= self.n_items
        if full.any():
            # A user who has seen every item has no negative to sample; drop their pairs.
            keep = ~full[self.users]
            self.users, self.items, self.keys = self.users[keep], self.items[keep], self.keys[keep]
        # Per user, the slice of self.items holding their positives ("user" mode).
        counts = np.bincount(self.users, minlength=train.shape[0])
        self.active_users = np.flatnonzero(counts)
        self.user_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.user_degree = counts

    def __len__(self) -> int:
        return len(self.users)

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self.users) // batch_size)

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """One uniform negative item per entry of `users`, never one of that user's positives."""
        neg = self.rng.integers(0, self.n_items, size=len(users))
        todo = np.arange(len(users))
        while len(todo):
            keys = users[todo] * self.n_items + neg[todo]
            pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            todo = todo[self.keys[pos] == keys]
            neg[todo] = self.rng.integers(0, self.n_items, size=len(todo))
        return neg

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not len(self.users):
            return  # nothing to sample: no user has both a positive and a negative
        if self.mode == "edge":
            order = self.rng.permutation(len(self.users))
            users, pos = self.users[order], self.items[order]
        else:
            passes = -(-len(self.users) // max(len(self.active_users), 1))
            users = np.concatenate([self.rng.permutation(self.active_users) for _ in range(passes)])
            users = users[: len(self.users)]
            offset = (self.rng.random(len(users)) * self.user_degree[users]).astype(np.int64)
            pos = self.items[self.user_start[users] + offset]
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            yield batch, pos[start : start + batch_size], self.sample_negatives(batch)
