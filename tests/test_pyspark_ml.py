"""cfspark as a pyspark.ml citizen: Params, Pipeline, tuning, persistence, and a model that stands alone."""

from __future__ import annotations

import inspect
import json
import logging
import math
import pydoc
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from planted import planted_labels, planted_ratings
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator, RegressionEvaluator
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.recommendation import ALS
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions as F
from tests_support import file_bytes

from cfspark import CFModel, CollaborativeFilter
from cfspark.app.config import CONFIG_PARAMS, load_defaults
from cfspark.data.metrics import regression_metrics
from cfspark.data.split import split_ratings
from cfspark.ml import recommend
from cfspark.ml.params import DEFAULTS

RANK = 3


@pytest.fixture(scope="module")
def planted(spark):
    p = planted_ratings(n_users=120, n_items=60, rank=RANK, density=0.3, noise=0.3, seed=21)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    train, test = (t.cache() for t in split_ratings(df, test_fraction=0.2, seed=5))
    yield train, test
    train.unpersist(), test.unpersist()


@pytest.fixture(scope="module")
def fitted(planted):
    train, _ = planted
    # Named columns other than cfspark's own, to show they are kept everywhere.
    data = train.toDF("who", "what", "stars")
    model = CollaborativeFilter(rank=RANK, userCol="who", itemCol="what", ratingCol="stars").fit(data)
    yield model, data
    model.unpersist()


def _rows(df, *cols):
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


# -- Params --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"rank": 0}, "rank"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"regParam": -1.0}, "regParam"),
        ({"regParam": "often"}, "regParam"),
        ({"coldStartStrategy": "zero"}, "coldStartStrategy"),
        ({"itemBias": "yes"}, "itemBias"),
        ({"maxIter": 0}, "maxIter"),
    ],
)
def test_bad_params_are_refused_in_the_driver_with_their_name(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=f'param "{name}"'):
        CollaborativeFilter(**kwargs)
    with pytest.raises((TypeError, ValueError), match=f'param "{name}"'):
        CollaborativeFilter().setParams(**kwargs)
    with pytest.raises(TypeError, match="no Param rnak"):
        CollaborativeFilter(rnak=3)


def test_params_behave_as_in_pyspark_ml():
    cf = CollaborativeFilter(rank=4)
    assert cf.getRank() == 4 and cf.getMaxIter() == 20 and cf.getRegParam() == "auto"
    assert cf.setRegParam("auto").getRegParam() == "auto" and cf.setRegParam(0.3).getRegParam() == 0.3
    copy = cf.copy({cf.rank: 7})
    assert copy.getRank() == 7 and cf.getRank() == 4 and copy.uid == cf.uid
    assert "coldStartStrategy: unseen user or item at prediction" in cf.explainParams()
    assert {p.name for p in cf.params} >= {"rank", "maxIter", "regParam", "seed", "checkpointInterval", "userCol"}


def test_the_signature_lists_every_param_with_the_one_default():
    """help(CollaborativeFilter) shows every Param and its default: the signature's defaults
    are DEFAULTS, which app/default.toml mirrors key by key."""
    signature = inspect.signature(CollaborativeFilter.__init__).parameters
    assert {p.name for p in CollaborativeFilter().params} == set(signature) - {"self"}
    assert {name: signature[name].default for name in DEFAULTS} == DEFAULTS
    assert inspect.signature(CollaborativeFilter.setParams).parameters == signature
    toml = load_defaults()
    for (section, key), param in CONFIG_PARAMS.items():
        assert toml[section][key] == signature[param].default, f"{section}.{key} against {param}"
    text = pydoc.render_doc(CollaborativeFilter)
    assert all(f"{name}: " in text for name in DEFAULTS)


def test_the_model_has_its_own_params_and_the_estimator_the_rest(fitted):
    model, _ = fitted
    assert model.rank == RANK and model.getRank() == RANK and isinstance(model.rank, int)
    assert not hasattr(model, "setLearningRate") and not model.hasParam("maxIter") and model.hasParam("regParam")
    assert hasattr(model, "setPredictionCol") and hasattr(CollaborativeFilter, "setLearningRate")


# -- Pipeline and tuning ---------------------------------------------------------------


