"""The packing tasks' numpy hashes of integer ids equal Spark's hash() and xxhash64()."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from cfspark.blocks.hashing import hashed_blocks, murmur3, xxhash64


@pytest.mark.parametrize("spark_type", ["long", "int", "short", "byte"])
def test_numpy_hashes_equal_sparks(spark, spark_type):
    bits = {"long": 64, "int": 32, "short": 16, "byte": 8}[spark_type]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rng = np.random.default_rng(bits)
    values = np.concatenate([rng.integers(lo, hi, 500, dtype=np.int64, endpoint=True), [lo, hi, -1, 0, 1]])
    df = spark.createDataFrame([(int(v),) for v in values], f"x {spark_type}")
    seeds = (0, 7, -5, 2**40 + 3)  # the last is a long literal, hashed as one
    rows = df.select(
        "x",
        F.hash("x").alias("hash"),
        F.pmod(F.hash("x"), F.lit(7)).alias("block"),
        *[F.xxhash64("x", F.lit(s)).alias(f"key{j}") for j, s in enumerate(seeds)],
    ).collect()
    x = np.array([r.x for r in rows], dtype=np.int64)
    wide = spark_type == "long"
    np.testing.assert_array_equal(murmur3(x, wide=wide), [r.hash for r in rows])
    np.testing.assert_array_equal(hashed_blocks(x, 7, wide=wide), [r.block for r in rows])
    for j, seed in enumerate(seeds):
        np.testing.assert_array_equal(xxhash64(x, seed, wide=wide), [r[f"key{j}"] for r in rows])
