"""A synthetic interaction log with planted intents, for tests and demos whose answer is known."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.errors import ConfigError

IN_INTENT_MASS = 0.92  # dominant intent's share of a user's preference; ~80% of draws land there
ZIPF_EXPONENT = 1.2  # within-intent popularity 1/rank^s; top 10% of items get ~1/3 of interactions
CELLS_PER_BLOCK = 4_000_000  # bounds the (users x items) key matrix to ~32 MB per block


@dataclass
class SynthLog:
    """A synthetic log and the truth planted in it.

    Attributes:
        log: (n, 4) frame: `user_id` (String, "u0042"), `item_id` (String, "i0007"),
            `rating` (Float64, 1-5), `timestamp` (Int64, increasing within each user).
        user_intent: (n_users,) int64, the dominant intent of user "u{j}" at position j.
        item_intent: (n_items,) int64, the intent of item "i{j}" at position j.
    """

    log: pl.DataFrame
    user_intent: np.ndarray
    item_intent: np.ndarray


MAX_SCORED_PAIRS = 10**8  # every user is scored against every item: 400 MB of float32


def check_synth_counts(n_users, n_items, n_intents, interactions_per_user, seed) -> None:
    if n_users < 1 or n_items < 1 or n_intents < 1 or interactions_per_user < 1:
        raise ConfigError(
            f"users, items, intents and interactions per user must be ≥ 1, got {n_users}, "
            f"{n_items}, {n_intents}, {interactions_per_user}"
        )
    if n_intents > n_items:
        raise ConfigError(f"intents ({n_intents}) must not exceed items ({n_items})")
    if n_users * n_items > MAX_SCORED_PAIRS:
        raise ConfigError(
            f"users × items = {n_users * n_items:.3g} exceeds {MAX_SCORED_PAIRS:.0e} "
            "(the generator scores every pair): lower --users or --items"
        )
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2³²), got {seed}")


def synth_log(
    n_users: int = 1000,
    n_items: int = 500,
    n_intents: int = 8,
    interactions_per_user: int = 25,
    seed: int = 0,
) -> SynthLog:
    """Draw a log in which users and items cluster into `n_intents` latent intents.

    Each item belongs to one intent (intents equally sized, up to one item). Each user has a
    dominant intent holding 92% of their preference, the rest spread over all intents by a
    Dirichlet draw. Within an intent, item popularity is Zipf-like (the r-th item has weight
    1/r^1.2). A user's items are drawn without replacement from preference x popularity
    (Gumbel top-k), so about 80% fall in their intent. Per-user counts are power-law-ish: at
    least mean/5 plus a Pareto tail, capped at an intent's size, so the realised mean is a
    little under `interactions_per_user` (about 22 for the defaults). In-intent items are
    rated around 4.2, others around 2.5, so `min_rating=4` keeps mostly (~97%) in-intent items.

    Args:
        n_users: number of users.
        n_items: number of items.
        n_intents: number of latent intents K.
        interactions_per_user: mean interactions per user.
        seed: seeds the one `np.random.default_rng`; equal seeds give equal logs.

    Returns:
        The log and the planted user and item intents.
    """
    check_synth_counts(n_users, n_items, n_intents, interactions_per_user, seed)
    rng = np.random.default_rng(seed)
    item_intent = rng.permutation(np.arange(n_items) % n_intents)
    user_intent = rng.integers(n_intents, size=n_users)
    preference = user_preferences(user_intent, n_intents, rng)
    popularity = zipf_popularity_within_intent(item_intent)
    counts = interaction_counts(n_users, n_items // n_intents, interactions_per_user, rng)
    user_idx, item_idx = sample_interactions(preference[:, item_intent] * popularity, counts, rng)
    # Gumbel top-k yields each user's items most-preferred first; shuffle them before dating.
    order = np.lexsort((rng.random(len(user_idx)), user_idx))
    user_idx, item_idx = user_idx[order], item_idx[order]
    in_intent = user_intent[user_idx] == item_intent[item_idx]
    rating = np.clip(
        np.rint(np.where(in_intent, 4.2, 2.5) + rng.normal(0, 0.8, len(user_idx))), 1, 5
    )
    log = pl.DataFrame(
        {
            "user_id": padded_ids("u", user_idx, n_users),
            "item_id": padded_ids("i", item_idx, n_items),
            "rating": rating.astype(np.float64),
            "timestamp": increasing_timestamps(counts, rng),
        }
    )
    return SynthLog(log=log, user_intent=user_intent, item_intent=item_intent)


def user_preferences(
    user_intent: np.ndarray, n_intents: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_users, K) float64 rows summing to 1: mostly the dominant intent, a little elsewhere."""
    spread = rng.dirichlet(np.ones(n_intents), size=len(user_intent))
    return (1 - IN_INTENT_MASS) * spread + IN_INTENT_MASS * np.eye(n_intents)[user_intent]


