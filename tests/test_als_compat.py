"""cfspark as a drop-in for pyspark.ml's ALS: the ids ALS pipelines feed in, its model
attributes, and its Params and output shapes under outputStyle="als"."""

from __future__ import annotations

import doctest
import math

import numpy as np
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
    return [(u, i, float(1 + (u * 3 + i * 7) % 5)) for u in range(n_users) for i in range(n_items) if (u + 2 * i) % 3]


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


def test_transform_fails_on_a_fractional_id_as_fit_refuses_it(spark):
    """A fractional id passed as an unseen user would get the item term alone (or be dropped
    under coldStartStrategy "drop") with no word; Spark ALS's transform fails on it too."""
    rows = [(float(u), float(i), r) for u, i, r in _ratings(10, 4)]
    df = spark.createDataFrame(rows, "user double, item double, rating double")
    model = CollaborativeFilter(rank=2, maxIter=2, coldStartStrategy="drop").fit(df)
    assert model.transform(df).count() == df.count()  # whole-number doubles are the trained ids
    odd = df.withColumn("user", F.when(F.col("user") == 3.0, 3.5).otherwise(F.col("user")))
    with pytest.raises(Exception, match="column 'user' has an id that is not a whole number: 3.5"):
        model.transform(odd).collect()


def test_a_fold_in_keeps_the_models_id_types(spark):
    """An int model folds in long ids, and strings that are all integers, as ints (its user
    table stays int), and refuses ids beyond int's range or of another kind by name; a string
    model folds in integers as their digits."""
    df = spark.createDataFrame(_ratings(), "user int, item int, rating double")
    model = CollaborativeFilter(rank=2, regParam=0.1, maxIter=3).fit(df)
    rows = [(100, 1, 4.0), (100, 2, 2.0)]
    folded = model.foldIn(spark.createDataFrame(rows, "user long, item long, rating double"))
    assert folded.userFactors.schema["user"].dataType.simpleString() == "int"
    assert folded.userFactors.filter("user = 100").count() == 1
    with pytest.raises(
        ValueError, match="column 'user' has ids beyond the range of this model's int ids, e.g. 4294967296"
    ):
        model.foldIn(spark.createDataFrame([(2**32, 1, 4.0)], "user long, item long, rating double"))
    with pytest.raises(
        ValueError, match="column 'user' has ids that are not integers, as are this model's int ids, e.g. 'u9'"
    ):
        model.foldIn(spark.createDataFrame([("u9", 1, 4.0)], "user string, item int, rating double"))
    # Strings that spell integers are those integers, as lookups take them; a string model takes integers as digits.
    text_rows = [(str(u), str(i), r) for u, i, r in rows]
    as_text = model.foldIn(spark.createDataFrame(text_rows, "user string, item string, rating double"))
    assert as_text.userFactors.schema["user"].dataType.simpleString() == "int"
    assert as_text.userFactors.filter("user = 100").collect() == folded.userFactors.filter("user = 100").collect()
    named = df.select(F.concat(F.lit("u"), F.col("user").cast("string")).alias("user"), "item", "rating")
    by_name = (
        CollaborativeFilter(rank=2, regParam=0.1, maxIter=3)
        .fit(named)
        .foldIn(spark.createDataFrame(rows, "user long, item long, rating double"))
    )
    assert by_name.userFactors.schema["user"].dataType.simpleString() == "string"
    assert by_name.userFactors.filter("user = '100'").count() == 1


