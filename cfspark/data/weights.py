"""A rating's weight a_r in the loss: 1 by default, a confidence from a count, or a sampled negative's.

A count c > 0 (plays, clicks, minutes) becomes the confidence

    log (the default):  1 + α·log(1 + c/ε)
    linear:             1 + α·c

The linear form is implicit ALS's confidence. Counts are heavy-tailed (a play count may run
from 1 to 350,000), and linearly a handful of rows then outweigh everything else, so that α
must be tuned to every data set; the log form, which Hu, Koren and Volinsky also proposed
("Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008), grows by α for every
factor e of the count, so the same α serves counts of any range (measured:
docs/binary-labels.md). ε sets the count below which more plays add little: 1 makes a
single play weigh 1 + α·log 2.

The kernels weigh each rating's loss, gradient and Hessian by a_r (kernels/block.py); the
fixed terms fitted before training (item means, item offsets, the global rate) are weighted
the same way, so that they are what the weighted loss would make of the biases alone.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import WEIGHT

WEIGHT_MAPPINGS = ("log", "linear")


def confidence(count: Column, alpha: float, mapping: str = "log", epsilon: float = 1.0) -> Column:
    """A row's weight from its count c > 0: 1 + α·log(1 + c/ε) (log) or 1 + α·c (linear).

    A count of 0 or below fails the query that evaluates it: input validation refuses such
    rows first, with the column, the number of rows and an example (data/validate.py).
    """
    if mapping not in WEIGHT_MAPPINGS:
        raise ValueError(f"unknown weight mapping {mapping!r}; expected one of {', '.join(WEIGHT_MAPPINGS)}")
    if not epsilon > 0:
        raise ValueError(f"the weight mapping's epsilon must be > 0, not {epsilon}")
    c = count.cast("double")
    scaled = F.log1p(c / F.lit(float(epsilon))) if mapping == "log" else c
    weight = F.lit(1.0) + F.lit(float(alpha)) * scaled
    return F.when(c > 0, weight).otherwise(
        F.raise_error(F.concat(F.lit("a count must be > 0, not "), c.cast("string")))
    )


def row_weight(ratings: DataFrame) -> Column:
    """The weight column of ratings, 1.0 where it has none."""
    return F.coalesce(F.col(WEIGHT), F.lit(1.0)) if WEIGHT in ratings.columns else F.lit(1.0)