def zipf_popularity_within_intent(item_intent: np.ndarray) -> np.ndarray:
    """(n_items,) float64: 1/rank^s within each intent, each intent's weights summing to 1."""
    order = np.argsort(item_intent, kind="stable")
    sorted_intent = item_intent[order]
    group_start = np.searchsorted(sorted_intent, sorted_intent, side="left")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - group_start + 1
    weight = 1.0 / rank**ZIPF_EXPONENT
    return weight / np.bincount(item_intent, weights=weight)[item_intent]


def interaction_counts(n_users: int, most: int, mean: int, rng: np.random.Generator) -> np.ndarray:
    """(n_users,) int64 interaction counts: a floor of mean/5 plus a Pareto(4) tail, <= `most`.

    Capping at an intent's size lets even the heaviest user stay mostly in their intent.
    """
    floor = max(1, mean // 5)
    # Pareto(a=4) has mean 1/3, so the tail adds (mean - floor) on average.
    tail = 3 * (mean - floor) * rng.pareto(4.0, size=n_users)
    return np.clip(floor + np.rint(tail).astype(np.int64), 1, max(1, most))


def sample_interactions(
    weights: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per user u, `counts[u]` distinct items drawn with probability proportional to weights[u].

    Gumbel top-k: the k largest log(w) + Gumbel noise are a weighted draw without replacement.
    Users are processed in blocks so the key matrix stays small.

    Returns:
        (user_idx, item_idx), int64 arrays of length counts.sum(), grouped by user.
    """
    n_users, n_items = weights.shape
    block = max(1, CELLS_PER_BLOCK // n_items)
    user_parts, item_parts = [], []
    for start in range(0, n_users, block):
        w = weights[start : start + block]
        keys = np.log(w) + rng.gumbel(size=w.shape)
        ranked = np.argsort(-keys, axis=1)
        take = np.arange(n_items) < counts[start : start + block, None]
        rows, cols = np.nonzero(take)
        user_parts.append(rows + start)
        item_parts.append(ranked[rows, cols])
    return np.concatenate(user_parts), np.concatenate(item_parts)


def increasing_timestamps(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(counts.sum(),) int64 unix-like seconds, strictly increasing within each user's run."""
    start = 1_600_000_000 + rng.integers(0, 30 * 86_400, size=len(counts))
    gaps = 1 + rng.exponential(3_600, size=counts.sum()).astype(np.int64)
    first = np.cumsum(counts) - counts
    # Cumulative gaps, restarted at each user's first row.
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], counts)
    return np.repeat(start, counts) + elapsed


def padded_ids(prefix: str, idx: np.ndarray, n: int) -> pl.Series:
    """Raw ids like "u0042": `prefix` plus `idx` zero-padded to at least 4 digits."""
    width = max(4, len(str(max(n - 1, 0))))
    return prefix + pl.Series(idx).cast(pl.String).str.zfill(width)


