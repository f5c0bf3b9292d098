"""Regression metrics over a predictions DataFrame, computed in one Spark aggregate."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.data.validate import RATING


def regression_metrics(predictions: DataFrame, *, prediction_col: str = "prediction") -> dict:
    """{"rmse", "mae", "count"}; rmse and mae are None when there are no rows."""
    err = F.col(prediction_col) - F.col(RATING)
    row = predictions.agg(
        F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae"), F.count(F.lit(1)).alias("count")
    ).first()
    return {"rmse": row["rmse"], "mae": row["mae"], "count": row["count"]}
