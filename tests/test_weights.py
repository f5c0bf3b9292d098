"""Count weights (data/weights.py): the documented log and linear forms, monotone, a count ≤ 0 refused."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from cfspark.core.errors import InputError
from cfspark.data.validate import Columns, validate_ratings
from cfspark.data.weights import confidence

COUNTS = [0.5, 1.0, 2.0, 3.0, 10.0, 350_000.0]


def _weights(spark, mapping: str, alpha: float, epsilon: float = 1.0) -> list[float]:
    counts = spark.createDataFrame([(c,) for c in COUNTS], "c double")
    out = counts.select("c", confidence(F.col("c"), alpha, mapping, epsilon).alias("w")).orderBy("c").collect()
    return [r["w"] for r in out]


@pytest.mark.parametrize(("alpha", "epsilon"), [(1.0, 1.0), (4.0, 0.5), (0.3, 20.0)])
def test_the_log_mapping_is_one_plus_alpha_log_one_plus_count_over_epsilon(spark, alpha, epsilon):
    weights = _weights(spark, "log", alpha, epsilon)
    assert weights == pytest.approx([1 + alpha * math.log(1 + c / epsilon) for c in COUNTS], rel=1e-14)
    assert all(a < b for a, b in zip(weights, weights[1:], strict=False))  # more plays, more weight
    # a 350,000-play row weighs at most about 13 α: it cannot drown the one-play rows
    assert weights[-1] < 1 + alpha * (math.log(350_000 / epsilon) + 1)


def test_the_linear_mapping_is_implicit_als_confidence(spark):
    weights = _weights(spark, "linear", 2.0)
    assert weights == pytest.approx([1 + 2.0 * c for c in COUNTS], rel=1e-14)
    assert all(a < b for a, b in zip(weights, weights[1:], strict=False))


def test_a_count_of_zero_or_below_is_refused(spark):
    cols = Columns("u", "i", "played", "plays")
    rows = spark.createDataFrame([(1, 10, 1, 2.0), (2, 11, 1, 0.0), (3, 12, 1, -1.0)], ["u", "i", "played", "plays"])
    refused = r"column 'plays' \(input.weight_col\) has 2 count\(s\) that are not above 0 out of "
    with pytest.raises(InputError, match=refused):
        validate_ratings(rows, cols, id_type="long", duplicates="error", labels=True)
    # the mapping itself never turns such a count into a weight, whoever calls it
    for bad in (0.0, -1.0):
        counts = spark.createDataFrame([(bad,)], "c double")
        with pytest.raises(Exception, match="a count must be > 0"):
            counts.select(confidence(F.col("c"), 1.0)).collect()
    with pytest.raises(ValueError, match="unknown weight mapping"):
        confidence(F.col("c"), 1.0, "sqrt")