def test_ids_of_another_type_are_looked_up_as_the_models_own(spark):
    """An int model takes a caller's strings (spaces trimmed), longs and whole doubles as the
    ints they spell, in transform, subsets, exclusions and similarItems; a string that holds
    no number and a long beyond int's range are ids it does not know, not a failed query
    (compared as they are, Spark's own cast fails the query on the first such string)."""
    df = spark.createDataFrame(_ratings(), "user int, item int, rating double")
    model = CollaborativeFilter(rank=2, regParam=0.1, maxIter=3, coldStartStrategy="drop").fit(df)
    text = df.select(
        F.col("user").cast("string").alias("user"),
        F.concat(F.lit(" "), F.col("item").cast("string")).alias("item"),
        "rating",
    )
    wide = df.select(F.col("user").cast("long").alias("user"), F.col("item").cast("double").alias("item"), "rating")
    strays = spark.createDataFrame([("u9", " 1", 4.0), ("3", "i2", 4.0)], "user string, item string, rating double")
    expected = sorted((r.user, r.item, r.prediction) for r in model.transform(df).collect())
    for given in (text.unionByName(strays), wide):
        got = model.transform(given).collect()
        assert sorted((int(r.user), int(float(r.item)), r.prediction) for r in got) == expected
    plain_recs = sorted(model.recommendForUserSubset(df, 2, exclude=df).collect())
    assert len(plain_recs) == 2 * 24
    for given, excluded in ((text.unionByName(strays), text), (wide, wide)):
        assert sorted(model.recommendForUserSubset(given, 2, exclude=excluded).collect()) == plain_recs
    beyond = spark.createDataFrame([(2**32,), (None,)], "user long")
    assert model.recommendForUserSubset(beyond, 2).count() == 0
    assert sorted(model.similarItems(text, 2).collect()) == sorted(model.similarItems(df, 2).collect())
    # A string model takes integer ids as their digits.
    named = df.select(F.col("user").cast("string").alias("user"), "item", "rating").unionByName(
        spark.createDataFrame([("x", 1, 3.0), ("x", 2, 5.0)], "user string, item int, rating double")
    )
    by_name = CollaborativeFilter(rank=2, regParam=0.1, maxIter=3).fit(named)
    assert by_name.userFactors.schema["user"].dataType.simpleString() == "string"
    as_strings = sorted(by_name.recommendForUserSubset(text, 2).collect())
    assert len(as_strings) == 2 * 24 and sorted(by_name.recommendForUserSubset(df, 2).collect()) == as_strings


def test_transform_keeps_every_other_column_whatever_its_name(spark):
    """Columns that share a name with cfspark's own (user and item beside ids named u and i,
    the prediction's _w, _b, _x, _c and _base) pass through transform as they are, and do not
    disturb a subset or an exclusion."""
    plain = spark.createDataFrame(_ratings(), "u long, i long, r double")
    model = CollaborativeFilter(userCol="u", itemCol="i", ratingCol="r", rank=2, regParam=0.1, maxIter=5).fit(plain)
    extra = ["user", "item", "_w", "_b", "_x", "_c", "_base"]
    wide = plain.select("*", *(F.concat(F.lit(name + ":"), F.col("u").cast("string")).alias(name) for name in extra))
    got = model.transform(wide)
    assert got.columns == ["u", "i", "r", *extra, "prediction"]
    expected = {(row.u, row.i): row.prediction for row in model.transform(plain).collect()}
    for row in got.collect():
        assert row.prediction == expected[(row.u, row.i)]
        assert [row[name] for name in extra] == [f"{name}:{row.u}" for name in extra]
    # Subsets and exclusions take their id columns by name too, and name one that is missing.
    assert sorted(model.recommendForUserSubset(wide, 2, exclude=wide).collect()) == sorted(
        model.recommendForUserSubset(plain, 2, exclude=plain).collect()
    )
    with pytest.raises(ValueError, match="the input has no column 'u'"):
        model.recommendForUserSubset(plain.select("i"), 2)
    with pytest.raises(ValueError, match="the input has no column 'i'"):
        model.recommendForAllUsers(2, exclude=plain.select("u"))


