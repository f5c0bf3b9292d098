"""Similar items and similar users: cosine on the factors, through recommend.py's top-N.

A side's factor vectors are scaled to unit length (a zero vector stays zero, similar to
nothing), so that their dot product is the cosine; every query then asks the blockwise
top-N for its k best among the same side's vectors, itself excluded as a training pair
is from recommendations. Nothing is collected to the driver and no cross join is built.
Only w (or x) counts: the biases and baselines say how much a user rates or an item is
rated, not what they are like.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import FEATURES, RANK, SCORE
from cfspark.ml.recommend import top_n

SIMILAR = "similar"  # the column of the similar item (or user) beside the query's own
_TINY = 1e-300  # a zero vector's norm is clamped to this, so that it scales to zero, not NaN


def unit_vectors(factors: DataFrame, key: str) -> DataFrame:
    """(key, _v): each row's features scaled to unit length."""
    norm = F.sqrt(F.aggregate(F.col(FEATURES), F.lit(0.0), lambda acc, v: acc + v * v))
    scaled = F.transform(F.col(FEATURES), lambda v: v / F.greatest(norm, F.lit(_TINY)))
    return factors.select(key, scaled.alias("_v"))


def most_similar(
    factors: DataFrame, key: str, k: int, *, queries: DataFrame | None = None, size: int | None = None
) -> DataFrame:
    """(key, similar, rank, score): each query's k most similar rows of factors by cosine,
    itself left out; ties go to the lower id. queries, a table with a key column, narrows
    the queries (every row of factors by default); size, the number of rows of factors if
    known, saves counting them."""
    vectors = unit_vectors(factors, key)
    asking = vectors if queries is None else vectors.join(queries.select(key).distinct(), key, "left_semi")
    candidates = vectors.withColumnRenamed(key, SIMILAR)
    itself = asking.select(key, F.col(key).alias(SIMILAR))
    n = size if size is not None else factors.count()
    return top_n(
        asking, candidates, n=k, query_col=key, candidate_col=SIMILAR, query_vec=F.col("_v"),
        candidate_vec=F.col("_v"), exclude=itself, sizes=(n, n),
    ).select(key, SIMILAR, RANK, SCORE)  # fmt: skip


__all__ = ["SIMILAR", "most_similar", "unit_vectors"]