@pytest.mark.slow
def test_a_pipeline_with_string_ids_fits_transforms_and_round_trips(spark, planted, tmp_path):
    train, test = planted
    to_strings = SQLTransformer(
        statement="SELECT concat('u', CAST(user AS STRING)) AS user, concat('i', CAST(item AS STRING)) AS item, "
        "rating FROM __THIS__"
    )
    pipeline = Pipeline(stages=[to_strings, CollaborativeFilter(rank=RANK, maxIter=8)])
    model = pipeline.fit(train)
    scored = model.transform(test)
    assert dict(scored.dtypes)["user"] == "string" and scored.count() == test.count()
    assert scored.filter(F.isnan("prediction") | F.col("prediction").isNull()).count() == 0

    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    again = Pipeline.load(str(tmp_path / "pipeline"))
    assert again.getStages()[1].getMaxIter() == 8

    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert isinstance(loaded.stages[1], CFModel)
    assert _rows(loaded.transform(test), "user", "item", "prediction") == _rows(scored, "user", "item", "prediction")


@pytest.mark.slow
def test_cross_validation_and_train_validation_split_select_a_model(spark, planted):
    train, _ = planted
    cf = CollaborativeFilter(maxIter=3)
    grid = ParamGridBuilder().addGrid(cf.regParam, [0.05, 5.0]).addGrid(cf.rank, [1, RANK]).build()
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating")
    cv = CrossValidator(estimator=cf, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=3).fit(train)
    # Random folds leave users and items out of a fold's training part; with coldStartStrategy
    # "mean" every validation row is still predicted, so no fold's RMSE is NaN.
    assert len(cv.avgMetrics) == 4 and all(math.isfinite(m) for m in cv.avgMetrics)
    assert len(set(cv.avgMetrics)) == 4  # each point of the grid fits a different model
    best = grid[int(np.argmin(cv.avgMetrics))]
    chosen = cv.bestModel
    # The model keeps λ in ALS's units: the grid's regParam (spread units) times the spread s.
    assert chosen.getRank() == best[cf.rank]
    assert chosen.getRegParam() == pytest.approx(best[cf.regParam] * chosen.summary["spread"], rel=1e-12)
    assert chosen.rank == best[cf.rank] and isinstance(chosen.rank, int)  # ALSModel's attribute, an int
    assert chosen.summary["history"] and len(chosen.history) <= 3  # refitted with those Params on all of train
    tvs_grid = ParamGridBuilder().addGrid(cf.regParam, [0.05, 5.0]).build()
    tvs = TrainValidationSplit(estimator=cf, estimatorParamMaps=tvs_grid, evaluator=evaluator, trainRatio=0.7, seed=3)
    tvs_model = tvs.fit(train)
    picked = tvs_grid[int(np.argmin(tvs_model.validationMetrics))]
    assert all(math.isfinite(m) for m in tvs_model.validationMetrics)
    spread = tvs_model.bestModel.summary["spread"]
    assert tvs_model.bestModel.getRegParam() == pytest.approx(picked[cf.regParam] * spread, rel=1e-12)


@pytest.mark.slow
def test_binary_labels_tune_with_the_binary_evaluator(spark):
    p, _ = planted_labels(n_users=120, n_items=60, rank=2, density=0.5, seed=8)
    labels = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    cf = CollaborativeFilter(loss="bce", maxIter=3, rank=2)
    grid = ParamGridBuilder().addGrid(cf.regParam, [0.05, 20.0]).build()
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="prediction", labelCol="rating")
    cv = CrossValidator(estimator=cf, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=1).fit(labels)
    # AUC: the planted preferences are learnable, and λ = 20 per label (in logistic curvature) smothers them.
    assert cv.avgMetrics[0] > cv.avgMetrics[1] > 0.5 and cv.bestModel.getRegParam() == 0.05


# -- Cold start, recommendations ------------------------------------------------------------


