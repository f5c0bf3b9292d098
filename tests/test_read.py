"""Reading csv, parquet and MovieLens '::' files, and how ids are typed."""

from __future__ import annotations

from pathlib import Path

from cfspark.app.config import load_defaults
from cfspark.data.read import default_ratings_path, read_ratings
from cfspark.data.validate import validate_ratings


def _input(**over):
    return {**load_defaults()["input"], **over}


def test_default_data_is_pysparks_sample_file_read_as_movielens(spark):
    path = Path(default_ratings_path())
    assert path.is_file() and path.name == "sample_movielens_ratings.txt" and ".zip" not in str(path)
    df, cols = read_ratings(spark, _input(path=""))
    ratings = validate_ratings(df, cols, id_type="auto", duplicates="error")
    first_line = path.read_text().splitlines()[0].split("::")
    assert ratings.count() == len(path.read_text().splitlines()) == 1501
    assert dict(ratings.dtypes) == {"user": "bigint", "item": "bigint", "rating": "double"}
    row = ratings.filter(f"user = {first_line[0]} and item = {first_line[1]}").first()
    assert row.rating == float(first_line[2])


def test_headerless_csv_takes_columns_by_position(spark, tmp_path):
    (tmp_path / "r.tsv").write_text("a\tx\t1.5\nb\ty\t2\n")
    df, cols = read_ratings(
        spark,
        _input(
            path=str(tmp_path / "r.tsv"),
            header=False,
            delimiter="\t",
            user_col="who",
            item_col="what",
            rating_col="stars",
        ),
    )
    assert df.columns == ["who", "what", "stars"]
    got = validate_ratings(df, cols, id_type="auto", duplicates="error")
    assert sorted(map(tuple, got.collect())) == [("a", "x", 1.5), ("b", "y", 2.0)]


def test_parquet_keeps_long_ids_and_string_ids_can_be_forced(spark, tmp_path):
    spark.createDataFrame([(2**40, 7, 3), (5, 7, 4)], "u long, i int, r int").write.parquet(str(tmp_path / "p"))
    df, cols = read_ratings(
        spark, _input(path=str(tmp_path / "p"), format="parquet", user_col="u", item_col="i", rating_col="r")
    )
    got = validate_ratings(df, cols, id_type="auto", duplicates="error")
    assert dict(got.dtypes) == {"user": "bigint", "item": "bigint", "rating": "double"}
    assert sorted(map(tuple, got.collect())) == [(5, 7, 4.0), (2**40, 7, 3.0)]
    as_text = validate_ratings(df, cols, id_type="string", duplicates="error")
    assert sorted(r.user for r in as_text.collect()) == ["1099511627776", "5"]
