"""Mean normalisation: μ_i over the training ratings, and y' = y − μ_i.

An item with three ratings has a noisy mean, and a fixed μ_i passes that noise into every
prediction for it. With a prior of m pseudo-ratings at the global mean g,

    μ_i = (Σ_j y_ij + m·g) / (n_i + m),

which is the posterior mean under a normal prior: items with many ratings keep their own
mean, items with few move towards g. m = 0 gives the course's plain mean.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, ITEM_MEAN, ITEM_RATINGS, NORMALISED, RATING
from cfspark.data.weights import row_weight

A_SUM, AY_SUM, AYY_SUM = "a_sum", "ay_sum", "ayy_sum"


def item_means(train: DataFrame, *, prior: float = 0.0, global_mean: float = 0.0) -> DataFrame:
    """(item, item_mean, ratings), one row per item seen in training; the mean is shrunk
    towards global_mean by prior pseudo-ratings. With a weight column, the mean is weighted
    as the loss is (Σ a·y and Σ a in place of Σ y and n); ratings stays the count."""
    return means_of(item_sums(train), prior=prior, global_mean=global_mean)


def item_sums(train: DataFrame) -> DataFrame:
    """(item, a_sum, ay_sum, ayy_sum, ratings): each item's Σ a, Σ a·y, Σ a·y² and rating count,
    from which means_of gives μ_i, data/priors.py the prior count m, and whose column sums
    give the global mean and the number of ratings."""
    a, y = row_weight(train), F.col(RATING)
    return train.groupBy(ITEM).agg(
        F.sum(a).alias(A_SUM), F.sum(a * y).alias(AY_SUM), F.sum(a * y * y).alias(AYY_SUM),
        F.count(F.lit(1)).alias(ITEM_RATINGS),
    )  # fmt: skip


def means_of(sums: DataFrame, *, prior: float = 0.0, global_mean: float = 0.0) -> DataFrame:
    """item_means' table from item_sums' table."""
    shrunk = (F.col(AY_SUM) + F.lit(prior * global_mean)) / (F.col(A_SUM) + F.lit(prior))
    return sums.select(ITEM, shrunk.alias(ITEM_MEAN), ITEM_RATINGS)


def normalise(train: DataFrame, means: DataFrame, *, broadcast: bool = False) -> DataFrame:
    """Training ratings with y = rating − μ_i added. broadcast: send the item means to every
    task of train, so that no rating moves (else Spark may shuffle every rating by item)."""
    per_item = means.select(ITEM, ITEM_MEAN)
    per_item = F.broadcast(per_item) if broadcast else per_item
    return train.join(per_item, ITEM).withColumn(NORMALISED, F.col(RATING) - F.col(ITEM_MEAN))