def test_cold_start_strategies(spark, fitted):
    model, _ = fitted
    pairs = spark.createDataFrame([(1, 1), (10**9, 1), (1, 10**9)], "who long, what long")
    mean = {(r.who, r.what): r.prediction for r in model.transform(pairs).collect()}
    assert all(math.isfinite(v) for v in mean.values())
    nan = {
        (r.who, r.what): r.prediction for r in model.copy({model.coldStartStrategy: "nan"}).transform(pairs).collect()
    }
    assert nan[(1, 1)] == mean[(1, 1)] and math.isnan(nan[(10**9, 1)]) and math.isnan(nan[(1, 10**9)])
    dropped = model.copy({model.coldStartStrategy: "drop"}).transform(pairs)
    assert _rows(dropped, "who", "what") == [(1, 1)]


def test_recommendations_equal_a_dense_ranking(spark, fitted):
    model, data = fitted
    users = {r.who: (np.array(r.features), r.bias) for r in model.userFactors.collect()}
    base = {r.what: r.item_mean for r in model.itemStats.collect()}
    items = {r.what: (np.array(r.features), r.bias + base[r.what]) for r in model.itemFactors.collect()}
    seen = {(r.who, r.what) for r in data.collect()}
    recs = model.recommendForAllUsers(4).collect()
    got = {}
    for r in recs:
        got.setdefault(r.who, []).append((r.rank, r.what, r.score))
    assert got.keys() == users.keys()
    for u, (w, b) in users.items():
        scores = {i: float(w @ x + b + c) for i, (x, c) in items.items() if (u, i) not in seen}
        best = sorted(scores, key=lambda i: -scores[i])[:4]
        ranked = sorted(got[u])
        assert [i for _, i, _ in ranked] == best
        np.testing.assert_allclose([s for *_, s in ranked], [scores[i] for i in best], rtol=1e-9)
    # Items ask for users the same way, with the same scores.
    by_item = model.recommendForAllItems(2).collect()
    for r in by_item:
        w, b = users[r.who]
        x, c = items[r.what]
        assert (r.who, r.what) not in seen and r.score == pytest.approx(float(w @ x + b + c), rel=1e-9)
    assert {r.what for r in by_item} == set(items)


def test_every_top_n_path_ranks_alike(fitted, monkeypatch):
    """Small factor tables are scored in one task; with more queries, one task per query
    block; with more candidates too, (query block × candidate block) cells merged per
    query block. Tiny blocks force the other two paths here."""
    model, _ = fitted
    one_task = _rows(model.recommendForAllUsers(4), "who", "what", "rank", "score")
    monkeypatch.setattr(recommend, "QUERIES_PER_BLOCK", 7)
    per_block = _rows(model.recommendForAllUsers(4), "who", "what", "rank", "score")
    monkeypatch.setattr(recommend, "CANDIDATES_PER_BLOCK", 5)
    cells = _rows(model.recommendForAllUsers(4), "who", "what", "rank", "score")
    for other in (per_block, cells):
        assert [r[:3] for r in other] == [r[:3] for r in one_task]
        np.testing.assert_allclose([r[3] for r in other], [r[3] for r in one_task], rtol=1e-12)


def test_subsets_and_the_nested_shape(spark, fitted):
    model, _ = fitted
    everyone = model.recommendForAllUsers(3)
    some = spark.createDataFrame([(1,), (7,), (10**9,)], "who long")
    subset = model.recommendForUserSubset(some, 3)
    assert _rows(subset, "who", "what", "rank", "score") == _rows(
        everyone.filter(F.col("who").isin(1, 7)), "who", "what", "rank", "score"
    )
    nested = model.recommendForAllUsers(3, flat=False)
    assert nested.schema.simpleString() == "struct<who:bigint,recommendations:array<struct<what:bigint,score:double>>>"
    one = nested.filter("who = 7").first().recommendations
    assert [(s.what, s.score) for s in one] == [
        (r.what, r.score) for r in sorted(everyone.filter("who = 7").collect(), key=lambda r: r["rank"])
    ]
    items = model.recommendForItemSubset(spark.createDataFrame([(2,)], "what long"), 5)
    assert _rows(items, "what", "who", "rank") == _rows(
        model.recommendForAllItems(5).filter("what = 2"), "what", "who", "rank"
    )
    # An exclude table whose id types differ from the factors' (int against long) still matches them.
    best = one[0].what
    cast = spark.createDataFrame([(7, best)], "who int, what int")
    without_best = model.recommendForAllUsers(3, exclude=cast).filter("who = 7").collect()
    assert best not in {r.what for r in without_best} and len(without_best) == 3
    everything = model.recommendForAllUsers(3, exclude=None).filter("who = 7").collect()
    assert len(everything) == 3 and max(r.score for r in everything) >= max(s.score for s in one)


