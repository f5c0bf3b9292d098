"""Spark ALS on the same split, scored on every test row and ranked as cfspark is.

ALS returns NaN for a test pair whose user or item it never saw. Such a prediction
gets cfspark's own fallback: μ_i or the global mean (mse), the item's positive rate
or the global rate (bce). ALS's factors are ranked by cfspark's blockwise top-N,
with the same training items excluded, so both sides face one ranking protocol.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.codec import blob
from cfspark.data.index import dense_id
from cfspark.evaluate import classification_metrics, ranking_metrics, regression_metrics
from cfspark.kernels.layout import const_col, width
from cfspark.recommend import recommend_all
from cfspark.schema import BASELINE, BLOCK, ITEM, ITEM_MEAN, LOCAL, POSITIVE_RATE, RANK, RATING, USER

UNSEEN = -1  # an id ALS never trained on, so it predicts NaN for it


def _with_int_ids(df: DataFrame, blocks: Blocks) -> DataFrame:
    users = blocks.user_index.select(USER, dense_id(blocks.num_user_blocks).alias("_u"))
    items = blocks.item_index.select(ITEM, dense_id(blocks.num_item_blocks).alias("_i"))
    return (
        df.join(users, USER, "left")
        .join(items, ITEM, "left")
        .withColumn("_u", F.coalesce("_u", F.lit(UNSEEN)))
        .withColumn("_i", F.coalesce("_i", F.lit(UNSEEN)))
    )


def _als_state(factors: DataFrame, index: DataFrame, num_blocks: int, rank: int, side: str) -> DataFrame:
    """ALS factors in cfspark's block state layout: (dest, params = [W | 0 | 1] or [X | 1 | 0]).

    An entity ALS has no factors for (it was not in ALS's training data) gets zeros.
    """
    rows = index.select(BLOCK, LOCAL, dense_id(num_blocks).alias("id")).join(factors, "id", "left")

    def pack(table: pa.Table) -> pa.Table:
        params = np.zeros((table.num_rows, width(rank)))
        params[:, const_col(rank, side)] = 1.0
        local = table.column(LOCAL).to_numpy()
        features = table.column("features").combine_chunks()
        valid = features.is_valid()
        values = pc.list_flatten(features.filter(valid)).to_numpy(zero_copy_only=False)
        params[local[valid.to_numpy(zero_copy_only=False)], :rank] = values.reshape(-1, rank)
        return pa.table(
            {
                "dest": pa.array([table.column(BLOCK)[0].as_py()], pa.int32()),
                "params": pa.array([blob(params)], pa.binary()),
            }
        )

    return rows.select(BLOCK, LOCAL, "features").groupBy(BLOCK).applyInArrow(pack, "dest int, params binary")


def _ranking(als_model, blocks: Blocks, rank: int, relevant: DataFrame, k: int) -> dict:
    users = _als_state(als_model.userFactors, blocks.user_index, blocks.num_user_blocks, rank, "user")
    items = _als_state(als_model.itemFactors, blocks.item_index, blocks.num_item_blocks, rank, "item")
    zeros = blocks.item_index.select(BLOCK, LOCAL, F.lit(0.0).alias(BASELINE))
    recs = recommend_all(blocks, users, items, rank=rank, n=k, baselines=zeros)
    return ranking_metrics(recs.select(USER, ITEM, RANK), relevant, k=k)


def _fit(als: ALS, data: DataFrame):
    began = time.perf_counter()
    model = als.fit(data)
    return model, round(time.perf_counter() - began, 3)


def compare_als(
    train: DataFrame,
    test: DataFrame,
    blocks: Blocks,
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
) -> dict:
    """mse: ALS over reg_grid, the best on test RMSE. bce: explicit ALS on the labels over
    reg_grid, and implicit ALS on the positives over alpha_grid, each the best on test AUC.
    relevant None skips the ranking metrics; time_recommend times ALS's own
    recommendForAllUsers(k) for the best explicit model (which does not exclude anything)."""
    train_ids = _with_int_ids(train, blocks).cache()
    test_ids = _with_int_ids(test, blocks).join(item_stats, ITEM, "left").cache()
    try:
        global_value = float(train.agg(F.avg(RATING)).first()[0])
        fallback = F.coalesce(F.col(ITEM_MEAN if loss == "mse" else POSITIVE_RATE), F.lit(global_value))

        def als(reg: float, **extra) -> ALS:
            return ALS(
                rank=rank,
                maxIter=max_iter,
                regParam=float(reg),
                userCol="_u",
                itemCol="_i",
                ratingCol=RATING,
                coldStartStrategy="nan",
                seed=seed,
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
            "test": {**best["test"], **(_ranking(model, blocks, rank, relevant, k) if relevant is not None else {})},
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

        positives = train_ids.filter(F.col(RATING) == 1.0)
        implicit_runs, implicit_models = [], {}
        for alpha in alpha_grid:
            model, seconds = _fit(als(best["regParam"], implicitPrefs=True, alpha=float(alpha)), positives)
            implicit_models[float(alpha)] = (model, seconds)
            implicit_runs.append(
                {
                    "alpha": float(alpha),
                    "test": classification_metrics(scored(model), logloss=False),
                    "fit_seconds": seconds,
                }
            )
        chosen = max(implicit_runs, key=lambda r: r["test"]["auc"] if r["test"]["auc"] is not None else float("-inf"))
        model, seconds = implicit_models[chosen["alpha"]]
        implicit = {
            "test": {**chosen["test"], **(_ranking(model, blocks, rank, relevant, k) if relevant is not None else {})},
            "fit_seconds": seconds,
            "params": {
                "rank": rank,
                "regParam": best["regParam"],
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
        train_ids.unpersist(), test_ids.unpersist()