@pytest.mark.parametrize("names", [("user.id", "item `x`", "r.v"), ("item", "user", "rating")], ids=["dots", "swapped"])
@pytest.mark.slow
def test_column_names_fit_as_plain_ones_whatever_they_hold(spark, tmp_path, names):
    """Flattened JSON gives names such as "user.id", which F.col would read as a struct's
    field, and a user column may be called "item" (cfspark's own name for the other side):
    every column is taken by its exact name and renamed at once, so the model is the
    plain-named one's."""
    user, item, rating = names
    plain = spark.createDataFrame(_ratings(), "u long, i long, r double")
    odd = plain.toDF(user, item, rating)
    params = dict(rank=2, regParam=0.1, maxIter=5)
    a = CollaborativeFilter(userCol="u", itemCol="i", ratingCol="r", **params).fit(plain)
    b = CollaborativeFilter(userCol=user, itemCol=item, ratingCol=rating, **params).fit(odd)
    b.write().save(str(tmp_path / "odd"))
    loaded = CFModel.load(str(tmp_path / "odd"))
    expected = sorted(a.transform(plain).collect())
    for model in (b, loaded):
        got = model.transform(odd)
        assert got.columns == [user, item, rating, "prediction"]
        assert sorted(got.collect()) == expected
    recs = b.recommendForUserSubset(odd, 2)
    assert recs.columns == [user, item, "rank", "score"]
    assert sorted(recs.collect()) == sorted(a.recommendForUserSubset(plain, 2).collect())
    nested = b.recommendForUserSubset(odd, 2, flat=False)
    assert nested.columns == [user, "recommendations"]
    assert sorted(nested.collect()) == sorted(a.recommendForUserSubset(plain, 2, flat=False).collect())
    assert sorted(b.userFactors.collect()) == sorted(a.userFactors.collect())
    warm = CollaborativeFilter(userCol=user, itemCol=item, ratingCol=rating, initialModel=loaded,
                               **{**params, "maxIter": 1}).fit(odd)  # fmt: skip
    assert warm.rank == 2
    # A column transform would add is refused, as Spark ALS refuses it, not given twice.
    with pytest.raises(ValueError, match="the input already has a column 'prediction', which transform adds"):
        b.transform(odd.withColumn("prediction", F.lit(0.0)))
    with pytest.raises(ValueError, match=f"the input has no column {item!r}"):
        b.transform(odd.drop(item))
    with pytest.raises(ValueError, match="must be different columns"):
        CollaborativeFilter(userCol=user, itemCol=user, ratingCol=rating).fit(odd)


@pytest.mark.slow
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


# -- pyspark's ALS doctest, its lines under outputStyle="als" with the import changed --------------------

