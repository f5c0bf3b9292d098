"""Setup, once per fit: index ids, then shuffle the ratings into user and item blocks.

The InBlocks are cached hash-partitioned by block, so that every later half-step
cogroups against them in place: only factor messages move, never ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.inblock import INBLOCK_SCHEMA, pack_block
from cfspark.data.index import BLOCK, KEY, LOCAL, index_entities
from cfspark.data.validate import ITEM, USER

TARGET = "y"  # what a rating's score is fitted to: y' (mse) or the label (bce)
OFFSET = "offset"  # a fixed term added to the rating's score: o_i (bce) or null
BASELINE = "baseline"  # per item: μ_i (mse) or o_i (bce), added back at prediction


@dataclass
class Blocks:
    """Everything training and recommendation read, built once and cached."""

    users: DataFrame  # user InBlocks, one row per user block
    items: DataFrame  # item InBlocks, one row per item block
    user_index: DataFrame  # (user, block, local, key)
    item_index: DataFrame  # (item, block, local, key, baseline)
    num_user_blocks: int
    num_item_blocks: int

    def unpersist(self) -> None:
        for df in (self.users, self.items, self.user_index, self.item_index):
            df.unpersist()


def _pack(ratings: DataFrame, own: str, other: str, num_blocks: int) -> DataFrame:
    rows = ratings.select(
        F.col(f"{own}_block").alias("block"),
        F.col(f"{own}_local").alias("own"),
        F.col(f"{other}_block").alias("other_block"),
        F.col(f"{other}_local").alias("other"),
        F.col(TARGET).alias("y"),
        F.col(f"{own}_key").alias("key"),
        F.col(OFFSET).alias("offset"),
    )
    packed = rows.groupBy("block").applyInArrow(pack_block, INBLOCK_SCHEMA)
    return packed.repartition(num_blocks, "block").cache()


def build_blocks(
    targets: DataFrame, baseline: DataFrame, *, num_user_blocks: int, num_item_blocks: int, seed: int
) -> Blocks:
    """Index users and items, attach (block, local) to each rating and pack both sides.

    targets: (user, item, y, offset); baseline: (item, baseline), one row per trained item.
    """
    user_index = index_entities(targets.select(USER).distinct(), USER, num_blocks=num_user_blocks, seed=seed)
    item_index = index_entities(baseline, ITEM, num_blocks=num_item_blocks, seed=seed + 1)
    user_index, item_index = user_index.cache(), item_index.cache()

    def prefixed(index: DataFrame, id_col: str, prefix: str) -> DataFrame:
        return index.select(id_col, *[F.col(c).alias(f"{prefix}_{c}") for c in (BLOCK, LOCAL, KEY)])

    ratings = (
        targets.select(USER, ITEM, TARGET, OFFSET)
        .join(prefixed(user_index, USER, "user"), USER)
        .join(prefixed(item_index, ITEM, "item"), ITEM)
    )
    users = _pack(ratings, "user", "item", num_user_blocks)
    items = _pack(ratings, "item", "user", num_item_blocks)
    users.count(), items.count()
    return Blocks(users, items, user_index, item_index, num_user_blocks, num_item_blocks)