# -- Persistence -----------------------------------------------------------------------------


def test_a_model_saved_in_the_layout_before_the_ml_folder_loads(spark, fitted, planted, tmp_path):
    """Models saved before the layout change name their class cfspark.model.CFModel and hold
    every estimator Param: CFModel.load and a Pipeline's reader (which imports the class by
    that name) both load them, passing over the Params a model no longer has."""
    model, _ = fitted
    path = str(tmp_path / "model")
    model.write().save(path)
    (text,) = [r.value for r in spark.read.text(f"{path}/metadata").collect()]
    meta = json.loads(text)
    meta["class"] = "cfspark.model.CFModel"
    meta["paramMap"].update(learningRate=0.5, exposure=False)
    meta["defaultParamMap"].update(maxIter=20, rank=meta["paramMap"].pop("rank"))
    spark.createDataFrame([(json.dumps(meta),)], "value string").coalesce(1).write.mode("overwrite").text(
        f"{path}/metadata"
    )
    from pyspark.ml.util import DefaultParamsReader

    for loaded in (CFModel.load(path), DefaultParamsReader.loadParamsInstance(path, spark)):
        assert type(loaded) is CFModel and loaded.rank == RANK and loaded.getUserCol() == "who"
        _, test = planted
        test = test.toDF("who", "what", "stars")
        assert _rows(loaded.transform(test), "who", "what", "prediction") == _rows(
            model.transform(test), "who", "what", "prediction"
        )


def test_save_and_load_give_identical_predictions_and_recommendations(spark, fitted, planted, tmp_path):
    model, _ = fitted
    _, test = planted
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    loaded = CFModel.load(path)
    assert loaded.uid == model.uid and loaded.getUserCol() == "who" and loaded.getRank() == RANK
    assert loaded.summary["stop_reason"] == model.summary["stop_reason"]
    test = test.toDF("who", "what", "stars")
    assert _rows(loaded.transform(test), "who", "what", "prediction") == _rows(
        model.transform(test), "who", "what", "prediction"
    )
    assert _rows(loaded.recommendForAllUsers(5), "who", "what", "rank", "score") == _rows(
        model.recommendForAllUsers(5), "who", "what", "rank", "score"
    )
    with pytest.raises(Exception, match="already exists"):
        model.write().save(path)


def test_a_loaded_model_saved_back_over_its_own_path_is_kept_whole(spark, fitted, planted, tmp_path):
    """Load, fold in a new user, save back with overwrite: the overwrite deletes the files the
    loaded model reads, so its tables are held in Spark's block store first. Both the saved
    model and the one in memory then give the folded model's predictions."""
    model, data = fitted
    _, test = planted
    path = str(tmp_path / "model")
    model.write().save(path)
    new_user = data.filter(F.col("who") == 3).withColumn("who", F.lit(10_000))
    folded = CFModel.load(path).foldIn(new_user)
    scored = test.toDF("who", "what", "stars").unionByName(new_user)
    expected = _rows(folded.transform(scored), "who", "what", "prediction")
    folded.write().overwrite().save(path)
    assert _rows(CFModel.load(path).transform(scored), "who", "what", "prediction") == expected
    assert _rows(folded.transform(scored), "who", "what", "prediction") == expected
    assert CFModel.load(path).userFactors.filter(F.col("who") == 10_000).count() == 1


