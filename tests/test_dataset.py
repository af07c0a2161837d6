"""prepare_dataset end to end, Dataset round trips and fingerprints, describe, real benchmarks."""

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.data import Dataset, describe, prepare_dataset, synth_log
from recsys.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Users 1..3 (integer ids), items 10..13; timestamps make each user's last item obvious.
LOG = """user,item,stars,ts
1,10,5,100
1,11,4,200
1,12,2,300
2,10,4,150
2,13,5,250
3,11,1,50
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def log_csv(tmp_path) -> Path:
    return write(tmp_path / "log.csv", LOG)


def prepare(path: Path, **options) -> Dataset:
    return prepare_dataset(
        path, user_col="user", item_col="item", rating_col="stars", time_col="ts", **options
    )


def test_last_split_matrices_and_sorted_integer_ids(log_csv):
    ds = prepare(log_csv, split="last:1", valid=0)
    assert ds.users.ids.to_list() == [1, 2, 3] and ds.users.is_integer
    assert ds.items.ids.to_list() == [10, 11, 12, 13]
    assert ds.valid is None
    assert ds.train.toarray().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert ds.test.toarray().tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]


def test_min_rating_drops_low_ratings_before_mapping_ids(log_csv):
    ds = prepare(log_csv, split="last:1", valid=0, min_rating=4)
    # User 3 only rated 1 and item 12 only got a 2: both vanish.
    assert ds.users.ids.to_list() == [1, 2]
    assert ds.items.ids.to_list() == [10, 11, 13]
    assert ds.train.toarray().tolist() == [[1, 0, 0], [1, 0, 0]]
    assert ds.test.toarray().tolist() == [[0, 1, 0], [0, 0, 1]]


def test_string_ids_are_sorted_strings(tmp_path):
    path = write(tmp_path / "log.tsv", "user_id\titem_id\nbob\tz\nalice\ty\nbob\ty\n")
    ds = prepare_dataset(path, split="random:1", valid=0)
    assert ds.users.ids.to_list() == ["alice", "bob"]
    assert ds.items.ids.to_list() == ["y", "z"]
    assert ds.train.toarray().tolist() == [[1, 0], [1, 1]]
    assert ds.test.nnz == 0


def test_random_split_with_valid_partitions_every_interaction(tmp_path):
    ds = prepare_dataset(synth_csv(tmp_path), split="random:0.8", valid=0.25, seed=1)
    total = ds.train + ds.valid + ds.test
    assert total.max() == 1  # disjoint
    assert total.nnz == ds.train.nnz + ds.valid.nnz + ds.test.nnz
    assert np.diff(ds.train.indptr).min() >= 1  # every user keeps one training interaction
    assert prepare_dataset(synth_csv(tmp_path), seed=1).fingerprint != ds.fingerprint


def test_same_seed_same_dataset(tmp_path):
    path = synth_csv(tmp_path)
    assert prepare_dataset(path, seed=5).fingerprint == prepare_dataset(path, seed=5).fingerprint
    assert prepare_dataset(path, seed=5).fingerprint != prepare_dataset(path, seed=6).fingerprint


def test_time_split_and_time_valid_are_global_cuts(tmp_path):
    path = synth_csv(tmp_path)
    ds = prepare_dataset(path, time_col="timestamp", split="time:0.8", valid=0.1)
    log = synth_log(n_users=200, n_items=100, seed=0).log
    times = log["timestamp"].to_numpy()
    user_idx = ds.users.index(log["user_id"])
    item_idx = ds.items.index(log["item_id"])
    in_split = {
        name: np.asarray(ds.split(name)[user_idx, item_idx]).ravel() == 1 for name in ds.split_names
    }
    assert times[in_split["train"]].max() < times[in_split["valid"]].min()
    assert times[in_split["valid"]].max() < times[in_split["test"]].min()


def test_save_load_round_trip(tmp_path, log_csv):
    # last:1, then valid=0.5 of what is left: user 1 (2 left) gives 1, users 2 and 3 (1 left) none.
    ds = prepare(log_csv, split="last:1", valid=0.5)
    ds.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    for name in ("train", "valid", "test"):
        assert (back.split(name) != ds.split(name)).nnz == 0
    assert back.users == ds.users and back.users.ids.to_list() == [1, 2, 3]
    assert back.items.ids.dtype == ds.items.ids.dtype
    assert back.fingerprint == ds.fingerprint
    assert back.meta == ds.meta and back.meta["split"] == "last:1"
    header = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert header["splits"] == {"train": 3, "valid": 1, "test": 2}


def test_fingerprint_changes_when_one_interaction_changes(tmp_path, log_csv):
    before = prepare(log_csv, split="last:1", valid=0)
    changed = write(tmp_path / "changed.csv", LOG.replace("2,10,4,150", "2,12,4,150"))
    after = prepare(changed, split="last:1", valid=0)
    assert after.users == before.users and after.items == before.items
    assert after.fingerprint != before.fingerprint


def test_load_rejects_tampered_files(tmp_path, log_csv):
    prepare(log_csv, split="last:1", valid=0).save(tmp_path / "ds")
    write(tmp_path / "ds" / "users.parquet", "junk")
    with pytest.raises(DataError, match=r"ds/users.parquet: unreadable \(parquet"):
        Dataset.load(tmp_path / "ds")


def damaged_copy(tmp_path, log_csv, **changes):
    """A dataset folder whose splits.npz arrays are replaced by `changes`."""
    prepare(log_csv, split="last:1", valid=0).save(tmp_path / "ds")
    with np.load(tmp_path / "ds" / "splits.npz") as z:
        arrays = dict(z) | changes
    np.savez(tmp_path / "ds" / "splits.npz", **arrays)
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train_indptr": np.array([0, 3, 1, 4])}, "train split indptr is not a non-decreasing"),
        ({"train_indptr": np.array([0, 2, 3])}, "train split indptr has 3 entries, expected 4"),
        ({"train_indices": np.array([0, 1, 9, 1])}, r"train split item indices outside \[0, 4\)"),
        ({"train_indices": np.array([0.0, 1, 1, 0])}, "train split arrays are not 1-d integers"),
        ({"shape": np.array([3, 5])}, "'shape' does not match dataset.json"),
    ],
)
def test_load_refuses_a_broken_csr_before_scipy_sees_it(tmp_path, log_csv, changes, message):
    # A broken indptr with a matching fingerprint used to crash scipy ("double free").
    with pytest.raises(DataError, match=f"splits.npz.*{message}"):
        Dataset.load(damaged_copy(tmp_path, log_csv, **changes))


@pytest.mark.parametrize("header", ["[]", "{}", '{"n_users": "3"}', "[" * 5000, ""])
def test_load_refuses_a_malformed_header(tmp_path, log_csv, header):
    prepare(log_csv, split="last:1", valid=0).save(tmp_path / "ds")
    write(tmp_path / "ds" / "dataset.json", header)
    with pytest.raises(DataError, match="ds/dataset.json: "):
        Dataset.load(tmp_path / "ds")


def test_describe_counts_and_quantiles(log_csv):
    summary = describe(prepare(log_csv, split="last:1", valid=0))
    assert summary == json.loads(json.dumps(summary))  # plain JSON types
    assert summary["users"] == 3 and summary["items"] == 4
    assert summary["interactions"] == {"train": 4, "test": 2}
    assert summary["train_density"] == pytest.approx(4 / 12)
    assert summary["users_without_train"] == 0 and summary["items_without_train"] == 2
    # Train degrees: users [2, 1, 1]; items [2, 2, 0, 0].
    assert summary["user_degree"]["max"] == 2.0 and summary["user_degree"]["p50"] == 1.0
    assert summary["item_popularity"]["min"] == 0.0 and summary["item_popularity"]["p50"] == 1.0


def test_split_csv_folder_is_used_as_given(tmp_path):
    write(tmp_path / "train.csv", "user_id,item_id\n0,0\n0,1\n1,1\n")
    write(tmp_path / "valid.csv", "user_id,item_id\n1,0\n")
    write(tmp_path / "test.csv", "user_id,item_id\n2,2\n0,2\n")
    ds = prepare_dataset(tmp_path)
    assert ds.meta["format"] == "split-csv" and ds.meta["split"] == "given"
    assert ds.users.ids.to_list() == [0, 1, 2] and ds.items.ids.to_list() == [0, 1, 2]
    assert ds.train.toarray().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert ds.valid.toarray().tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert ds.test.toarray().tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]


def test_lightgcn_folder_keeps_item_less_users_and_carves_valid(tmp_path):
    write(tmp_path / "train.txt", "0 0 1 2 3\n1 1 2\n2\n")
    write(tmp_path / "test.txt", "0 4\n1 0\n")
    ds = prepare_dataset(tmp_path, format="lightgcn", valid=0.25, seed=0)
    assert ds.users.ids.to_list() == [0, 1, 2]
    assert ds.items.ids.to_list() == [0, 1, 2, 3, 4]
    # User 0's 4 train items: floor(0.75*4 + 0.5) = 3 stay; user 1's 2: both stay.
    assert ds.valid.getnnz(axis=1).tolist() == [1, 0, 0]
    assert (ds.train + ds.valid).toarray()[:2].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert ds.train.getnnz(axis=1)[2] == 0
    assert prepare_dataset(tmp_path, valid=0).valid is None


def synth_csv(tmp_path: Path) -> Path:
    path = tmp_path / "synth.csv"
    synth_log(n_users=200, n_items=100, seed=0).log.write_csv(path)
    return path


def test_every_row_filtered_away(log_csv):
    with pytest.raises(
        DataError, match=r"log\.csv: no interactions left after min_rating=4 and kcore=5$"
    ):
        prepare(log_csv, min_rating=4, kcore=5)
    with pytest.raises(DataError, match=r"log\.csv: no interactions left after kcore=3$"):
        prepare(log_csv, kcore=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "xml"}, r"log\.csv: unknown format 'xml' \(expected one of: csv, tsv"),
        ({"split": "random:2"}, r"split 'random:2': expected random:F or time:F"),
        ({"split": "last:zero"}, r"split 'last:zero': expected"),
        ({"split": "shuffle"}, r"split 'shuffle': expected"),
        ({"split": "given"}, r"split 'given' needs a pre-split folder"),
        ({"split": "last:1", "time_col": None}, r"split 'last:1' orders by time; pass time_col"),
        ({"min_rating": 4, "rating_col": None}, r"min_rating=4 needs ratings; pass rating_col"),
        ({"valid": 1.0}, r"valid must be in \[0, 1\), got 1.0"),
        ({"format": "lightgcn"}, r"log\.csv: format 'lightgcn' needs a folder"),
    ],
)
def test_bad_options(log_csv, options, message):
    base = {"user_col": "user", "item_col": "item", "rating_col": "stars", "time_col": "ts"}
    with pytest.raises(DataError, match=message):
        prepare_dataset(log_csv, **{**base, **options})


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.csv: no such file or folder"):
        prepare_dataset(tmp_path / "nothing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: a folder without train\.csv"):
        prepare_dataset(tmp_path / "empty")
    write(tmp_path / "train.txt", "0 1\n")
    with pytest.raises(DataError, match=r"a lightgcn folder is already split; use split 'given'"):
        prepare_dataset(tmp_path, split="random:0.8")
    with pytest.raises(DataError, match=r"kcore=5: a lightgcn folder is used as published"):
        prepare_dataset(tmp_path, kcore=5)
    with pytest.raises(DataError, match=r": no train\.csv \(a split-csv folder holds"):
        prepare_dataset(tmp_path, format="split-csv")


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"benchmark data {path} is not present")
    return path


def test_ml100k_recbole_rating_at_least_4():
    path = shared("ml-100k") / "ml-100k.inter"
    ds = prepare_dataset(path, rating_col="rating", time_col="timestamp", split="last:1", valid=0)
    assert ds.n_users == 943 and ds.n_items == 1682
    assert ds.train.nnz + ds.test.nnz == 100_000
    liked = prepare_dataset(path, rating_col="rating", min_rating=4, split="random:1", valid=0)
    assert liked.train.nnz == 55_375  # rows with rating >= 4 (no repeated pairs in ml-100k)
    assert liked.n_users == 942  # one user rated nothing above 3


def test_yelp_sslrec_split_csv_counts():
    ds = prepare_dataset(shared("yelp-sslrec"))
    assert (ds.n_users, ds.n_items) == (42_712, 26_822)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (182_357, 13_025, 65_128)
    summary = describe(ds)
    assert summary["users_without_train"] == 538 and summary["items_without_train"] == 332


def test_gowalla_lightgcn_counts():
    ds = prepare_dataset(shared("gowalla-lightgcn"), valid=0)
    assert (ds.n_users, ds.n_items) == (29_858, 40_981)
    assert (ds.train.nnz, ds.test.nnz) == (810_128, 217_242)
    assert ds.valid is None
