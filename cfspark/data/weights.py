"""A rating's weight a_r in the loss: 1 by default, 1 + α·c from a count, or a sampled negative's.

The kernels weigh each rating's loss, gradient and Hessian by a_r (kernels/block.py); the
fixed terms fitted before training (item means, item offsets, the global rate) are weighted
the same way, so that they are what the weighted loss would make of the biases alone.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import WEIGHT


def confidence(count: Column, alpha: float) -> Column:
    """A row's weight from its count or confidence c: 1 + α·c, implicit ALS's confidence."""
    return F.lit(1.0) + F.lit(float(alpha)) * count.cast("double")


def row_weight(ratings: DataFrame) -> Column:
    """The weight column of ratings, 1.0 where it has none."""
    return F.coalesce(F.col(WEIGHT), F.lit(1.0)) if WEIGHT in ratings.columns else F.lit(1.0)
