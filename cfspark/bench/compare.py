"""Spark ALS on the same split, scored on every test row and ranked as cfspark is.

ALS returns NaN for a test pair whose user or item it never saw. Such a prediction
gets cfspark's own fallback: μ_i or the global mean (mse), the item's positive rate
or the global rate (bce). ALS's factors are ranked by cfspark's public top-N over factor
tables (cfspark.ml.recommend.top_n), with the same training items excluded, so both sides
face one ranking protocol.
"""

from __future__ import annotations

import time

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, ITEM_MEAN, POSITIVE_RATE, RANK, RATING, USER
from cfspark.data.metrics import classification_metrics, ranking_metrics, regression_metrics
from cfspark.ml.recommend import top_n

UNSEEN = -1  # an id ALS never trained on, so it predicts NaN for it
_U, _I = "_u", "_i"  # ALS's integer ids


def _int_ids(train: DataFrame, id_col: str, alias: str) -> DataFrame:
    """(id_col, alias): a dense int for every id of train, as ALS needs integer ids."""
    return (
        train.select(id_col).distinct().select(id_col, (F.row_number().over(Window.orderBy(id_col)) - 1).alias(alias))
    )


def _with_int_ids(df: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    return (
        df.join(users, USER, "left")
        .join(items, ITEM, "left")
        .withColumn(_U, F.coalesce(_U, F.lit(UNSEEN)))
        .withColumn(_I, F.coalesce(_I, F.lit(UNSEEN)))
    )


def _ranking(als_model, users: DataFrame, items: DataFrame, train: DataFrame, relevant: DataFrame, k: int) -> dict:
    """ALS's factors ranked by cfspark's own top-N, training pairs excluded: ALS's score is u·v."""
    vec = F.col("features").cast("array<double>")
    user_vecs = als_model.userFactors.join(users, F.col("id") == F.col(_U)).select(USER, vec.alias("_v"))
    item_vecs = als_model.itemFactors.join(items, F.col("id") == F.col(_I)).select(ITEM, vec.alias("_v"))
    recs = top_n(
        user_vecs, item_vecs, n=k, query_col=USER, candidate_col=ITEM, query_vec=F.col("_v"),
        candidate_vec=F.col("_v"), exclude=train.select(USER, ITEM),
    )  # fmt: skip
    return ranking_metrics(recs.select(USER, ITEM, RANK), relevant, k=k)


def _fit(als: ALS, data: DataFrame):
    began = time.perf_counter()
    model = als.fit(data)
    return model, round(time.perf_counter() - began, 3)


def compare_als(
    train: DataFrame,
    test: DataFrame,
    item_stats: DataFrame,
    *,
    loss: str,
    rank: int,
    reg_grid: list[float],
    max_iter: int,
    seed: int,
    relevant: DataFrame | None,
    k: int,
    alpha_grid: list[float] = (),
    clip_eps: float = 1e-6,
    time_recommend: bool = False,
    num_blocks: int | None = None,
) -> dict:
    """mse: ALS over reg_grid, the best on test RMSE. bce: explicit ALS on the labels over
    reg_grid, the best on test AUC, and implicit ALS on the positives over reg_grid × alpha_grid,
    the best on test NDCG@k (on test AUC when relevant is None); an empty alpha_grid leaves
    implicit ALS out (its entry None).
    relevant None skips the ranking metrics; time_recommend times ALS's own
    recommendForAllUsers(k) for the best explicit model (which does not exclude anything).
    num_blocks is ALS's numUserBlocks and numItemBlocks (None: ALS's own default, which the
    job's compare.als_num_blocks ships): each ALS stage runs that many tasks, so on small data
    its fixed cost per task dominates the fit."""
    users, items = _int_ids(train, USER, _U).cache(), _int_ids(train, ITEM, _I).cache()
    train_ids = _with_int_ids(train, users, items).cache()
    test_ids = _with_int_ids(test, users, items).join(item_stats, ITEM, "left").cache()
    # Filled before any fit is timed, as cfspark's training split is: the integer ids are
    # the comparison's conversion, not ALS's work, and the first fit alone would pay for them.
    train_ids.count()
    blocks = {} if num_blocks is None else {"numUserBlocks": num_blocks, "numItemBlocks": num_blocks}
    try:
        global_value = float(train.agg(F.avg(RATING)).first()[0])
        fallback = F.coalesce(F.col(ITEM_MEAN if loss == "mse" else POSITIVE_RATE), F.lit(global_value))

        def ranked(model) -> dict:
            return _ranking(model, users, items, train, relevant, k) if relevant is not None else {}

        def als(reg: float, **extra) -> ALS:
            return ALS(
                rank=rank,
                maxIter=max_iter,
                regParam=float(reg),
                userCol=_U,
                itemCol=_I,
                ratingCol=RATING,
                coldStartStrategy="nan",
                seed=seed,
                **blocks,
                **extra,
            )

        def scored(model) -> DataFrame:
            pred = model.transform(test_ids)
            return pred.withColumn("prediction", F.when(F.isnan("prediction"), fallback).otherwise(F.col("prediction")))

        def explicit_metrics(pred: DataFrame) -> dict:
            if loss == "mse":
                return regression_metrics(pred)
            clipped = pred.withColumn(
                "prediction", F.least(F.greatest("prediction", F.lit(clip_eps)), F.lit(1 - clip_eps))
            )
            return {**classification_metrics(clipped), "clip_eps": clip_eps}

        primary = "rmse" if loss == "mse" else "auc"
        better = min if loss == "mse" else max
        runs, models = [], {}
        for reg in reg_grid:
            model, seconds = _fit(als(reg), train_ids)
            models[float(reg)] = (model, seconds)
            runs.append({"regParam": float(reg), "test": explicit_metrics(scored(model)), "fit_seconds": seconds})
        worst = float("inf") if loss == "mse" else float("-inf")  # a run with no metric is never chosen
        best = better(runs, key=lambda r: r["test"][primary] if r["test"][primary] is not None else worst)
        model, seconds = models[best["regParam"]]
        explicit = {
            "test": {
                **best["test"],
                **ranked(model),
            },
            "fit_seconds": seconds,
            "params": {"rank": rank, "regParam": best["regParam"], "maxIter": max_iter, "seed": seed},
            "grid": runs,
        }
        if time_recommend:
            began = time.perf_counter()
            model.recommendForAllUsers(k).count()
            explicit["recommend_all_seconds"] = round(time.perf_counter() - began, 3)
        if loss == "mse":
            return explicit
        if not alpha_grid:
            return {"explicit": explicit, "implicit": None}

        positives = train_ids.filter(F.col(RATING) == 1.0)
        implicit_runs, implicit_models = [], {}
        ranking = "ndcg_at_k" if relevant is not None else "auc"
        for reg in reg_grid:
            for alpha in alpha_grid:
                model, seconds = _fit(als(reg, implicitPrefs=True, alpha=float(alpha)), positives)
                implicit_models[(float(reg), float(alpha))] = (model, seconds)
                implicit_runs.append(
                    {
                        "regParam": float(reg),
                        "alpha": float(alpha),
                        "test": {**classification_metrics(scored(model), logloss=False), **ranked(model)},
                        "fit_seconds": seconds,
                    }
                )
        chosen = max(
            implicit_runs, key=lambda r: r["test"][ranking] if r["test"][ranking] is not None else float("-inf")
        )
        model, seconds = implicit_models[(chosen["regParam"], chosen["alpha"])]
        implicit = {
            "test": chosen["test"],
            "fit_seconds": seconds,
            "params": {
                "rank": rank,
                "regParam": chosen["regParam"],
                "alpha": chosen["alpha"],
                "maxIter": max_iter,
                "implicitPrefs": True,
                "seed": seed,
            },
            "grid": implicit_runs,
            "note": "implicit ALS scores are preferences, not probabilities: no logloss",
        }
        return {"explicit": explicit, "implicit": implicit}
    finally:
        for df in (users, items, train_ids, test_ids):
            df.unpersist()