USERS_PER_INTERACTION = 1 / 20  # mean user degree 20, as in the table (1M -> 50k users)
ITEMS_PER_INTERACTION = 1 / 100  # mean item degree 100 (1M -> 10k items)
USER_EXPONENT = 0.5  # user weight 1/rank^0.5: heaviest user ~2.2·sqrt(n) draws, lightest ~10
ITEM_EXPONENT = 0.7  # item weight 1/rank^0.7: the top item holds ~1% of the log at 16M
POWERLAW_CHUNK = 2_000_000  # rows drawn per chunk: ~100 MB of ids and times, whatever n is
LOG_START = 1_600_000_000
LOG_SPAN = 365 * 86_400  # timestamps uniform over one year


def powerlaw_log(n_interactions: int, seed: int = 0) -> pl.DataFrame:
    """A log of `n_interactions` rows with Zipf-like user and item degrees, in one frame.

    The whole log in memory (about 48 bytes a row); `powerlaw_chunks` streams it instead.
    See `powerlaw_chunks` for the distribution.
    """
    return pl.concat(powerlaw_chunks(n_interactions, seed))


def powerlaw_chunks(n_interactions: int, seed: int = 0) -> Iterator[pl.DataFrame]:
    """The rows of a power-law log, in chunks of at most 2M, for logs larger than memory.

    Users and items are drawn independently for each row, each from a truncated power law on
    its ranks: P(rank r) ∝ r^-a on 1..m, sampled by inverting the continuous CDF
    (r = (1 + U·((m+1)^(1-a) - 1))^(1/(1-a))), so a row costs O(1) and nothing is scored
    against anything (unlike `synth_log`). m_users = n/20, m_items = n/100, a_user = 0.5,
    a_item = 0.7. Ranks are shuffled into ids, so id order says nothing about degree. A pair
    may repeat (heavy user, popular item): `data prepare` collapses it, as it would a re-view.
    There is no planted structure; this log is for measuring cost, not accuracy.

    Args:
        n_interactions: rows in the log, ≥ 100.
        seed: seeds the one `np.random.default_rng`; equal (n, seed) give equal logs.

    Yields:
        (≤ 2M, 3) frames: `user_id` (String, "u000042"), `item_id` (String, "i00007"),
        `timestamp` (Int64 unix seconds within one year, in no particular order).
    """
    if n_interactions < 100:
        raise ConfigError(f"a power-law log needs at least 100 interactions, got {n_interactions}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2³²), got {seed}")
    rng = np.random.default_rng(seed)
    n_users = max(1, round(n_interactions * USERS_PER_INTERACTION))
    n_items = max(1, round(n_interactions * ITEMS_PER_INTERACTION))
    user_of_rank = rng.permutation(n_users).astype(np.int32)
    item_of_rank = rng.permutation(n_items).astype(np.int32)
    for start in range(0, n_interactions, POWERLAW_CHUNK):
        size = min(POWERLAW_CHUNK, n_interactions - start)
        user_idx = user_of_rank[powerlaw_ranks(n_users, USER_EXPONENT, size, rng)]
        item_idx = item_of_rank[powerlaw_ranks(n_items, ITEM_EXPONENT, size, rng)]
        yield pl.DataFrame(
            {
                "user_id": padded_ids("u", user_idx, n_users),
                "item_id": padded_ids("i", item_idx, n_items),
                "timestamp": LOG_START + rng.integers(0, LOG_SPAN, size=size, dtype=np.int64),
            }
        )


def powerlaw_ranks(m: int, a: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size,) int64 ranks in [0, m), P(r) ≈ (r+1)^-a / Σ, by the inverse continuous CDF (a < 1)."""
    b = 1.0 - a
    r = (1.0 + rng.random(size) * ((m + 1.0) ** b - 1.0)) ** (1.0 / b)
    return np.minimum(r.astype(np.int64) - 1, m - 1)
