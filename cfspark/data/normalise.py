"""Mean normalisation: μ_i over the training ratings, and y' = y − μ_i."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.data.validate import ITEM, RATING

ITEM_MEAN = "item_mean"
NORMALISED = "y"


def item_means(train: DataFrame) -> DataFrame:
    """(item, item_mean), one row per item seen in training."""
    return train.groupBy(ITEM).agg(F.avg(RATING).alias(ITEM_MEAN))


def normalise(train: DataFrame, means: DataFrame) -> DataFrame:
    """Training ratings with y = rating − μ_i added."""
    return train.join(means, ITEM).withColumn(NORMALISED, F.col(RATING) - F.col(ITEM_MEAN))
