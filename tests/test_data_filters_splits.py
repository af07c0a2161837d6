"""Filters and splits on hand-built logs whose answers are worked out by hand."""

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.filters import dedupe, kcore, threshold
from recsys.data.splits import last_fraction_split, last_split, random_split, time_split
from recsys.errors import DataError


def pairs(df: pl.DataFrame) -> set[tuple]:
    return set(df.select("user_id", "item_id").iter_rows())


def test_dedupe_keeps_max_rating_and_latest_timestamp():
    df = pl.DataFrame(
        {
            "user_id": [1, 1, 2, 1],
            "item_id": [7, 8, 7, 7],
            "rating": [5.0, 3.0, 1.0, 2.0],
            "timestamp": [10, 11, 12, 30],
        }
    )
    assert dedupe(df).rows() == [(1, 7, 5.0, 30), (1, 8, 3.0, 11), (2, 7, 1.0, 12)]


def test_dedupe_without_rating_or_time_keeps_first_of_each_pair():
    df = pl.DataFrame({"user_id": ["b", "a", "b"], "item_id": ["x", "x", "x"]})
    assert dedupe(df).rows() == [("b", "x"), ("a", "x")]


def test_threshold_keeps_ratings_at_or_above():
    df = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "rating": [3.5, 4.0, 5.0]})
    assert threshold(df, 4).rows() == [(1, 2, 4.0), (1, 3, 5.0)]


def test_threshold_without_rating_column():
    with pytest.raises(DataError, match=r"min_rating=4 needs a rating column"):
        threshold(pl.DataFrame({"user_id": [1], "item_id": [1]}), 4)


def test_kcore_needs_more_than_one_pass():
    # k=2, a chain: item q has one interaction; dropping d-q leaves d with one (d-z), so d
    # goes next; that leaves z with one (c-z), then c with one (c-y): four passes to stabilise.
    df = pl.DataFrame(
        [
            ("a", "x"), ("a", "y"),
            ("b", "x"), ("b", "y"),
            ("c", "y"), ("c", "z"),
            ("d", "z"), ("d", "q"),
        ],
        schema=["user_id", "item_id"],
        orient="row",
    )  # fmt: skip
    one_pass = df.filter((pl.len().over("user_id") >= 2) & (pl.len().over("item_id") >= 2))
    assert pairs(df) - pairs(one_pass) == {("d", "q")}
    assert pairs(kcore(df, 2)) == {("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")}


def test_kcore_can_empty_a_log_and_k_le_1_keeps_all():
    df = pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2]})
    assert kcore(df, 2).height == 0
    assert kcore(df, 1).equals(df) and kcore(df, 0).equals(df)


def naive_kcore(edges: set[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    while True:
        users = [u for u, _ in edges]
        items = [i for _, i in edges]
        kept = {(u, i) for u, i in edges if users.count(u) >= k and items.count(i) >= k}
        if kept == edges:
            return kept
        edges = kept


@settings(max_examples=40, deadline=None)
@given(
    st.sets(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=30),
    st.integers(2, 4),
)
def test_kcore_matches_a_naive_fixed_point(edges, k):
    df = pl.DataFrame(sorted(edges), schema=["user_id", "item_id"], orient="row")
    assert pairs(kcore(df, k)) == naive_kcore(edges, k)


def log_with_user_sizes(sizes: dict[int, int]) -> pl.DataFrame:
    rows = [(u, 100 * u + j, j) for u, n in sizes.items() for j in range(n)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


def test_random_split_per_user_counts_are_exact():
    sizes = {1: 10, 2: 5, 3: 3, 4: 2, 5: 1}
    train, held = random_split(log_with_user_sizes(sizes), 0.8, np.random.default_rng(0))
    # floor(0.8 n + 0.5), at least 1: 10->8, 5->4, 3->2, 2->2, 1->1.
    assert dict(train.group_by("user_id").len().iter_rows()) == {1: 8, 2: 4, 3: 2, 4: 2, 5: 1}
    assert dict(held.group_by("user_id").len().iter_rows()) == {1: 2, 2: 1, 3: 1}
    assert pairs(train) | pairs(held) == pairs(log_with_user_sizes(sizes))
    assert not pairs(train) & pairs(held)


def test_random_split_is_reproducible_and_order_independent():
    df = log_with_user_sizes({u: 20 for u in range(10)})
    first = random_split(df, 0.5, np.random.default_rng(7))
    again = random_split(
        df.sample(fraction=1.0, shuffle=True, seed=3), 0.5, np.random.default_rng(7)
    )
    other = random_split(df, 0.5, np.random.default_rng(8))
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    assert not first[0].equals(other[0])


def test_random_split_rejects_a_bad_fraction():
    with pytest.raises(DataError, match=r"train_frac must be in \(0, 1\], got 1.5"):
        random_split(log_with_user_sizes({1: 2}), 1.5, np.random.default_rng(0))


def test_last_split_holds_out_each_users_latest():
    df = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3],
            "item_id": [10, 11, 12, 20, 21, 30],
            "timestamp": [5, 9, 1, 3, 2, 4],
        }
    )
    train, held = last_split(df, 1)
    assert held.select("user_id", "item_id").rows() == [(1, 11), (2, 20)]
    # User 3 has a single interaction: it stays in train.
    assert pairs(train) == {(1, 10), (1, 12), (2, 21), (3, 30)}


def test_last_split_orders_ties_by_item():
    df = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [9, 8, 7], "timestamp": [5, 5, 1]})
    _, held = last_split(df, 1)
    assert held["item_id"].to_list() == [9]


def test_last_split_needs_timestamps():
    with pytest.raises(DataError, match=r"needs a timestamp column"):
        last_split(pl.DataFrame({"user_id": [1], "item_id": [1]}), 1)


def test_last_fraction_split_keeps_one_in_train():
    train, held = last_fraction_split(log_with_user_sizes({1: 10, 2: 2, 3: 1}), 0.25)
    # max(1, floor(0.25 n + 0.5)), at most n - 1: 10->3, 2->1, 1->0.
    assert dict(held.group_by("user_id").len().iter_rows()) == {1: 3, 2: 1}
    assert held.filter(pl.col("user_id") == 1)["timestamp"].to_list() == [7, 8, 9]
    assert train.height == 9


def test_time_split_cuts_globally_and_ties_go_to_held():
    df = pl.DataFrame(
        {"user_id": [1, 2, 1, 2, 3], "item_id": [1, 2, 3, 4, 5], "timestamp": [10, 20, 30, 30, 40]}
    )
    train, held = time_split(df, 0.5)
    # m = floor(2.5 + 0.5) = 3: the cut is the 4th timestamp in time order (30); both 30s held.
    assert train["timestamp"].to_list() == [10, 20]
    assert held["timestamp"].to_list() == [30, 30, 40]
    train, held = time_split(df, 1.0)
    assert train.height == 5 and held.height == 0