# Written from the behaviour pyspark.ml.recommendation.ALS's doctest checks: the values it
# prints are ALS's own fit, so the lines below check what they show (shapes, names, order,
# what is recommended and to whom), not the numbers.
ALS_DOCTEST = """
>>> from cfspark import CFModel as ALSModel
>>> from cfspark import CollaborativeFilter as ALS
>>> df = spark.createDataFrame(
...     [(0, 0, 4.0), (0, 1, 2.0), (1, 1, 3.0), (1, 2, 4.0), (2, 1, 1.0), (2, 2, 5.0)],
...     ["user", "item", "rating"])
>>> als = ALS(rank=10, seed=0, outputStyle="als")
>>> als.setMaxIter(5)
CollaborativeFilter...
>>> als.getMaxIter()
5
>>> als.setRegParam(0.1)
CollaborativeFilter...
>>> als.getRegParam()
0.1
>>> als.clear(als.regParam)
>>> model = als.fit(df)
>>> model.getBlockSize()
4096
>>> model.getUserCol()
'user'
>>> model.setUserCol("user")
CFModel...
>>> model.getItemCol()
'item'
>>> model.setPredictionCol("newPrediction")
CFModel...
>>> model.rank
10
>>> model.userFactors.orderBy("id").collect()
[Row(id=0, features=[...]), Row(id=1, features=[...]), Row(id=2, features=[...])]
>>> test = spark.createDataFrame([(0, 2), (1, 0), (2, 0)], ["user", "item"])
>>> predictions = sorted(model.transform(test).collect(), key=lambda r: r[0])
>>> [(p.user, p.item, isinstance(p.newPrediction, float)) for p in predictions]
[(0, 2, True), (1, 0, True), (2, 0, True)]
>>> user_recs = model.recommendForAllUsers(3)
>>> row = user_recs.where(user_recs.user == 0).select("recommendations.item", "recommendations.rating").first()
>>> sorted(row.item), row.rating == sorted(row.rating, reverse=True)
([0, 1, 2], True)
>>> item_recs = model.recommendForAllItems(3)
>>> row = item_recs.where(item_recs.item == 2).select("recommendations.user", "recommendations.rating").first()
>>> sorted(row.user), row.rating == sorted(row.rating, reverse=True)
([0, 1, 2], True)
>>> user_subset = df.where(df.user == 2)
>>> user_subset_recs = model.recommendForUserSubset(user_subset, 3)
>>> user_subset_recs.count(), sorted(user_subset_recs.select("recommendations.item").first()[0])
(1, [0, 1, 2])
>>> item_subset = df.where(df.item == 0)
>>> item_subset_recs = model.recommendForItemSubset(item_subset, 3)
>>> item_subset_recs.count(), sorted(item_subset_recs.select("recommendations.user").first()[0])
(1, [0, 1, 2])
>>> als_path = temp_path + "/als"
>>> als.save(als_path)
>>> als2 = ALS.load(als_path)
>>> als2.getMaxIter(), als2.getOutputStyle()
(5, 'als')
>>> model_path = temp_path + "/als_model"
>>> model.save(model_path)
>>> model2 = ALSModel.load(model_path)
>>> model.rank == model2.rank
True
>>> sorted(model.userFactors.collect()) == sorted(model2.userFactors.collect())
True
>>> sorted(model.itemFactors.collect()) == sorted(model2.itemFactors.collect())
True
>>> sorted(model.transform(test).collect()) == sorted(model2.transform(test).collect())
True
"""


@pytest.mark.slow
def test_pyspark_als_doctest_lines_pass_with_the_import_changed(spark, tmp_path):
    globs = {"spark": spark, "temp_path": str(tmp_path)}
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(parser.get_doctest(ALS_DOCTEST, globs, "als_doctest", __file__, 0))
    failed, attempted = runner.summarize(verbose=False)
    assert attempted > 30 and failed == 0


# -- assertions adapted from Spark's ALS tests, under outputStyle="als" ----------------------------------


@pytest.fixture(scope="module")
def als_style(spark):
    ratings = spark.createDataFrame(_ratings(12, 6), "user int, item int, rating float").cache()
    model = CollaborativeFilter(rank=3, maxIter=4, seed=2, outputStyle="als").fit(ratings)
    yield model, ratings
    model.unpersist(), ratings.unpersist()


def test_als_factor_tables_are_id_and_features_whose_dot_product_is_the_prediction(spark, als_style):
    model, ratings = als_style
    assert model.userFactors.columns == ["id", "features"] and model.itemFactors.columns == ["id", "features"]
    users = {r.id: np.array(r.features) for r in model.userFactors.collect()}
    items = {r.id: np.array(r.features) for r in model.itemFactors.collect()}
    assert {len(v) for v in users.values()} == {model.rank + 2}
    everything = spark.createDataFrame([(u, i) for u in users for i in items], "user int, item int")
    for r in model.transform(everything).collect():
        assert r.prediction == pytest.approx(float(users[r.user] @ items[r.item]), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [2, 6, 9])  # fewer, as many and more than the items
