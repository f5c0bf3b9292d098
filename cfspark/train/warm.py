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
from cfspark.core.schema import BIAS, BLOCK, FEATURES, ITEM, LOCAL, USER
from cfspark.train.arrow_bodies import OUT_SCHEMA, warm_blocks
from cfspark.train.step import StepConfig
from cfspark.train.trainer import cache_keys, settle


def _side(
    inblocks: DataFrame,
    num_blocks: int,
    index: DataFrame,
    factors: DataFrame,
    id_col: str,
    cfg: StepConfig,
    send: bool,
    key: CacheKey | None,
):
    earlier = index.select(id_col, BLOCK, LOCAL).join(factors.select(id_col, FEATURES, BIAS), id_col)
    rows = earlier.select(BLOCK, LOCAL, FEATURES, BIAS, partition_key(F.col(BLOCK), num_blocks).alias(PART))
    body = warm_blocks(cfg, send=send, key=key)
    started = inblocks.groupBy(PART).cogroup(rows.groupBy(PART)).applyInArrow(body, OUT_SCHEMA)
    return settle(started)[0]


def warm_start(
    blocks: Blocks, user_factors: DataFrame, item_factors: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig
) -> tuple[DataFrame, DataFrame]:
    """(user_out, item_out) to pass as train(start_from=...): the users' state, and the
    items' state with their messages to the user blocks."""
    keys = cache_keys(blocks)
    user_out = _side(
        blocks.in_place("user"), blocks.num_user_blocks, blocks.user_index, user_factors, USER, user_cfg,
        send=False, key=keys["user"],
    )  # fmt: skip
    item_out = _side(
        blocks.in_place("item"), blocks.num_item_blocks, blocks.item_index, item_factors, ITEM, item_cfg,
        send=True, key=keys["item"],
    )  # fmt: skip
    return user_out, item_out
