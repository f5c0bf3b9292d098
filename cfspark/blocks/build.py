"""Setup, once per fit: cut the ratings into chunks, place users and items in blocks, pack them.

As Spark ALS's makeBlocks does, no rating is ever joined to an id index: a rating's block
on each side comes from its own ids (placement.py), and each block finds its entities'
local indices itself, while it is packed (inblock.py). The (id, block, local) tables that
factor tables and warm starts need are read back from the packed blocks, when asked for.

The InBlocks are cached hash-partitioned by block, so that every later half-step
cogroups against them in place: only factor messages move, never ratings.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.blocks.cache import release_workers
from cfspark.blocks.codec import cell
from cfspark.blocks.inblock import (
    CHUNK_SCHEMA,
    INBLOCK_SCHEMA,
    INDEX_SCHEMA,
    LABELS_SCHEMA,
    ChunkSide,
    chunk_ratings,
    index_rows,
    label_messages,
    pack_chunks,
    with_col_labels,
)
from cfspark.blocks.partitioning import PART, partition_key
from cfspark.blocks.placement import (
    COLLIDED,
    VALUE,
    Placement,
    entity_counts,
    hashed_block,
    hashed_ids,
    id_value,
    place_sides,
)
from cfspark.blocks.reroute import COUNT_SCHEMA, chunk_counts, reroute_chunks
from cfspark.core.phases import phase
from cfspark.core.schema import BLOCK, ITEM, LOCAL, OFFSET, RATINGS, TARGET, USER, WEIGHT

__all__ = ["Blocks", "build_blocks"]

log = logging.getLogger("cfspark")


@dataclass
class Side:
    """How one side's ids map to the values its blocks order them by."""

    id_col: str
    dtype: T.DataType
    entities: DataFrame | None  # entity_counts' table, cached, for hashed (string) ids; None for integers
    placement: Placement

    def index(self, inblocks: DataFrame) -> DataFrame:
        """(id_col, block, local) of every entity, read from the packed InBlocks."""
        rows = inblocks.select(BLOCK, "ids").mapInArrow(index_rows, INDEX_SCHEMA)
        if self.entities is None:
            return rows.select(F.col(VALUE).cast(self.dtype).alias(self.id_col), BLOCK, LOCAL)
        return rows.join(self.entities.select(VALUE, self.id_col), VALUE).select(self.id_col, BLOCK, LOCAL)


@dataclass
class Blocks:
    """Everything training and recommendation read, built once and cached."""

    users: DataFrame  # user InBlocks, one row per user block
    items: DataFrame  # item InBlocks, one row per item block
    user_side: Side
    item_side: Side
    _indexes: dict[str, DataFrame] = field(default_factory=dict, repr=False)
    # Names these blocks in the Python workers' caches of decoded InBlocks (blocks/cache.py).
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # With label counts (build_blocks' label_counts): the number of ratings and, over every item,
    # Σ √(its ratings) and the number of items, the sums sampled 0-labels are drawn against.
    label_totals: dict[str, float] | None = None

    @property
    def num_user_blocks(self) -> int:
        return self.user_side.placement.num_blocks

    @property
    def num_item_blocks(self) -> int:
        return self.item_side.placement.num_blocks

    @property
    def user_index(self) -> DataFrame:
        """(user, block, local), built on first use and cached."""
        return self._index("user", self.user_side, self.users)

    @property
    def item_index(self) -> DataFrame:
        """(item, block, local), built on first use and cached."""
        return self._index("item", self.item_side, self.items)

    def _index(self, name: str, side: Side, inblocks: DataFrame) -> DataFrame:
        if name not in self._indexes:
            self._indexes[name] = side.index(inblocks).cache()
        return self._indexes[name]

    def unpersist(self) -> None:
        counts = [s.entities for s in (self.user_side, self.item_side) if s.entities is not None]
        for df in (self.users, self.items, *self._indexes.values(), *counts):
            df.unpersist()
        self._indexes.clear()
        tasks = max(8, 2 * (self.num_user_blocks + self.num_item_blocks))
        release_workers(self.users.sparkSession, self.key, tasks=tasks)


def _packer(other_route: tuple) -> Callable[[pa.Table], pa.Table]:
    """pack_chunks with the other side's placed blocks, as a one-argument applyInArrow body."""

    def pack(table: pa.Table) -> pa.Table:
        return pack_chunks(table, other_route)

    return pack


