"""Mean normalisation: μ_i over the training ratings, and y' = y − μ_i."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.data.validate import ITEM, RATING

ITEM_MEAN = "item_mean"
ITEM_RATINGS = "ratings"  # the item's number of training ratings
NORMALISED = "y"


def item_means(train: DataFrame) -> DataFrame:
    """(item, item_mean, ratings), one row per item seen in training."""
    return train.groupBy(ITEM).agg(F.avg(RATING).alias(ITEM_MEAN), F.count(F.lit(1)).alias(ITEM_RATINGS))


def normalise(train: DataFrame, means: DataFrame) -> DataFrame:
    """Training ratings with y = rating − μ_i added."""
    return train.join(means.select(ITEM, ITEM_MEAN), ITEM).withColumn(NORMALISED, F.col(RATING) - F.col(ITEM_MEAN))
