"""cfspark as a drop-in for pyspark.ml's ALS: the ids ALS pipelines feed in, its model
attributes, and its Params and output shapes under outputStyle="als"."""

from __future__ import annotations

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import StringIndexer
from pyspark.sql import functions as F

from cfspark import CFModel, CollaborativeFilter
from cfspark.core.errors import InputError
from cfspark.data.read import Columns
from cfspark.data.validate import validate_given

COLUMNS = Columns("user", "item", "rating")


def _ratings(n_users: int = 24, n_items: int = 10) -> list[tuple[int, int, float]]:
    return [(u, i, float(1 + (u * 3 + i * 5) % 5)) for u in range(n_users) for i in range(n_items) if (u + 2 * i) % 3]


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("id_type", ["double", "float", "decimal(10,0)", "decimal(12,2)"])
def test_whole_number_ids_of_any_numeric_type_are_integer_ids(spark, id_type):
    df = spark.createDataFrame(_ratings(6, 4), "user long, item long, rating double")
    typed = df.select(F.col("user").cast(id_type).alias("user"), F.col("item").cast(id_type).alias("item"), "rating")
    got = validate_given(typed, COLUMNS, labels=False)
    assert got.dtypes[:2] == [("user", "bigint"), ("item", "bigint")]
    assert sorted(got.collect()) == sorted(df.collect())


def test_a_fractional_id_is_refused_naming_the_column_count_example_and_a_cast(spark):
    rows = [(float(u) + (0.5 if u in (3, 7) else 0.0), float(i), 3.0) for u, i, _ in _ratings(10, 4)]
    df = spark.createDataFrame(rows, "user double, item double, rating double")
    n = df.filter("user in (3.5, 7.5)").count()
    with pytest.raises(InputError) as caught:
        CollaborativeFilter(rank=2, maxIter=2).fit(df)  # refused in validation, before any training
    message = str(caught.value)
    assert f"column 'user' has {n} id(s) that are not whole numbers out of {df.count()} rows" in message
    assert "'user': 3.5" in message or "'user': 7.5" in message
    assert "cast(" in message


def test_the_string_indexer_pipeline_fits_saves_loads_and_recommends(spark, tmp_path):
    rows = [(f"u{u}", f"m{i}", r) for u, i, r in _ratings()]
    df = spark.createDataFrame(rows, "userId string, movieId string, rating double")
    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="userId", outputCol="user"),
            StringIndexer(inputCol="movieId", outputCol="item"),
            CollaborativeFilter(rank=2, maxIter=3, seed=1),
        ]
    )
    model = pipeline.fit(df)
    scored = model.transform(df)
    assert scored.count() == df.count() and scored.filter(F.isnan("prediction")).count() == 0
    model.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    cf = loaded.stages[-1]
    assert isinstance(cf, CFModel) and cf.rank == 2
    recs = cf.recommendForAllUsers(2)
    n_users = df.select("userId").distinct().count()
    assert recs.select("user").distinct().count() == n_users and recs.count() == 2 * n_users
    expected = sorted((r.user, r.item, r.rank) for r in model.stages[-1].recommendForAllUsers(2).collect())
    assert sorted((r.user, r.item, r.rank) for r in recs.collect()) == expected
    assert sorted(r.prediction for r in loaded.transform(df).collect()) == sorted(
        r.prediction for r in scored.collect()
    )