def _pack(chunks: DataFrame, side: int, placements: tuple[Placement, Placement], rerouted: bool) -> DataFrame:
    """One side's InBlocks from the chunks, with that side's placed entities moved to their
    blocks first unless the chunks were cut with them there (rerouted)."""
    own, other = placements[side], placements[1 - side]
    mine = chunks.filter(F.col("side") == side)
    if not rerouted and len(own.heavy):
        route = functools.partial(reroute_chunks, route=(own.heavy, own.heavy_blocks))
        mine = mine.mapInArrow(route, CHUNK_SCHEMA)
    packed = mine.groupBy("block").applyInArrow(_packer((other.heavy, other.heavy_blocks)), INBLOCK_SCHEMA)
    # Block b in partition b (partitioning.py): the half-steps cogroup by the same key.
    keyed = packed.withColumn(PART, partition_key(F.col(BLOCK), own.num_blocks))
    return keyed.repartition(own.num_blocks, PART).cache()


def _with_labels(inblocks: DataFrame, other: DataFrame, num_blocks: int) -> DataFrame:
    """inblocks with col_labels: the other side's blocks send the label counts of the rows each
    block receives (one small message per pair of blocks, once), cogrouped in place."""
    outboxes = other.select(BLOCK, "row_ptr", "out_dest", "out_ptr", "out_idx")
    messages = outboxes.mapInArrow(label_messages, LABELS_SCHEMA)
    messages = messages.withColumn(PART, partition_key(F.col("dest"), num_blocks))
    grouped = inblocks.groupBy(PART).cogroup(messages.groupBy(PART))
    labelled = grouped.applyInArrow(with_col_labels, INBLOCK_SCHEMA)
    keyed = labelled.withColumn(PART, partition_key(F.col(BLOCK), num_blocks))
    return keyed.repartition(num_blocks, PART).cache()


_TOTALS_SCHEMA = "labels double, sqrt_labels double, entities double"


def _totals(batches):
    """mapInArrow body over InBlocks: per block, Σ of its rows' ratings, of their √, and its rows."""
    for batch in batches:
        counts = [np.diff(cell(batch, "row_ptr", r, np.int64)).astype(np.float64) for r in range(batch.num_rows)]
        yield pa.RecordBatch.from_pylist(
            [{"labels": c.sum(), "sqrt_labels": np.sqrt(c).sum(), "entities": float(len(c))} for c in counts],
            schema=pa.schema([(n, pa.float64()) for n in ("labels", "sqrt_labels", "entities")]),
        )


def label_totals(items: DataFrame) -> dict[str, float]:
    """{labels, sqrt_labels, entities} summed over the item InBlocks (one small job)."""
    per_block = items.select("row_ptr").mapInArrow(_totals, _TOTALS_SCHEMA)
    row = per_block.agg(*[F.sum(n).alias(n) for n in ("labels", "sqrt_labels", "entities")]).first()
    return {n: float(row[n] or 0.0) for n in ("labels", "sqrt_labels", "entities")}


def _chunk(targets: DataFrame, dtypes: dict, rules: dict[str, tuple[int, int, Placement | None]]) -> DataFrame:
    """The ratings cut into chunks in one Arrow pass, cached: rules[id_col] = (blocks, key
    seed, placement or None to cut by the hashed block alone)."""

    def columns(id_col: str) -> tuple[list, ChunkSide]:
        """The columns one side's ratings carry to the chunking tasks, and how those find blocks and keys."""
        num_blocks, key_seed, placement = rules[id_col]
        raw, dtype = F.col(id_col), dtypes[id_col]
        value = id_value(raw, dtype).alias(f"{id_col}_id")
        wide = None if hashed_ids(dtype) else isinstance(dtype, T.LongType)
        route = (placement.heavy, placement.heavy_blocks) if placement is not None else ()
        side = ChunkSide(num_blocks, key_seed, wide, *route)
        if wide is not None:  # integers: the tasks hash them, and fewer columns cross to Arrow
            return [value], side
        block = hashed_block(raw, num_blocks).alias(f"{id_col}_block")
        return [value, block, F.xxhash64(raw, F.lit(key_seed)).alias(f"{id_col}_key")], side

    (user_cols, user_rule), (item_cols, item_rule) = columns(USER), columns(ITEM)
    ratings = targets.select(*user_cols, *item_cols, F.col(TARGET), F.col(OFFSET), F.col(WEIGHT))
    chunk = functools.partial(chunk_ratings, sides=(user_rule, item_rule))
    # A few binary cells per partition and block, kept until both sides are packed.
    return ratings.mapInArrow(chunk, CHUNK_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)


