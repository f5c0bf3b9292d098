"""Item offsets for binary labels: o_i = logit of the item's smoothed positive rate.

This is the binary counterpart of μ_i. It is fixed before training, and it is what a
user with no labels is predicted: σ(o_i), the item's positive rate.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.errors import InputError
from cfspark.schema import ITEM, ITEM_OFFSET, LABELLED, POSITIVE_RATE, POSITIVES, RATING


def global_rate(train: DataFrame) -> float:
    """p, the share of positive labels; refuses labels that are all one value."""
    row = train.agg(F.avg(RATING), F.count(F.lit(1))).first()
    p = float(row[0])
    if not 0.0 < p < 1.0:
        raise InputError(
            f"all {row[1]} training labels are {int(p)}; bce needs both 0 and 1 labels "
            "(for positive-only data set negatives.per_positive)"
        )
    return p


def logit(p: F.Column | float) -> F.Column:
    return F.log(F.lit(p) / (F.lit(1.0) - F.lit(p))) if isinstance(p, float) else F.log(p / (1.0 - p))


def item_offsets(train: DataFrame, *, prior: float, rate: float, enabled: bool = True) -> DataFrame:
    """(item, positives, labelled, positive_rate, item_offset) over the training labels.

    positive_rate = (positives + prior·p) / (labelled + prior), a Beta prior centred on the
    global rate p, so an item with one label is not pushed to 0 or 1. With enabled=False the
    offsets are all 0: the plain σ(w·x + b) of the course.
    """
    counts = train.groupBy(ITEM).agg(F.sum(RATING).cast("long").alias(POSITIVES), F.count(F.lit(1)).alias(LABELLED))
    smoothed = (F.col(POSITIVES) + F.lit(prior * rate)) / (F.col(LABELLED) + F.lit(prior))
    table = counts.withColumn(POSITIVE_RATE, smoothed)
    offset = logit(F.col(POSITIVE_RATE)) if enabled else F.lit(0.0)
    return table.withColumn(ITEM_OFFSET, offset)
