"""Readers: formats, id dtypes, pre-split folders, and one-line DataErrors naming file and line."""

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.data.io import read_lightgcn, read_log, read_split_csv
from recsys.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_integer_ids_stay_integers_with_rating_and_timestamp(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,stars,when\n10,7,4.5,100\n3,7,2,200\n")
    df = read_log(path, user_col="user", item_col="item", rating_col="stars", time_col="when")
    assert df.schema == pl.Schema(
        {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    )
    assert df.rows() == [(10, 7, 4.5, 100), (3, 7, 2.0, 200)]


def test_csv_without_rating_or_time_has_only_id_columns(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,5\n")
    assert read_log(path).columns == ["user_id", "item_id"]


def test_string_ids_and_zero_padded_ids_stay_strings(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\nalice,007\nbob,7\n")
    df = read_log(path)
    assert df.schema == pl.Schema({"user_id": pl.String, "item_id": pl.String})
    # '007' and '7' are different raw ids; casting them to int would merge them.
    assert df["item_id"].to_list() == ["007", "7"]


def test_fractional_timestamps_are_float(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,t\n1,2,1.5\n1,3,2\n")
    df = read_log(path, time_col="t")
    assert df["timestamp"].dtype == pl.Float64
    assert df["timestamp"].to_list() == [1.5, 2.0]


def test_tsv_and_tab_extensions(tmp_path):
    for name in ("log.tsv", "log.tab"):
        path = write(tmp_path / name, "user_id\titem_id\n1\t2\n1\t3\n")
        assert read_log(path).rows() == [(1, 2), (1, 3)]


def test_parquet_keeps_dtypes(tmp_path):
    path = tmp_path / "log.pq"
    pl.DataFrame({"u": ["a", "b"], "i": [1, 2], "r": [5, 3]}).write_parquet(path)
    df = read_log(path, user_col="u", item_col="i", rating_col="r")
    assert df.schema == pl.Schema({"user_id": pl.String, "item_id": pl.Int64, "rating": pl.Float64})
    assert df.rows() == [("a", 1, 5.0), ("b", 2, 3.0)]


def test_parquet_datetimes_become_epoch_seconds(tmp_path):
    path = tmp_path / "log.parquet"
    when = pl.Series([datetime(1970, 1, 1, 0, 1), datetime(1970, 1, 2)])
    pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "t": when}).write_parquet(path)
    assert read_log(path, time_col="t")["timestamp"].to_list() == [60, 86_400]


def test_recbole_typed_header_is_stripped(tmp_path):
    path = write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n",
    )
    df = read_log(path, rating_col="rating", time_col="timestamp")
    assert df.rows() == [(196, 242, 3.0, 881250949)]
    assert read_log(path, format="recbole").rows() == [(196, 242)]


def test_format_overrides_extension(tmp_path):
    path = write(tmp_path / "log.txt", "user_id\titem_id\nu1\ti1\n")
    assert read_log(path, format="tsv").rows() == [("u1", "i1")]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"x\.csv: no such file$"):
        read_log(tmp_path / "x.csv")


def test_missing_column_lists_the_columns(tmp_path):
    path = write(tmp_path / "log.csv", "user,item\n1,2\n")
    with pytest.raises(DataError, match=r"log\.csv: no column 'rating' \(columns: user, item\)"):
        read_log(path, user_col="user", item_col="item", rating_col="rating")


def test_header_only_log_has_no_interactions(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\n")
    with pytest.raises(DataError, match=r"log\.csv: no interactions$"):
        read_log(path)


def test_empty_file_has_no_interactions(tmp_path):
    path = write(tmp_path / "log.csv", "")
    with pytest.raises(DataError, match=r"log\.csv: no interactions"):
        read_log(path)


def test_non_numeric_rating_names_its_line(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,rating\n1,2,5\n1,3,abc\n1,4,x\n")
    with pytest.raises(DataError, match=r"log\.csv: line 3: rating 'abc' is not a number"):
        read_log(path, rating_col="rating")


def test_empty_timestamp_names_its_line(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,ts\n1,2,5\n1,3,6\n1,4,\n")
    with pytest.raises(DataError, match=r"log\.csv: line 4: timestamp '' is not a number"):
        read_log(path, time_col="ts")


def test_empty_user_id_names_its_line(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\n1,2\n,3\n")
    with pytest.raises(DataError, match=r"log\.csv: line 3: empty user_id"):
        read_log(path)


def test_unknown_format_and_extension(tmp_path):
    path = write(tmp_path / "log.json", "{}")
    with pytest.raises(DataError, match=r"log\.json: unknown format 'json' \(expected one of"):
        read_log(path, format="json")
    with pytest.raises(DataError, match=r"log\.json: cannot tell the format from the extension"):
        read_log(path)


def test_ragged_csv_is_a_data_error_not_a_polars_error(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\n1,2\n1,2,3\n")
    with pytest.raises(DataError, match=r"log\.csv: not a readable csv file \(") as info:
        read_log(path)
    assert "\n" not in str(info.value)


def test_corrupt_parquet_is_a_data_error(tmp_path):
    path = write(tmp_path / "log.parquet", "not parquet")
    with pytest.raises(DataError, match=r"log\.parquet: not a readable parquet file"):
        read_log(path)


def split_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        write(tmp_path / name, text)
    return tmp_path


def test_split_csv_reads_each_present_file(tmp_path):
    folder = split_folder(
        tmp_path, {"train.csv": "user_id,item_id\n0,0\n0,1\n", "test.csv": "user_id,item_id\n1,1\n"}
    )
    frames = read_split_csv(folder)
    assert sorted(frames) == ["test", "train"]
    assert frames["train"].rows() == [(0, 0), (0, 1)]
    assert frames["test"].rows() == [(1, 1)]


def test_split_csv_shares_string_dtype_when_one_file_has_string_ids(tmp_path):
    folder = split_folder(
        tmp_path,
        {"train.csv": "user_id,item_id\n0,0\n", "valid.csv": "user_id,item_id\nu1,0\n"},
    )
    frames = read_split_csv(folder)
    assert frames["train"]["user_id"].dtype == pl.String
    assert frames["train"]["item_id"].dtype == pl.Int64


def test_split_csv_needs_train_csv(tmp_path):
    write(tmp_path / "test.csv", "user_id,item_id\n0,0\n")
    with pytest.raises(DataError, match=r": no train\.csv \(a split-csv folder holds"):
        read_split_csv(tmp_path)
    with pytest.raises(DataError, match=r"nope: no such folder"):
        read_split_csv(tmp_path / "nope")


def test_lightgcn_lines_including_a_user_with_no_items(tmp_path):
    folder = split_folder(
        tmp_path, {"train.txt": "0 5 6 7\n1\n2 6\n\n", "test.txt": "0 8\n3 5  6 \n"}
    )
    frames = read_lightgcn(folder)
    assert frames["train"].rows() == [(0, 5), (0, 6), (0, 7), (2, 6)]
    assert frames["test"].rows() == [(0, 8), (3, 5), (3, 6)]
    assert frames["train"].schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64})
    # User 1 has a line but no items: still a user.
    assert frames["users"]["user_id"].to_list() == [0, 1, 2, 3]


def test_lightgcn_malformed_line_names_it(tmp_path):
    folder = split_folder(tmp_path, {"train.txt": "0 1 2\n1 3 x4\n"})
    with pytest.raises(DataError, match=r"train\.txt: line 2: 'x4' is not a 0-based integer id"):
        read_lightgcn(folder)


def test_lightgcn_needs_train_txt(tmp_path):
    write(tmp_path / "test.txt", "0 1\n")
    with pytest.raises(DataError, match=r": no train\.txt"):
        read_lightgcn(tmp_path)


def test_lightgcn_without_any_item_has_no_interactions(tmp_path):
    folder = split_folder(tmp_path, {"train.txt": "0\n1\n"})
    with pytest.raises(DataError, match=r"train\.txt: no interactions"):
        read_lightgcn(folder)
