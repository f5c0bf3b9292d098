"""Spark ALS on the same split, scored on every test row exactly as cfspark is.

ALS returns NaN for a test pair whose user or item it never saw; such a prediction
is replaced by μ_i (item seen) or the global training mean, cfspark's own fallback.
"""

from __future__ import annotations

import time

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.data.index import dense_id
from cfspark.data.normalise import ITEM_MEAN
from cfspark.data.validate import ITEM, RATING, USER
from cfspark.evaluate import regression_metrics

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


def compare_als(
    train: DataFrame,
    test: DataFrame,
    blocks: Blocks,
    item_means: DataFrame,
    global_mean: float,
    *,
    rank: int,
    reg_grid: list[float],
    max_iter: int,
    seed: int,
) -> dict:
    """Fit ALS for each regParam in reg_grid and report the best on the test split."""
    train_ids = _with_int_ids(train, blocks).cache()
    test_ids = _with_int_ids(test, blocks).join(item_means, ITEM, "left").cache()
    fallback = F.coalesce(F.col(ITEM_MEAN), F.lit(global_mean))
    runs = []
    for reg in reg_grid:
        als = ALS(
            rank=rank,
            maxIter=max_iter,
            regParam=float(reg),
            userCol="_u",
            itemCol="_i",
            ratingCol=RATING,
            coldStartStrategy="nan",
            seed=seed,
        )
        began = time.perf_counter()
        model = als.fit(train_ids)
        seconds = time.perf_counter() - began
        scored = model.transform(test_ids).withColumn(
            "prediction", F.when(F.isnan("prediction"), fallback).otherwise(F.col("prediction"))
        )
        runs.append({"regParam": float(reg), "test": regression_metrics(scored), "fit_seconds": round(seconds, 3)})
    train_ids.unpersist(), test_ids.unpersist()
    best = min(runs, key=lambda r: r["test"]["rmse"] if r["test"]["rmse"] is not None else float("inf"))
    return {
        "test": best["test"],
        "fit_seconds": best["fit_seconds"],
        "params": {"rank": rank, "regParam": best["regParam"], "maxIter": max_iter, "seed": seed},
        "grid": runs,
    }
