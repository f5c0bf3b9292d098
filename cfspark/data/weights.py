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

α = "auto" (the default) weighs rows as the reference α₀ = 1 does; the positive-only
all-items fit then chooses α on NDCG@10 of a validation fold, with λ (fit/rank_search.py),
by rescaling 1 + α₀·g(c) to 1 + α·g(c). Elsewhere "auto" stays at α₀.

The kernels weigh each rating's loss, gradient and Hessian by a_r (kernels/block.py); the
fixed terms fitted before training (item means, item offsets, the global rate) are weighted
the same way, so that they are what the weighted loss would make of the biases alone.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import WEIGHT

WEIGHT_MAPPINGS = ("log", "linear")
AUTO_ALPHA = "auto"
REFERENCE_ALPHA = 1.0  # the α that weights are made with under "auto", until a fit chooses one


def column_alpha(alpha: float | str) -> float:
    """The α a weight column is made with: alpha itself, or REFERENCE_ALPHA for "auto"."""
    return REFERENCE_ALPHA if alpha == AUTO_ALPHA else float(alpha)


def confidence(count: Column, alpha: float | str, mapping: str = "log", epsilon: float = 1.0) -> Column:
    """A row's weight from its count c > 0: 1 + α·log(1 + c/ε) (log) or 1 + α·c (linear);
    α = "auto" is REFERENCE_ALPHA here.

    A count of 0 or below fails the query that evaluates it: input validation refuses such
    rows first, with the column, the number of rows and an example (data/validate.py).
    """
    if mapping not in WEIGHT_MAPPINGS:
        raise ValueError(f"unknown weight mapping {mapping!r}; expected one of {', '.join(WEIGHT_MAPPINGS)}")
    if not epsilon > 0:
        raise ValueError(f"the weight mapping's epsilon must be > 0, not {epsilon}")
    c = count.cast("double")
    scaled = F.log1p(c / F.lit(float(epsilon))) if mapping == "log" else c
    weight = F.lit(1.0) + F.lit(column_alpha(alpha)) * scaled
    return F.when(c > 0, weight).otherwise(
        F.raise_error(F.concat(F.lit("a count must be > 0, not "), c.cast("string")))
    )


def row_weight(ratings: DataFrame) -> Column:
    """The weight column of ratings, 1.0 where it has none."""
    return F.coalesce(F.col(WEIGHT), F.lit(1.0)) if WEIGHT in ratings.columns else F.lit(1.0)


def given_weight(ratings: DataFrame) -> Column:
    """row_weight where ratings has a weight column, else a null double: the kernels then
    take every rating's weight as 1 without carrying a column of ones."""
    return row_weight(ratings) if WEIGHT in ratings.columns else F.lit(None).cast("double")