def test_als_recommendations_are_the_top_k_predictions_nested_as_als_nests_them(spark, als_style, k):
    model, ratings = als_style
    recs = model.recommendForAllUsers(k)
    assert recs.schema.simpleString() == ("struct<user:int,recommendations:array<struct<item:int,rating:double>>>")
    n_users, n_items = ratings.select("user").distinct().count(), ratings.select("item").distinct().count()
    assert recs.count() == n_users
    pairs = spark.createDataFrame([(u, i) for u in range(n_users) for i in range(n_items)], "user int, item int")
    predicted = {(r.user, r.item): r.prediction for r in model.transform(pairs).collect()}
    for r in recs.collect():
        got = [(e.item, e.rating) for e in r.recommendations]
        # Training items are not excluded, as in ALS: the best of every item, each scored as predicted.
        best = sorted((-p, i) for (u, i), p in predicted.items() if u == r.user)[: min(k, n_items)]
        np.testing.assert_allclose([s for _, s in got], [-s for s, _ in best], rtol=1e-9)
        np.testing.assert_allclose([s for _, s in got], [predicted[(r.user, i)] for i, _ in got], rtol=1e-9)
        assert len({i for i, _ in got}) == len(got)
    by_item = model.recommendForAllItems(k)
    assert by_item.columns == ["item", "recommendations"] and by_item.count() == n_items
    assert by_item.schema["recommendations"].dataType.elementType.names == ["user", "rating"]


def test_als_user_subset_recommends_once_per_user_and_nothing_for_none(spark, als_style):
    model, _ = als_style
    subset = spark.createDataFrame([(1,), (1,), (3,), (99,)], "user int")
    got = model.recommendForUserSubset(subset, 2)
    assert sorted(r.user for r in got.collect()) == [1, 3]
    assert sorted(got.collect()) == sorted(model.recommendForAllUsers(2).where("user in (1, 3)").collect())
    assert model.recommendForUserSubset(subset.limit(0), 2).count() == 0


def test_als_cold_start_is_nan_by_default_and_drop_drops(spark, als_style):
    model, _ = als_style
    pairs = spark.createDataFrame([(0, 0), (0, 99), (99, 0), (1, 2)], "user int, item int")
    got = {(r.user, r.item): r.prediction for r in model.transform(pairs).collect()}
    assert math.isnan(got[(0, 99)]) and math.isnan(got[(99, 0)])
    assert not math.isnan(got[(0, 0)]) and not math.isnan(got[(1, 2)])
    assert model.getColdStartStrategy() == "nan"  # the getter says what transform does
    dropped = model.copy({model.coldStartStrategy: "drop"}).transform(pairs)
    assert dropped.count() == 2 and model.copy({model.coldStartStrategy: "drop"}).getColdStartStrategy() == "drop"
    assert sorted((r.user, r.item) for r in dropped.collect()) == [(0, 0), (1, 2)]
    with pytest.raises((TypeError, ValueError), match='param "coldStartStrategy"'):
        model.setColdStartStrategy("zero")
    flat = model.copy({model.outputStyle: "cfspark"})
    assert {r.prediction == r.prediction for r in flat.transform(pairs).collect()} == {True}  # "mean": no NaN
    assert flat.getColdStartStrategy() == "mean"


def test_als_params_are_accepted_mapped_or_refused(spark):
    als = CollaborativeFilter(
        rank=3, numUserBlocks=2, numItemBlocks=2, implicitPrefs=False, alpha=1.0, nonnegative=False,
        checkpointInterval=10, intermediateStorageLevel="MEMORY_ONLY", finalStorageLevel="MEMORY_AND_DISK",
        coldStartStrategy="drop", blockSize=1024,
    )  # fmt: skip
    assert als.getIntermediateStorageLevel() == "MEMORY_ONLY" and als.getBlockSize() == 1024
    assert als.setNumBlocks(5).getNumUserBlocks() == 5 and als.getNumItemBlocks() == 5
    with pytest.raises((TypeError, ValueError), match='param "intermediateStorageLevel"'):
        CollaborativeFilter(intermediateStorageLevel="foo")
    with pytest.raises((TypeError, ValueError), match="no non-negative factors"):
        CollaborativeFilter(nonnegative=True)


