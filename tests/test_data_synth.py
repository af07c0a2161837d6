"""The synthetic log: deterministic per seed, with its planted intents recoverable."""

import numpy as np
import polars as pl
import pytest

from recsys.data import powerlaw_chunks, powerlaw_log, synth_log
from recsys.data.filters import threshold


@pytest.fixture(scope="module")
def synth():
    return synth_log(seed=0)


def dense(ids: pl.Series) -> np.ndarray:
    """'u0042' -> 42."""
    return ids.str.slice(1).cast(pl.Int64).to_numpy()


def in_intent(synth) -> np.ndarray:
    log = synth.log
    return synth.user_intent[dense(log["user_id"])] == synth.item_intent[dense(log["item_id"])]


def test_same_seed_same_frame_other_seed_differs():
    a, b, c = synth_log(seed=3), synth_log(seed=3), synth_log(seed=4)
    assert a.log.equals(b.log)
    assert np.array_equal(a.user_intent, b.user_intent)
    assert np.array_equal(a.item_intent, b.item_intent)
    assert not a.log.equals(c.log)


def test_shapes_ids_and_dtypes(synth):
    log = synth.log
    assert log.schema == pl.Schema(
        {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}
    )
    assert synth.user_intent.shape == (1000,) and synth.item_intent.shape == (500,)
    assert log["user_id"][0] == "u0000"
    assert log["item_id"].str.contains(r"^i\d{4}$").all()
    assert set(np.unique(synth.item_intent)) == set(range(8))
    assert log.select("user_id", "item_id").n_unique() == log.height  # no repeated pairs
    assert set(log["rating"].unique().to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_interactions_per_user_are_skewed_around_the_mean(synth):
    counts = synth.log.group_by("user_id").len()["len"].to_numpy()
    assert len(counts) == 1000
    assert 18 <= counts.mean() <= 27
    assert counts.min() >= 5 and counts.max() >= 3 * np.median(counts)


def test_timestamps_increase_within_each_user(synth):
    steps = synth.log.select(pl.col("timestamp").diff().over("user_id").drop_nulls())
    assert (steps.to_series() > 0).all()


def test_planted_intents_are_recoverable(synth):
    assert in_intent(synth).mean() > 0.7
    # Each user's most frequent item intent is their planted one, for nearly every user.
    log = synth.log.with_columns(intent=pl.Series(synth.item_intent[dense(synth.log["item_id"])]))
    top = log.group_by("user_id", "intent").len().sort("len", "intent", descending=True)
    majority = top.unique("user_id", keep="first").sort("user_id")
    recovered = majority["intent"].to_numpy() == synth.user_intent[dense(majority["user_id"])]
    assert recovered.mean() > 0.9


def test_item_popularity_is_skewed(synth):
    popularity = np.sort(synth.log.group_by("item_id").len()["len"].to_numpy())[::-1]
    assert popularity[: len(popularity) // 10].sum() > 0.3 * popularity.sum()


def test_min_rating_4_keeps_mostly_in_intent_items(synth):
    liked = threshold(synth.log.with_columns(hit=pl.Series(in_intent(synth))), 4)
    assert liked["hit"].mean() > 0.9
    assert 0.4 < liked.height / synth.log.height < 0.9


def test_powerlaw_log_sizes_ids_and_determinism():
    log = powerlaw_log(20_000, seed=1)
    assert log.schema == pl.Schema(
        {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    )
    assert log.height == 20_000
    assert log["user_id"].n_unique() <= 1000 and log["item_id"].n_unique() <= 200
    assert log["user_id"].str.len_chars().unique().to_list() == [5]  # "u" + 4 digits
    assert log.equals(powerlaw_log(20_000, seed=1))
    assert not log.equals(powerlaw_log(20_000, seed=2))


def test_powerlaw_log_degrees_are_skewed_but_not_degenerate():
    log = powerlaw_log(200_000, seed=0)
    users = log["user_id"].value_counts()["count"].to_numpy()
    items = log["item_id"].value_counts()["count"].to_numpy()
    # 1/rank^0.5 over 10k users: heaviest ≈ n/(2·sqrt(m)) = 1000, mean 20.
    assert 600 < users.max() < 1400 and abs(users.mean() - 20) < 1
    # 1/rank^0.7 over 2k items: top item ≈ 0.3·n/m^0.3 ≈ 6000.
    assert 4000 < items.max() < 8000
    assert np.median(items) < items.mean()  # a long tail
    duplicates = 1 - log.select("user_id", "item_id").n_unique() / log.height
    assert duplicates < 0.05


def test_powerlaw_chunks_are_bounded_and_concatenate_to_the_log(monkeypatch):
    monkeypatch.setattr("recsys.data.synth.POWERLAW_CHUNK", 40)
    chunks = list(powerlaw_chunks(150, seed=3))
    assert [c.height for c in chunks] == [40, 40, 40, 30]
    assert pl.concat(chunks).equals(powerlaw_log(150, seed=3))
