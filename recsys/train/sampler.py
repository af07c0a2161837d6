"""Vectorised BPR sampling: every training interaction once per epoch, uniform negatives."""

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

    def __init__(self, train: sp.csr_matrix, rng: np.random.Generator):
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
        order = self.rng.permutation(len(self.users))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            users = self.users[idx]
            yield users, self.items[idx], self.sample_negatives(users)