# -- duplicates and implicitPrefs ------------------------------------------------------------------------

REPEATED = [(1, 1, 2.0), (1, 1, 4.0), (2, 1, 5.0), (1, 1, 3.0), (2, 2, 1.0)]


@pytest.mark.parametrize(("rule", "value"), [("mean", 3.0), ("max", 4.0), ("sum", 9.0), ("last", 3.0)])
def test_duplicates_combine_repeated_pairs_as_the_param_says(spark, rule, value):
    df = spark.createDataFrame(REPEATED, "user long, item long, rating double").coalesce(1)
    got = {(r.user, r.item): r.rating for r in validate_given(df, COLUMNS, labels=False, duplicates=rule).collect()}
    assert got == {(1, 1): value, (2, 1): 5.0, (2, 2): 1.0}


def test_repeated_pairs_are_refused_naming_the_duplicates_param(spark):
    df = spark.createDataFrame(REPEATED, "user long, item long, rating double")
    with pytest.raises(InputError, match=r"1 \(user, item\) pair\(s\) appear more than once, .* appears 3 times"):
        CollaborativeFilter().fit(df)
    with pytest.raises(InputError, match='set the duplicates Param to combine them: "mean", "max", "last" or "sum"'):
        CollaborativeFilter().fit(df)
    with pytest.raises((TypeError, ValueError), match='param "duplicates"'):
        CollaborativeFilter(duplicates="first")
    with pytest.raises(ValueError, match="labels other than 0/1"):
        CollaborativeFilter(loss="bce", duplicates="sum").fit(df)


@pytest.mark.slow
def test_implicit_prefs_is_the_positive_only_model_on_counts(spark):
    counts = [(u, i, float(1 + (u + i) % 4)) for u in range(16) for i in range(8) if (u * i + u) % 3 == 0]
    df = spark.createDataFrame(counts + [(1, 50, 0.0), (2, 50, -2.0)], "user long, item long, rating double")
    common = dict(rank=2, maxIter=2, alpha=3.0, seed=4)
    implicit = CollaborativeFilter(implicitPrefs=True, **common).fit(df)
    schema = "user long, item long, rating double, n double"
    mapped = spark.createDataFrame([(u, i, 1.0, c) for u, i, c in counts], schema)
    explicit = CollaborativeFilter(loss="bce", weightCol="n", **common).fit(mapped)
    assert implicit.getLoss() == "bce" and implicit.summary.get("positive_only")
    assert implicit.training_pairs.count() == len(counts)  # counts <= 0 are dropped, as unobserved
    got = sorted((r.user, r.item, r.rank, r.score) for r in implicit.recommendForAllUsers(3).collect())
    assert got == sorted((r.user, r.item, r.rank, r.score) for r in explicit.recommendForAllUsers(3).collect())
    assert all(0.0 <= s <= 1.0 for *_, s in got)
    # transform adds predictionCol ("prediction"), as ALS's does: the score recommendations rank by.
    for model in (implicit, explicit):
        assert model.getPredictionCol() == "prediction"
        recs = model.recommendForAllUsers(3)
        scored = model.transform(recs.select("user", "item", F.col("score").alias("expected")))
        assert scored.columns == ["user", "item", "expected", "prediction"]
        assert all(r.prediction == pytest.approx(r.expected, rel=1e-6) for r in scored.collect())


def test_the_jobs_duplicates_key_maps_onto_the_param():
    from cfspark.app.config import load_defaults
    from cfspark.app.run import estimator_from_config

    cfg = load_defaults()
    cfg["input"]["duplicates"] = "last"
    estimator = estimator_from_config(cfg, Columns("u", "i", "r"))
    assert estimator.getDuplicates() == "last" and estimator.getUserCol() == "u"
