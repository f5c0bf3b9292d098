"""Reading csv, parquet and MovieLens '::' files, and how ids are typed."""

from __future__ import annotations

import math
from pathlib import Path

from chispa import assert_df_equality
from pyspark.sql import functions as F

from cfspark.app.config import load_defaults
from cfspark.core.plans import MIN_PARTITIONS, PARTITION_RATINGS, bounded_partitions, fewer_partitions, planned_with
from cfspark.data.read import Columns, default_ratings_path, read_ratings
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


def test_a_csv_header_with_dots_and_spaces_names_the_columns_exactly(spark, tmp_path):
    (tmp_path / "r.csv").write_text("user.id,item id,r.v,extra\n7,x,1.5,0\n8,y,2,0\n")
    df, cols = read_ratings(
        spark, _input(path=str(tmp_path / "r.csv"), user_col="user.id", item_col="item id", rating_col="r.v")
    )
    assert df.columns == ["user.id", "item id", "r.v"]
    got = validate_ratings(df, cols, id_type="auto", duplicates="error")
    assert sorted(map(tuple, got.collect())) == [(7, "x", 1.5), (8, "y", 2.0)]


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


def _partitions(df) -> int:
    return df.select(F.spark_partition_id().alias("p")).distinct().count()


def test_an_input_of_many_small_partitions_leaves_validation_in_fewer(spark):
    rows = [(u, i, float(1 + (u * i) % 5)) for u in range(60) for i in range(50)]  # 3,000
    many = spark.createDataFrame(rows, "u long, i long, r double").repartition(40)
    cols = Columns(user="u", item="i", rating="r")
    got = validate_ratings(many, cols, id_type="keep", duplicates="error")
    # 3,000 ratings in 40 partitions: coalesced to the fewest, MIN_PARTITIONS, without a shuffle.
    assert _partitions(many) == 40 and _partitions(got) == MIN_PARTITIONS
    want = spark.createDataFrame(rows, "user long, item long, rating double")
    assert_df_equality(got, want, ignore_row_order=True)
    # An input already in few partitions keeps them.
    few = spark.createDataFrame(rows, "u long, i long, r double").repartition(3)
    assert _partitions(validate_ratings(few, cols, id_type="keep", duplicates="error")) == 3


def test_fewer_partitions_keeps_one_per_partition_ratings(spark):
    df = spark.range(1000).repartition(100)
    # As if it held 10M ratings: ⌈10M / PARTITION_RATINGS⌉ = 40 partitions.
    assert _partitions(fewer_partitions(df, 10_000_000, 100)) == math.ceil(10_000_000 / PARTITION_RATINGS) == 40
    assert fewer_partitions(df, 10_000_000, 40) is df


def test_a_first_pass_runs_in_at_most_the_sessions_shuffle_partitions(spark):
    df = spark.range(1000).repartition(100)
    shuffle = "spark.sql.shuffle.partitions"
    with planned_with(spark, {shuffle: "20"}):
        assert _partitions(bounded_partitions(df)) == 20
        assert _partitions(bounded_partitions(spark.range(1000).repartition(3))) == 3  # never more
    with planned_with(spark, {shuffle: "2"}):
        assert _partitions(bounded_partitions(df)) == MIN_PARTITIONS
    assert sorted(r.id for r in bounded_partitions(df).collect()) == list(range(1000))
