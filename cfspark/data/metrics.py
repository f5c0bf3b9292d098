"""Metrics over predictions and recommendations, each computed in Spark aggregates."""

from __future__ import annotations

import math

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, RATING, USER

PROBABILITY_FLOOR = 1e-15  # logloss clips p into [floor, 1 − floor]


def regression_metrics(predictions: DataFrame, *, prediction_col: str = "prediction") -> dict:
    """{"rmse", "mae", "count"}; rmse and mae are None when there are no rows."""
    err = F.col(prediction_col) - F.col(RATING)
    row = predictions.agg(
        F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae"), F.count(F.lit(1)).alias("count")
    ).first()
    return {"rmse": row["rmse"], "mae": row["mae"], "count": row["count"]}


def classification_metrics(predictions: DataFrame, *, prediction_col: str = "prediction", logloss: bool = True) -> dict:
    """{"logloss", "auc", "count"} for P(y=1) in prediction_col and 0/1 labels.

    auc is the exact areaUnderROC over all rows (no binning); None when only one label occurs.
    """
    p = F.least(F.greatest(F.col(prediction_col), F.lit(PROBABILITY_FLOOR)), F.lit(1 - PROBABILITY_FLOOR))
    y = F.col(RATING)
    row = predictions.agg(
        (-F.avg(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("logloss"),
        F.count(F.lit(1)).alias("count"),
        F.countDistinct(RATING).alias("labels"),
    ).first()
    auc = None
    if row["labels"] == 2:
        evaluator = BinaryClassificationEvaluator(
            rawPredictionCol=prediction_col, labelCol=RATING, metricName="areaUnderROC", numBins=0
        )
        auc = evaluator.evaluate(predictions.select(F.col(prediction_col).cast("double"), y.cast("double")))
    return {"logloss": row["logloss"] if logloss else None, "auc": auc, "count": row["count"]}


def ranking_metrics(recommendations: DataFrame, relevant: DataFrame, *, k: int) -> dict:
    """precision, recall, ndcg and map at k, averaged over users with a relevant item.

    recommendations: (user, item, rank) with training items already excluded.
    relevant: (user, item), the relevant test pairs of the users to evaluate. A user
    with no recommendation list counts with zero hits.
    """
    hits = (
        recommendations.filter(F.col("rank") <= k)
        .select(USER, ITEM, "rank")
        .join(relevant.select(USER, ITEM).withColumn("hit", F.lit(1.0)), [USER, ITEM], "left")
        .fillna(0.0, subset=["hit"])
    )
    cumulative = F.sum("hit").over(Window.partitionBy(USER).orderBy("rank"))
    per_user = (
        hits.withColumn("hits_so_far", cumulative)
        .groupBy(USER)
        .agg(
            F.sum("hit").alias("hits"),
            F.sum(F.col("hit") / F.log2(F.col("rank") + 1)).alias("dcg"),
            F.sum(F.col("hit") * F.col("hits_so_far") / F.col("rank")).alias("ap_sum"),
        )
    )
    ideal = F.array(*[F.lit(sum(1 / math.log2(i + 1) for i in range(1, j + 1))) for j in range(1, k + 1)])
    users = relevant.groupBy(USER).agg(F.count(F.lit(1)).alias("n_relevant"))
    cutoff = F.least(F.col("n_relevant"), F.lit(k))
    scored = users.join(per_user, USER, "left").fillna(0.0, subset=["hits", "dcg", "ap_sum"])
    row = scored.agg(
        F.avg(F.col("hits") / k).alias("precision"),
        F.avg(F.col("hits") / F.col("n_relevant")).alias("recall"),
        F.avg(F.col("dcg") / F.element_at(ideal, cutoff.cast("int"))).alias("ndcg"),
        F.avg(F.col("ap_sum") / cutoff).alias("map"),
        F.count(F.lit(1)).alias("users"),
    ).first()
    return {
        "precision_at_k": row["precision"],
        "recall_at_k": row["recall"],
        "ndcg_at_k": row["ndcg"],
        "map_at_k": row["map"],
        "k": k,
        "users": row["users"],
    }


def prediction_metrics(predictions: DataFrame, *, loss: str, prediction_col: str) -> dict:
    """Pointwise metrics of prediction_col against the rating column: rmse/mae (mse) or logloss/auc (bce)."""
    if loss == "mse":
        return regression_metrics(predictions, prediction_col=prediction_col)
    return classification_metrics(predictions, prediction_col=prediction_col)


def pointwise_metrics(model, df: DataFrame, *, prediction_col: str | None = None) -> dict:
    """A model's pointwise metrics on df (user, item, rating), of its prediction column or of
    prediction_col among the columns its predictions carry."""
    col = prediction_col or model.getPredictionCol()
    return prediction_metrics(model.predict_canonical(df), loss=model.getLoss(), prediction_col=col)


def relevant_pairs(test: DataFrame, trained_users: DataFrame, *, loss: str, threshold: float) -> DataFrame:
    """(user, item) test pairs that count as relevant, for users with training data:
    label 1 (bce) or rating >= threshold (mse)."""
    cut = 0.5 if loss == "bce" else threshold
    return test.filter(F.col(RATING) >= cut).select(USER, ITEM).join(trained_users.select(USER), USER, "left_semi")
