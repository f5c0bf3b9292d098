"""Predictions from a fit's tables, in Spark SQL: what the λ search scores a fold with and
what a model's transform returns, written once.

tables is anything with user_factors, item_factors, item_stats and global_baseline: a
FitRecord, or a model.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import BASELINE, BIAS, FEATURES, ITEM, ITEM_MEAN, ITEM_OFFSET, USER

BASELINE_COL = {"mse": ITEM_MEAN, "bce": ITEM_OFFSET}  # the item term of each loss's item table
LINK = {"mse": "identity", "bce": "sigmoid"}


def apply_link(z: Column, loss: str) -> Column:
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-z)) if LINK[loss] == "sigmoid" else z


def dot(a: Column, b: Column) -> Column:
    """Σ a_k·b_k of two array<double> columns, in Spark SQL."""
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, v: acc + v)


def predict(tables: Any, pairs: DataFrame, *, loss: str, prediction_col: str, cold_start: str = "mean") -> DataFrame:
    """pairs with (user, item, ...) → the same rows plus prediction_col.

    mse predicts w_j·x_i + b_j + c_i + μ_i, bce σ(w_j·x_i + b_j + c_i + o_i). cold_start
    "mean": an unseen user gets the item term alone and an unseen item the global one; "nan"
    gives NaN there; "drop" drops those rows.
    """
    w = tables.user_factors.select(USER, F.col(FEATURES).alias("_w"), F.col(BIAS).alias("_b"))
    x = tables.item_factors.select(ITEM, F.col(FEATURES).alias("_x"), F.col(BIAS).alias("_c"))
    base = tables.item_stats.select(ITEM, F.col(BASELINE_COL[loss]).alias("_base"))
    joined = pairs.join(w, USER, "left").join(x, ITEM, "left").join(base, ITEM, "left")
    interaction = F.coalesce(dot(F.col("_w"), F.col("_x")) + F.col("_b"), F.lit(0.0))
    item_term = F.coalesce(F.col("_c"), F.lit(0.0)) + F.coalesce(F.col("_base"), F.lit(tables.global_baseline))
    prediction = apply_link(interaction + item_term, loss)
    known = F.col("_w").isNotNull() & F.col("_x").isNotNull()
    if cold_start == "nan":
        prediction = F.when(known, prediction).otherwise(F.lit(float("nan")))
    elif cold_start == "drop":
        joined = joined.filter(known)
    return joined.withColumn(prediction_col, prediction).drop("_w", "_b", "_x", "_c", "_base")


def item_baseline(tables: Any, loss: str) -> DataFrame:
    """(item, baseline): μ_i (mse) or o_i (bce) of the fit's item table."""
    return tables.item_stats.select(ITEM, F.col(BASELINE_COL[loss]).alias(BASELINE))