@contextmanager
def spark_warnings(spark):
    """A function returning what Spark's driver logged at WARN and above inside the block
    (messages and stack traces), kept off the console. Spark logs through log4j2 in the
    driver's JVM, which Python's logging and pytest's capture do not see."""
    log4j = spark._jvm.org.apache.logging.log4j
    context = log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    assert not config.getLoggers().containsKey("org.apache.spark")
    text = spark._jvm.java.io.StringWriter()
    layout = log4j.core.layout.PatternLayout.newBuilder().withPattern("%p %c: %m%n%ex").build()
    appender = log4j.core.appender.WriterAppender.createAppender(layout, None, text, "cfspark-tests", False, True)
    appender.start()
    logger = (
        log4j.core.config.LoggerConfig.newBuilder().withLoggerName("org.apache.spark")
        .withLevel(log4j.Level.WARN).withAdditivity(False).withConfig(config).build()
    )  # fmt: skip
    logger.addAppender(appender, log4j.Level.WARN, None)
    config.addLogger("org.apache.spark", logger)
    context.updateLoggers()
    try:
        yield text.toString
    finally:
        config.removeLogger("org.apache.spark")
        context.updateLoggers()
        appender.stop()


def test_a_save_to_a_fresh_path_logs_no_warning_and_existing_files_are_refused(spark, fitted, tmp_path):
    """A good save logs no stack trace (a scheduled job's log shows none in a good run), and
    the check before it still tells a path holding files, at any depth, from a missing path
    or an empty folder."""
    model, _ = fitted
    # The capture sees the WARN Spark logs when one missing path is read.
    with spark_warnings(spark) as logged, pytest.raises(Exception, match="PATH_NOT_FOUND"):
        spark.read.format("binaryFile").load(str(tmp_path / "missing"))
    assert "Assume no metadata directory" in logged() and "FileNotFoundException" in logged()

    fresh = tmp_path / "fresh" / "model"  # neither it nor its parent exists, as in a job's staging folder
    with spark_warnings(spark) as logged:
        model.write().save(str(fresh))
    assert "Assume no metadata directory" not in logged() and "FileNotFoundException" not in logged(), logged()
    assert CFModel.load(str(fresh)).uid == model.uid

    (tmp_path / "empty").mkdir()  # an empty folder is written into
    model.write().save(str(tmp_path / "empty"))
    assert CFModel.load(str(tmp_path / "empty")).uid == model.uid
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for taken in ("deep", "file", "fresh/model"):
        with pytest.raises(FileExistsError, match="already exists; to replace it, use write\\(\\).overwrite\\(\\)"):
            model.write().save(str(tmp_path / taken))
    assert file_bytes(tmp_path / "deep") == {"a/b/notes.txt": b"mine"} and (tmp_path / "file").read_text() == "mine"


