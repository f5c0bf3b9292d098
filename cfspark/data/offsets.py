"""Item offsets for binary labels: o_i = logit of the item's smoothed positive rate.

This is the binary counterpart of μ_i. It is fixed before training, and it is what a
user with no labels is predicted: σ(o_i), the item's positive rate.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.errors import InputError
from cfspark.core.schema import ITEM, ITEM_OFFSET, LABELLED, POSITIVE_RATE, POSITIVES, RATING
from cfspark.data.weights import row_weight


def global_rate(train: DataFrame) -> float:
    """p, the (weighted) share of positive labels; refuses labels that are all one value."""
    a = row_weight(train)
    row = train.agg(
        F.sum(a * F.col(RATING)) / F.sum(a), F.count(F.lit(1)), F.min(RATING), F.max(RATING), F.min(a), F.max(a)
    ).first()
    p = float(row[0]) if row[2] != row[3] else float(row[2])  # one label value: exactly 0 or 1
    refusal = refused_rate(row[1], p, (row[2], row[3]), (row[4], row[5]))
    if refusal:
        raise InputError(refusal)
    return p


def refused_rate(count: int, p: float, labels: tuple[float, float], weights: tuple[float, float]) -> str | None:
    """Why count labels with weighted share of 1s p, (least, most) label and (least, most)
    weight cannot fit bce, or None: labels all one value, or both values with weights so
    uneven that the share of 1s is 0 or 1 in float64. The one-task bce fit, which sums the
    labels in its task, refuses with the same words (train/bce_task.py)."""
    if labels[0] != labels[1] and not 0.0 < p < 1.0:
        return (
            f"the {count} training labels hold both 0 and 1, but their weighted share of 1s is {p:g} in float64: "
            f"the rows' weights range from {weights[0]:g} to {weights[1]:g}, too wide a range for bce "
            "(input.weight_col, input.weight_alpha): cap or rescale the weights"
        )
    if labels[0] == labels[1]:
        return (
            f"all {count} training labels are {int(labels[0])}; bce needs both 0 and 1 labels "
            "(positive-only data: model.exposure = true fits the exposure model alone)"
        )
    return None


def logit(p: F.Column | float) -> F.Column:
    return F.log(F.lit(p) / (F.lit(1.0) - F.lit(p))) if isinstance(p, float) else F.log(p / (1.0 - p))


def item_offsets(train: DataFrame, *, prior: float, rate: float, enabled: bool = True) -> DataFrame:
    """(item, positives, labelled, positive_rate, item_offset) over the training labels.

    positive_rate = (positives + prior·p) / (labelled + prior), a Beta prior centred on the
    global rate p, so an item with one label is not pushed to 0 or 1; with a weight column,
    positives and labelled in the rate are weighted sums, as the loss is (the counts in the
    table stay counts). With enabled=False the offsets are all 0: the plain σ(w·x + b) of the course.
    """
    a = row_weight(train)
    counts = train.groupBy(ITEM).agg(
        F.sum(RATING).cast("long").alias(POSITIVES),
        F.count(F.lit(1)).alias(LABELLED),
        F.sum(a * F.col(RATING)).alias("_positive_weight"),
        F.sum(a).alias("_weight"),
    )
    smoothed = (F.col("_positive_weight") + F.lit(prior * rate)) / (F.col("_weight") + F.lit(prior))
    table = counts.withColumn(POSITIVE_RATE, smoothed).drop("_positive_weight", "_weight")
    offset = logit(F.col(POSITIVE_RATE)) if enabled else F.lit(0.0)
    return table.withColumn(ITEM_OFFSET, offset)
