"""Setup, once per fit: index ids, then shuffle the ratings into user and item blocks.

The InBlocks are cached hash-partitioned by block, so that every later half-step
cogroups against them in place: only factor messages move, never ratings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.inblock import CHUNK_SCHEMA, INBLOCK_SCHEMA, chunk_ratings, pack_chunks
from cfspark.data.index import index_entities
from cfspark.phases import phase
from cfspark.schema import BLOCK, ITEM, KEY, LOCAL, OFFSET, RATINGS, TARGET, USER

MAX_BLOCKS = 4096  # splitting stops here, whatever the loads

log = logging.getLogger("cfspark")


@dataclass
class Blocks:
    """Everything training and recommendation read, built once and cached."""

    users: DataFrame  # user InBlocks, one row per user block
    items: DataFrame  # item InBlocks, one row per item block
    user_index: DataFrame  # (user, ratings, block, local, key)
    item_index: DataFrame  # (item, baseline, ratings, block, local, key)
    num_user_blocks: int
    num_item_blocks: int

    def unpersist(self) -> None:
        for df in (self.users, self.items, self.user_index, self.item_index):
            df.unpersist()


def _pack(chunks: DataFrame, side: int, num_blocks: int) -> DataFrame:
    packed = chunks.filter(F.col("side") == side).groupBy("block").applyInArrow(pack_chunks, INBLOCK_SCHEMA)
    return packed.repartition(num_blocks, "block").cache()


def _fitted_index(
    entities: DataFrame, id_col: str, *, num_blocks: int, seed: int, max_block_ratings: int
) -> tuple[DataFrame, int]:
    """Index entities (id_col, ratings, ...) into num_blocks blocks, or into more blocks
    if one would hold more than max_block_ratings ratings.

    A block is one task's input and one Arrow cell per array, so a block too large
    for a worker's memory is split up front rather than left to fail. One entity's
    ratings always share a block, so no block can get below the heaviest entity.
    """
    while True:
        index = index_entities(entities, id_col, num_blocks=num_blocks, seed=seed).cache()
        load, heaviest = (
            index.groupBy(BLOCK)
            .agg(F.sum(RATINGS).alias("load"), F.max(RATINGS).alias("heaviest"))
            .agg(F.max("load"), F.max("heaviest"))
            .first()
        )
        load, heaviest = int(load or 0), int(heaviest or 0)
        if heaviest > max_block_ratings:
            log.warning("one %s has %d ratings, over max_block_ratings = %d", id_col, heaviest, max_block_ratings)
        if load <= max(max_block_ratings, heaviest) or num_blocks >= MAX_BLOCKS:
            return index, num_blocks
        index.unpersist()
        split = min(MAX_BLOCKS, num_blocks * math.ceil(load / max_block_ratings))
        log.warning("a %s block would hold %d ratings: splitting %d blocks into %d", id_col, load, num_blocks, split)
        num_blocks = split


def build_blocks(
    targets: DataFrame,
    baseline: DataFrame,
    *,
    num_user_blocks: int,
    num_item_blocks: int,
    seed: int,
    max_block_ratings: int = 10_000_000,
) -> Blocks:
    """Index users and items, attach (block, local) to each rating and pack both sides.

    targets: (user, item, y, offset); baseline: (item, baseline, ratings), one row per trained item.
    Either side gets more blocks than asked for if a block would exceed max_block_ratings.
    """
    spark = targets.sparkSession
    per_user = targets.groupBy(USER).agg(F.count(F.lit(1)).alias(RATINGS))
    per_item = baseline
    with phase(spark, "index"):
        user_index, num_user_blocks = _fitted_index(
            per_user, USER, num_blocks=num_user_blocks, seed=seed, max_block_ratings=max_block_ratings
        )
        item_index, num_item_blocks = _fitted_index(
            per_item, ITEM, num_blocks=num_item_blocks, seed=seed + 1, max_block_ratings=max_block_ratings
        )

    def prefixed(index: DataFrame, id_col: str, prefix: str) -> DataFrame:
        return index.select(id_col, *[F.col(c).alias(f"{prefix}_{c}") for c in (BLOCK, LOCAL, KEY)])

    ratings = (
        targets.select(USER, ITEM, TARGET, OFFSET)
        .join(prefixed(user_index, USER, "user"), USER)
        .join(prefixed(item_index, ITEM, "item"), ITEM)
        .drop(USER, ITEM)
    )
    with phase(spark, "pack"):
        # One pass cuts both sides' chunks: a few binary cells per partition and block, kept
        # until both sides are packed so that the joins and the Arrow transfer run once.
        chunks = ratings.mapInArrow(chunk_ratings, CHUNK_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
        users = _pack(chunks, 0, num_user_blocks)
        items = _pack(chunks, 1, num_item_blocks)
        users.count(), items.count()
        chunks.unpersist()
    return Blocks(users, items, user_index, item_index, num_user_blocks, num_item_blocks)