def test_overwrite_replaces_a_saved_model_and_refuses_a_folder_of_other_files(spark, fitted, planted, tmp_path):
    """pyspark.ml's overwrite deletes whatever the path holds. cfspark's replaces a saved model
    (its own, one whose save failed before the metadata row, another pyspark.ml stage's) and
    refuses any other files by name, leaving them as they were."""
    model, _ = fitted
    train, _ = planted
    mine = tmp_path / "mine"
    (mine / "user_factors").mkdir(parents=True)
    (mine / "user_factors" / "part.parquet").write_text("a model's name, not a model")
    (mine / "notes").mkdir()
    (mine / "notes" / "plan.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for taken, example in (("mine", "notes/plan.txt"), ("file", "file")):
        refused = f"holds 1 file\\(s\\) that are not part of a saved model, e.g. .*{example}; "
        with pytest.raises(FileExistsError, match=refused):
            model.write().overwrite().save(str(tmp_path / taken))
    assert file_bytes(mine) == {
        "user_factors/part.parquet": b"a model's name, not a model",
        "notes/plan.txt": b"keep me",
    }
    assert (tmp_path / "file").read_text() == "keep me too"

    half = tmp_path / "half"  # a save that failed before its metadata row leaves only tables
    model.write().save(str(half))
    shutil.rmtree(half / "metadata")
    als = tmp_path / "als"
    ALS(userCol="user", itemCol="item", ratingCol="rating", rank=2, maxIter=1).fit(train).save(str(als))
    for replaced in (half, als, tmp_path / "missing"):
        model.write().overwrite().save(str(replaced))
        assert CFModel.load(str(replaced)).uid == model.uid
    assert not (als / "userFactors").exists()


@pytest.mark.slow
def test_the_model_does_not_read_its_fits_checkpoints(spark, planted, tmp_path):
    train, test = planted
    ckpt = str(tmp_path / "ckpt")
    # Blocks set by hand: a fit this small would otherwise run in one task, which writes no checkpoints.
    blocks = dict(numUserBlocks=2, numItemBlocks=2, regParam=0.1, checkpointDir=ckpt, checkpointInterval=2)
    first = CollaborativeFilter(rank=RANK, maxIter=4, **blocks).fit(train)
    before = _rows(first.transform(test), "user", "item", "prediction")
    second = CollaborativeFilter(rank=2, maxIter=4, seed=99, **blocks).fit(train)
    assert _rows(first.transform(test), "user", "item", "prediction") == before
    shutil.rmtree(ckpt)
    assert _rows(first.transform(test), "user", "item", "prediction") == before
    assert first.recommendForAllUsers(2).count() == 2 * train.select("user").distinct().count()
    first.unpersist(), second.unpersist()


# -- Fold-in and warm start ------------------------------------------------------------------


@pytest.mark.slow
def test_a_folded_in_user_predicts_as_well_as_a_trained_one(spark):
    p = planted_ratings(n_users=200, n_items=80, rank=RANK, density=0.4, noise=0.3, seed=33)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    train, test = (t.cache() for t in split_ratings(df, test_fraction=0.2, seed=2))
    held = F.col("user") % 10 == 0  # a tenth of the users, absent from the first fit
    cf = CollaborativeFilter(rank=RANK, maxIter=10, tol=0.0)
    everyone = cf.fit(train)
    without = cf.fit(train.filter(~held))
    folded = without.foldIn(train.filter(held))
    their_test = test.filter(held)
    trained = regression_metrics(everyone.predict_canonical(their_test))["rmse"]
    got = regression_metrics(folded.predict_canonical(their_test))["rmse"]
    cold = regression_metrics(without.predict_canonical(their_test))["rmse"]
    assert got <= 1.05 * trained and got < 0.8 * cold, (got, trained, cold)
    # The folded-in users get recommendations, without the items they rated.
    recs = folded.recommendForUserSubset(train.filter(held), 3)
    assert recs.select("user").distinct().count() == train.filter(held).select("user").distinct().count()
    assert recs.join(train, ["user", "item"]).count() == 0
    for m in (everyone, without, folded):
        m.unpersist()
    train.unpersist(), test.unpersist()


@pytest.mark.slow
def test_a_warm_start_reaches_the_cold_fit_in_a_third_of_the_iterations(spark, tmp_path):
    p = planted_ratings(n_users=300, n_items=100, rank=RANK, density=0.3, noise=0.3, seed=44)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    train, test = (t.cache() for t in split_ratings(df, test_fraction=0.2, seed=4))
    yesterday, today = (t.cache() for t in split_ratings(train, test_fraction=0.05, seed=6))  # 5 % arrive
    cold_iters = 12
    # One fixed λ and λ_b for every fit: an automatic fit starts its final fit from the
    # search's own factors (automatic λ_b from its task's), which is a warm start of another kind.
    fixed = dict(rank=RANK, tol=0.0, regParam=0.1, regUnits="als", biasReg=3.0)
    converged = CollaborativeFilter(maxIter=cold_iters, **fixed).fit(yesterday)
    converged.write().save(str(tmp_path / "yesterday"))
    cold = CollaborativeFilter(maxIter=cold_iters, **fixed).fit(train)
    warm = CollaborativeFilter(maxIter=cold_iters // 3, initialModel=str(tmp_path / "yesterday"), **fixed)
    warm = warm.fit(train)
    cold_rmse = regression_metrics(cold.predict_canonical(test))["rmse"]
    warm_rmse = regression_metrics(warm.predict_canonical(test))["rmse"]
    assert len(warm.history) == cold_iters // 3 and warm_rmse <= 1.01 * cold_rmse, (warm_rmse, cold_rmse)
    # Without the warm start, the same few iterations fall short of that.
    short = CollaborativeFilter(maxIter=cold_iters // 3, **fixed).fit(train)
    assert regression_metrics(short.predict_canonical(test))["rmse"] > warm_rmse
    # A warm start's first loss is already near the end of the cold fit's.
    assert warm.history[0]["train_loss"] < cold.history[1]["train_loss"]
    for m in (converged, cold, warm, short):
        m.unpersist()
    for t in (train, test, yesterday, today):
        t.unpersist()


@pytest.mark.slow
def test_a_warm_start_keeps_its_models_rank_at_most_the_fits(spark):
    """Automatic λ's rank step keeps fewer directions than rank on planted rank-2 data; the
    next day's fit, with the same Params and that model as its start, keeps its rank. With λ
    and λ_b fixed each Newton half-step minimises J over its side, so the warm fit's first loss
    is at most the earlier fit's last. A model of a higher rank than the fit's is refused."""
    p = planted_ratings(n_users=120, n_items=60, rank=2, density=0.3, noise=0.2, seed=45)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    first = CollaborativeFilter(rank=5).fit(df)
    assert first.rank < 5  # the premise: the rank step kept fewer directions
    again = CollaborativeFilter(rank=5, maxIter=2, initialModel=first).fit(df)
    assert again.rank == first.rank
    fixed = dict(regParam=0.05, regUnits="als", biasReg=1.0, tol=0.0)  # J the same in both fits
    low = CollaborativeFilter(rank=2, maxIter=6, **fixed).fit(df)
    warm = CollaborativeFilter(rank=4, maxIter=1, initialModel=low, **fixed).fit(df)
    assert warm.rank == 2 and warm.history[0]["train_loss"] <= low.history[-1]["train_loss"] * (1 + 1e-9)
    with pytest.raises(ValueError, match="initialModel has rank 2, above this fit's rank 1"):
        CollaborativeFilter(rank=1, initialModel=low, **fixed).fit(df)
    for m in (first, again, low, warm):
        m.unpersist()
    df.unpersist()


@pytest.mark.slow
def test_a_fit_logs_its_progress_to_the_cfspark_logger(planted, caplog):
    train, _ = planted
    for blocks, phases, last in (
        (dict(numUserBlocks=2, numItemBlocks=2), ("prepare", "index", "pack", "init"), "at most 0 s left)"),
        # A fit this small runs in one task, and says so when it is back; its search, centring
        # and fit are one Spark job, with no setup phase of its own.
        ({}, (), "in one task)"),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cfspark"):
            CollaborativeFilter(rank=RANK, maxIter=3, tol=0.0, **blocks).fit(train).unpersist()
        lines = [r.getMessage() for r in caplog.records if r.name == "cfspark"]
        for name in phases:
            assert any(line.startswith(f"setup: {name} took ") for line in lines), lines
        steps = [line for line in lines if line.startswith("iteration ")]
        assert [line.split(":")[0] for line in steps] == ["iteration 1/3", "iteration 2/3", "iteration 3/3"]
        assert steps[-1].endswith(last) and "train loss" in steps[0]


def test_automatic_lambda_with_a_prediction_column_of_its_own(spark, planted):
    train, test = planted
    model = CollaborativeFilter(rank=RANK, regParam="auto", predictionCol="stars_hat", maxIter=3).fit(train)
    chosen = model.summary["reg"]
    assert any(math.isclose(chosen, p["reg_als"], rel_tol=1e-12) for p in model.summary["reg_path"])
    scored = model.transform(test)
    assert scored.columns == [*test.columns, "stars_hat"] and scored.filter(F.isnan("stars_hat")).count() == 0
    model.unpersist()


def test_a_models_unpersist_drops_the_cache_its_fit_made(spark):
    """fit caches its validated copy of the input, which the model keeps as its training pairs
    (what recommendFor* leave out); model.unpersist() drops it from Spark's cache, which keeps
    a cached table until then (docs/python-api.md, "What a model holds in memory")."""
    rows = planted_ratings(n_users=30, n_items=20, rank=2, density=0.4, noise=0.2, seed=4).rows()
    model = CollaborativeFilter(rank=2, maxIter=2, regParam=0.1, biasReg=1.0).fit(
        spark.createDataFrame(rows, "user long, item long, rating double")
    )
    pairs = model.training_pairs
    assert pairs.storageLevel.useMemory and pairs.count() == len(rows)
    model.unpersist()
    assert not (pairs.storageLevel.useMemory or pairs.storageLevel.useDisk)
