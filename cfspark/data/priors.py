"""Prior counts from the training ratings, in Spark: kernels/priors.py's moments, summed over groups."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.kernels.priors import GroupMoments, prior_count


def moments_of(groups: DataFrame, weight: str | Column, total: str | Column, squares: str | Column) -> GroupMoments:
    """GroupMoments of a table with one row per group and its Σa, Σa·y and Σa·y², in one aggregation."""
    a, s, q = (F.col(c) if isinstance(c, str) else c for c in (weight, total, squares))
    mean = s / a
    row = groups.agg(
        F.count(F.lit(1)), F.sum(a), F.sum(s), F.sum(q - s * mean), F.sum(mean * mean), F.sum(mean), F.sum(1.0 / a)
    ).first()
    return GroupMoments(*(float(v or 0.0) for v in row))


def prior_of(groups: DataFrame, weight: str | Column, total: str | Column, squares: str | Column) -> float:
    """kernels/priors.prior_count of those groups."""
    return prior_count(moments_of(groups, weight, total, squares))
