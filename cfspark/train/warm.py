"""Warm start: the first state tables of a fit, taken from an earlier model's factors.

Users and items the earlier model knows start from its w, b, x and c; new ones start
from their hashed initial values, as in a cold start; those that have disappeared
from the data are not in the blocks, so they are dropped.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.cache import CacheKey
from cfspark.blocks.partitioning import PART, partition_key
from cfspark.core.plans import one_job
from cfspark.core.schema import BIAS, BLOCK, FEATURES, ITEM, LOCAL, USER
from cfspark.train.arrow_bodies import OUT_SCHEMA, warm_blocks
from cfspark.train.step import StepConfig
from cfspark.train.trainer import cache_keys, settle


def _side(blocks: Blocks, side: str, factors: DataFrame, cfg: StepConfig, key: CacheKey | None) -> DataFrame:
    """One side's first state table (with the items' messages to the user blocks)."""
    index, id_col, num_blocks = blocks.index(side), USER if side == "user" else ITEM, blocks.num_blocks(side)
    earlier = index.select(id_col, BLOCK, LOCAL).join(factors.select(id_col, FEATURES, BIAS), id_col)
    rows = earlier.select(BLOCK, LOCAL, FEATURES, BIAS, partition_key(F.col(BLOCK), num_blocks).alias(PART))
    rows = rows.repartition(num_blocks, PART)  # as the InBlocks are: the cogroup adds no shuffle
    # Workers that keep the blocks read them only here: no cached copy in place.
    inblocks = blocks.in_place(side, keep=key is None)
    body = warm_blocks(cfg, send=side == "item", key=key)
    started = inblocks.groupBy(PART).cogroup(rows.groupBy(PART)).applyInArrow(body, OUT_SCHEMA)
    with one_job(started.sparkSession):  # its shuffles' partitions are the block count's
        return settle(started)[0]


def warm_start(
    blocks: Blocks, user_factors: DataFrame, item_factors: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig
) -> tuple[DataFrame, DataFrame]:
    """(user_out, item_out) to pass as train(start_from=...): the users' state, and the
    items' state with their messages to the user blocks."""
    keys = cache_keys(blocks)
    return (_side(blocks, "user", user_factors, user_cfg, keys["user"]),
            _side(blocks, "item", item_factors, item_cfg, keys["item"]))  # fmt: skip
