"""Fold-in on Spark: new users' ratings, hashed into blocks, solved against fixed items.

Each rating travels with its item's [x | 1 | c] row (one join to the item table), so a
block task holds everything its users need and runs kernels.foldin once for all of them.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.blocks.codec import list_matrix, list_rows
from cfspark.core.schema import BASELINE, BIAS, FEATURES, ITEM, RATING, USER
from cfspark.kernels.foldin import fold_in_rows
from cfspark.kernels.layout import width
from cfspark.train.step import StepConfig

RATINGS_PER_TASK = 1_000_000


def _solve(cfg: StepConfig):
    rank = cfg.rank

    def run(table: pa.Table) -> pa.Table:
        table = table.sort_by(USER)
        users = table.column(USER).combine_chunks()
        change = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
        starts = np.r_[0, np.flatnonzero(change) + 1]
        row_ptr = np.r_[starts, table.num_rows].astype(np.int64)
        vec = list_matrix(table.column("_v"), width(rank))
        offset = table.column("_offset").to_numpy(zero_copy_only=False) if cfg.loss == "bce" else None
        params = fold_in_rows(
            row_ptr, vec, table.column("_y").to_numpy(zero_copy_only=False), offset, rank=rank, loss=cfg.loss,
            reg=cfg.reg, bias_reg=cfg.bias_reg, count_scaled=cfg.count_scaled,
        )  # fmt: skip
        return pa.table(
            {
                USER: users.take(pa.array(starts)),
                FEATURES: list_rows(params[:, :rank]),
                BIAS: pa.array(params[:, rank]),
            }
        )

    return run


def fold_in(
    ratings: DataFrame, item_factors: DataFrame, baseline: DataFrame, cfg: StepConfig, *, global_baseline: float
) -> DataFrame:
    """(user, features, bias) for the users of ratings (user, item, rating), X held fixed.

    item_factors: (item, features, bias); baseline: (item, baseline), μ_i (mse) or o_i (bce),
    and global_baseline for items without one. cfg is the users' step: rank, loss, λ, its
    scaling and λ_b. Ratings of items without factors are dropped: they say nothing about w.
    """
    items = item_factors.join(baseline, ITEM, "left").select(
        ITEM,
        F.concat(F.col(FEATURES), F.array(F.lit(1.0), F.col(BIAS))).alias("_v"),
        F.coalesce(F.col(BASELINE), F.lit(global_baseline)).alias("_base"),
    )
    rated = ratings.join(items, ITEM)
    if cfg.loss == "mse":
        rated = rated.select(USER, "_v", (F.col(RATING) - F.col("_base")).alias("_y"), F.lit(0.0).alias("_offset"))
    else:
        rated = rated.select(USER, "_v", F.col(RATING).cast("double").alias("_y"), F.col("_base").alias("_offset"))
    blocks = max(1, math.ceil(ratings.count() / RATINGS_PER_TASK))
    schema = T.StructType(
        [
            T.StructField(USER, ratings.schema[USER].dataType),
            T.StructField(FEATURES, T.ArrayType(T.DoubleType())),
            T.StructField(BIAS, T.DoubleType()),
        ]
    )
    grouped = rated.withColumn("_block", F.pmod(F.xxhash64(USER), F.lit(blocks)))
    return grouped.groupBy("_block").applyInArrow(_solve(cfg), schema)
