"""A train/test split that is a pure function of (user, item, seed).

randomSplit draws per partition, so its result can change when input partitioning
or order changes (see the note on nondeterministic input in Spark's ALS docs).
Hashing each pair instead makes the split reproducible from the data alone.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, USER

_UNIT = 2**53


def hashed_fraction(seed: int) -> F.Column:
    """A value in [0, 1) per (user, item) row, uniform over pairs, fixed by seed."""
    h = F.xxhash64(F.col(USER), F.col(ITEM), F.lit(seed))
    return F.pmod(h, F.lit(_UNIT)).cast("double") / float(_UNIT)


def split_ratings(df: DataFrame, *, test_fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Return (train, test); test is empty when test_fraction is 0."""
    if test_fraction <= 0:
        return df, df.limit(0)
    is_test = hashed_fraction(seed) < F.lit(test_fraction)
    return df.filter(~is_test), df.filter(is_test)