def _counted(chunks: DataFrame, side: int, id_col: str, dtype: T.DataType) -> DataFrame:
    """entity_counts' table of one side's integer ids, summed from the chunks' cells."""
    counts = chunks.filter(F.col("side") == side).mapInArrow(chunk_counts, COUNT_SCHEMA)
    per_value = counts.groupBy(VALUE).agg(F.sum(RATINGS).cast("long").alias(RATINGS))
    return per_value.select(F.col(VALUE).cast(dtype).alias(id_col), VALUE, RATINGS, F.lit(False).alias(COLLIDED))


def build_blocks(
    targets: DataFrame,
    baseline: DataFrame,
    *,
    num_user_blocks: int,
    num_item_blocks: int,
    seed: int,
    max_block_ratings: int = 10_000_000,
    num_ratings: int | None = None,
    label_counts: bool = False,
) -> Blocks:
    """Place users and items in blocks and pack both sides, with no join of ratings to ids.

    targets: (user, item, y, offset, weight); baseline: (item, baseline, ratings), one row per trained item.
    Either side gets more blocks than asked for if a block would exceed max_block_ratings.
    num_ratings, the number of targets if known, saves counting them.
    Initial factors are drawn from xxhash64(id, seed) (users) and xxhash64(id, seed + 1)
    (items), so the model does not depend on the number of blocks.
    label_counts: each InBlock also gets its cols' label counts over all blocks (col_labels),
    and the Blocks the sums of label_totals, which fresh sampled 0-labels need (train/sampled.py).

    The ratings cross to Python once: they are cut into chunks by each side's hashed
    block first; integer user ids are counted from those chunks (item counts come from
    baseline), the heaviest entities are placed, and only their ratings' cells move to the
    placed blocks (reroute.py). String user ids are counted by Spark, which also keeps the
    table that maps their hashes back to them.
    """
    spark = targets.sparkSession
    dtypes = {USER: targets.schema[USER].dataType, ITEM: targets.schema[ITEM].dataType}
    asked = {USER: (num_user_blocks, seed, None), ITEM: (num_item_blocks, seed + 1, None)}
    with phase(spark, "pack"):
        chunks = _chunk(targets, dtypes, asked)
    with phase(spark, "index"):
        if num_ratings is None:
            num_ratings = int(baseline.agg(F.sum(RATINGS)).first()[0])
        if hashed_ids(dtypes[USER]):
            per_user = entity_counts(targets, USER).cache()  # kept: it maps the hashes back to the ids
        else:
            per_user = _counted(chunks, 0, USER, dtypes[USER])
        per_item = entity_counts(baseline, ITEM, RATINGS)
        per_item = per_item.cache() if hashed_ids(dtypes[ITEM]) else per_item
        users_at, items_at = place_sides(
            [(per_user, USER, num_user_blocks), (per_item, ITEM, num_item_blocks)],
            total=num_ratings,
            max_block_ratings=max_block_ratings,
        )

    def side(id_col: str, entities: DataFrame, placement: Placement) -> Side:
        return Side(id_col, dtypes[id_col], entities if hashed_ids(dtypes[id_col]) else None, placement)

    user_side, item_side = side(USER, per_user, users_at), side(ITEM, per_item, items_at)
    with phase(spark, "pack"):
        cut_placed = (users_at.num_blocks, items_at.num_blocks) != (num_user_blocks, num_item_blocks)
        if cut_placed:
            # A side was split for max_block_ratings: its hashed blocks change, so cut again,
            # this time with the placed entities in their blocks.
            chunks.unpersist()
            placed = {USER: (users_at.num_blocks, seed, users_at), ITEM: (items_at.num_blocks, seed + 1, items_at)}
            chunks = _chunk(targets, dtypes, placed)
        users = _pack(chunks, 0, (users_at, items_at), cut_placed)
        items = _pack(chunks, 1, (users_at, items_at), cut_placed)
        users.select(BLOCK).unionByName(items.select(BLOCK)).count()  # one job caches both
        chunks.unpersist()
        totals = None
        if label_counts:
            packed = (users, items)
            users = _with_labels(packed[0], packed[1], users_at.num_blocks)
            items = _with_labels(packed[1], packed[0], items_at.num_blocks)
            users.select(BLOCK).unionByName(items.select(BLOCK)).count()
            for df in packed:
                df.unpersist()
            totals = label_totals(items)
    return Blocks(users, items, user_side, item_side, label_totals=totals)
