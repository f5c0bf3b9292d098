"""Setup, once per fit: cut the ratings into chunks, place users and items in blocks, pack them.

As Spark ALS's makeBlocks does, no rating is ever joined to an id index: a rating's block
on each side comes from its own ids (placement.py), and each block finds its entities'
local indices itself, while it is packed (inblock.py). Nor is an index of ids built: factor
tables and warm starts meet the blocks' own ids (Side maps those values to ids and back).

Both sides' InBlocks are packed in one exchange and cached where they were packed. The
worker that packs a block also keeps its arrays (blocks/cache.py: a file of its executor,
memory-mapped), so the half-steps run on blocks that never cross from the JVM into Python
again and only factor messages move; the cached InBlocks are the fallback wherever a worker
finds no file. What cogroups against every block takes it with block b in partition b
(Blocks.in_place): cached once for a fit with the workers' cache off, moved in its own job
for a warm start.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.blocks import cache
from cfspark.blocks.cache import START_COLUMNS, CacheKey, release_workers
from cfspark.blocks.codec import cell
from cfspark.blocks.inblock import (
    CHUNK_SCHEMA,
    INBLOCK_SCHEMA,
    LABELS_SCHEMA,
    SIDES,
    ChunkSide,
    chunk_ratings,
    label_messages,
    pack_chunks,
    with_col_labels,
)
from cfspark.blocks.partitioning import PART, partition_key, partition_keys
from cfspark.blocks.placement import (
    COLLIDED,
    VALUE,
    Placement,
    entity_counts,
    hashed_block,
    hashed_ids,
    hashed_placement,
    id_value,
    place_sides,
)
from cfspark.blocks.repeats import REPEATS, REPEATS_SCHEMA, refuse_repeats, with_repeats
from cfspark.blocks.reroute import COUNT_SCHEMA, chunk_counts, reroute_chunks
from cfspark.core.errors import RepeatedPairsError
from cfspark.core.phases import phase
from cfspark.core.plans import narrow_rows, one_job
from cfspark.core.schema import BLOCK, ITEM, OFFSET, RATINGS, TARGET, USER, WEIGHT

__all__ = ["Blocks", "build_blocks"]

log = logging.getLogger("cfspark")


@dataclass
class Side:
    """How one side's ids map to the values its blocks order them by."""

    id_col: str
    dtype: T.DataType
    entities: DataFrame | None  # entity_counts' table, cached, for hashed (string) ids; None for integers
    placement: Placement

    def with_ids(self, rows: DataFrame, *columns: str) -> DataFrame:
        """(id_col, *columns) from rows keyed by the value each entity is ordered by (VALUE)."""
        if self.entities is None:
            return rows.select(F.col(VALUE).cast(self.dtype).alias(self.id_col), *columns)
        return rows.join(self.entities.select(VALUE, self.id_col), VALUE).select(self.id_col, *columns)

    def id_of(self, value: int) -> object:
        """The id whose value this is (with_ids for one value, named in an error): integer ids
        are their own values; a hashed one is looked up in the entities' table."""
        if self.entities is None:
            return value
        return self.entities.filter(F.col(VALUE) == F.lit(value)).select(self.id_col).first()[0]

    def with_values(self, rows: DataFrame, *columns: str) -> DataFrame:
        """(VALUE, *columns) from rows keyed by id_col (with_ids' inverse), for the ids the data
        has when they are hashed. Ids of another type (an earlier model's) are taken as this
        side's type first, and one that is not of it (no integer, where the ids are) matches none."""
        typed = rows.select(F.col(self.id_col).try_cast(self.dtype).alias(self.id_col), *columns)
        typed = typed.filter(F.col(self.id_col).isNotNull())
        if self.entities is None:
            return typed.select(F.col(self.id_col).cast("long").alias(VALUE), *columns)
        return typed.join(self.entities.select(self.id_col, VALUE), self.id_col).select(VALUE, *columns)


@dataclass
class Blocks:
    """Everything training and recommendation read, built once and cached."""

    users: DataFrame  # user InBlocks, one row per user block (INBLOCK_SCHEMA and part)
    items: DataFrame  # item InBlocks, one row per item block
    user_side: Side
    item_side: Side
    # Names these blocks in the Python workers' caches of decoded InBlocks (blocks/cache.py).
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Per side, the key the workers that packed (or labelled) the blocks kept them under, or None
    # where setup kept none (the cache off or not "on"). A start then reads the InBlocks'
    # START_COLUMNS only (kept_view).
    kept: dict[str, CacheKey | None] | None = None
    # With label counts (build_blocks' label_counts): the number of ratings and, over every item,
    # Σ √(its ratings) and the number of items, the sums sampled 0-labels are drawn against.
    label_totals: dict[str, float] | None = None
    # The cached table both sides' InBlocks are read from (build's _pack), as packed: not
    # partitioned by block. None when users and items are cached in place themselves.
    packed: DataFrame | None = field(default=None, repr=False)
    # The (user, item) block counts setup was asked for. With the data and the settings they
    # decide which block each entity lands in (a side over maxBlockRatings gets more than
    # asked), so a checkpoint's state rows fit these blocks only under the same request.
    requested: tuple[int, int] = (0, 0)
    _in_place: dict[str, DataFrame] = field(default_factory=dict, repr=False)

    @property
    def num_user_blocks(self) -> int:
        return self.user_side.placement.num_blocks

    @property
    def num_item_blocks(self) -> int:
        return self.item_side.placement.num_blocks

    def inblocks(self, side: str) -> DataFrame:
        """One side's InBlocks ("user" or "item"), as packed."""
        return self.users if side == "user" else self.items

    def num_blocks(self, side: str) -> int:
        return self.num_user_blocks if side == "user" else self.num_item_blocks

    def kept_view(self, side: str, key: CacheKey | None) -> DataFrame | None:
        """One side's InBlocks as a start reads them where the workers kept its blocks at setup
        under key, the key its half-steps look them up by: START_COLUMNS and part, not the
        ratings, which need not cross into Python again. None where setup did not keep them,
        or kept them under another key (the cache's mode or budget changed since)."""
        if key is None or self.kept is None or self.kept[side] != key:
            return None
        return self.inblocks(side).select(*START_COLUMNS, PART)

    def side(self, side: str) -> Side:
        """One side's ("user" or "item") ids and placement."""
        return self.user_side if side == "user" else self.item_side

    def in_place(self, side: str, *, keep: bool = True) -> DataFrame:
        """One side's InBlocks ("user" or "item") with block b in partition b
        (partitioning.py), so that a cogroup by part leaves them where they are.

        keep: cached, built on first use, for what cogroups against every block at every
        half-step (a fit whose workers keep no blocks). Without it, for a single cogroup (a
        warm start whose workers then keep the blocks), the InBlocks move once, inside
        that cogroup's job: a cached copy would cost a job of its own and the memory."""
        inblocks, num_blocks = self.inblocks(side), self.num_blocks(side)
        if self.packed is None:  # already cached in place (with label counts)
            return inblocks
        if not keep and side not in self._in_place:
            return inblocks.repartition(num_blocks, PART)
        if side not in self._in_place:
            in_place = inblocks.repartition(num_blocks, PART).cache()
            # Filled now: planned over a cache not yet filled, a cogroup would not see its partitioning.
            in_place.select(BLOCK).count()
            self._in_place[side] = in_place
        return self._in_place[side]

    def unpersist(self) -> None:
        counts = [s.entities for s in (self.user_side, self.item_side) if s.entities is not None]
        tables = (self.users, self.items) if self.packed is None else (self.packed,)
        for df in (*tables, *self._in_place.values(), *counts):
            df.unpersist()
        self._in_place.clear()
        _release(self.users.sparkSession, self.key, self.num_user_blocks + self.num_item_blocks)


def _release(spark, key: str, num_blocks: int) -> None:
    """Ask the Python workers to drop the blocks they keep of one Blocks key, and their files,
    by a job of twice as many small tasks as there are blocks, at least 8 (release_workers)."""
    release_workers(spark, key, tasks=max(8, 2 * num_blocks))


# The packed InBlocks of both sides in one table: INBLOCK_SCHEMA, the block's partition key among
# its own side's blocks (partitioning.py), the side (0 = users, 1 = items), and a user block's
# repeated (user, item) pairs (repeats.py), which setup refuses.
PACKED_SCHEMA = f"{INBLOCK_SCHEMA}, {PART} int, side int, {REPEATS_SCHEMA}"


def _packer(
    routes: tuple[tuple, tuple], num_blocks: tuple[int, int], kept: dict[str, CacheKey | None] | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A mapInArrow body over the shuffled chunks: pack_chunks over each block of either side
    in its partition, with the other side's placed blocks; each row also gets its block's
    partition key and its side. With kept (per side, a key or None), the worker keeps each
    block it packs for the half-steps (cache.keep): the arrays are in Python already, so the
    start and the first half-step need not bring them from the JVM again.

    The shuffle puts one block in each partition, so a mapInArrow task sees whole blocks, as
    a grouped applyInArrow would, without the sort by block that the JVM does first for a
    grouped one, over rows of large cells. The blocks are still told apart here, so any
    partitioning that keeps each block's chunks in one partition packs correctly."""

    def pack(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        filled = [b for b in batches if b.num_rows]
        if not filled:  # a partition with no block
            return
        table = pa.Table.from_batches(filled)
        slots = table.column("side").to_numpy().astype(np.int64) << 32 | table.column(BLOCK).to_numpy()
        for slot in np.unique(slots):  # over the partition's blocks (one), never over ratings
            side, block = int(slot >> 32), int(slot & 0xFFFFFFFF)
            packed = pack_chunks(table.take(np.flatnonzero(slots == slot)), routes[1 - side])
            key = kept and kept[SIDES[side]]
            if key:
                cache.keep(key, block, cache.decode(packed))
            keyed = packed.append_column(PART, pa.array([partition_keys(num_blocks[side])[block]], pa.int32()))
            keyed = keyed.append_column("side", pa.array([side], pa.int32()))
            yield from with_repeats(keyed, users=side == 0).to_batches()

    return pack


def _pack(
    chunks: DataFrame,
    placements: tuple[Placement, Placement],
    cut_placed: tuple[bool, bool],
    kept: dict[str, CacheKey | None] | None = None,
) -> DataFrame:
    """Both sides' InBlocks from the chunks in one exchange, cached, with each side's placed
    entities moved to their blocks first unless the chunks were cut with them there (cut_placed);
    with kept, the workers that pack the blocks keep them (_packer).

    One shuffle of the chunks sends every block of either side to a task of its own (user
    block b to partition b, item block b to partition users + b), which packs it: the cached
    chunks are read once, and the packed rows are cached where they were packed, not shuffled
    again. The half-steps do not need them in place: they run on the blocks the Python workers
    keep (blocks/cache.py), and what cogroups against the InBlocks takes Blocks.in_place."""
    sides = []
    for s, own in enumerate(placements):
        mine = chunks.filter(F.col("side") == s)
        if not cut_placed[s] and len(own.heavy):
            route = functools.partial(reroute_chunks, route=(own.heavy, own.heavy_blocks))
            mine = mine.mapInArrow(route, CHUNK_SCHEMA)
        sides.append(mine)
    both = sides[0].unionByName(sides[1])
    users = placements[0].num_blocks
    total = users + placements[1].num_blocks
    slot = F.when(F.col("side") == 0, F.col(BLOCK)).otherwise(F.col(BLOCK) + F.lit(users))
    keyed = both.withColumn(PART, partition_key(slot, total)).repartition(total, PART)
    routes = tuple((p.heavy, p.heavy_blocks) for p in placements)
    body = _packer(routes, (users, placements[1].num_blocks), kept)
    return keyed.mapInArrow(body, PACKED_SCHEMA).cache()


def _side_view(packed: DataFrame, side: int) -> DataFrame:
    """One side's InBlocks (INBLOCK_SCHEMA and part) read from the packed table of both."""
    return packed.filter(F.col("side") == side).drop("side", *REPEATS)


def _with_labels(inblocks: DataFrame, other: DataFrame, num_blocks: int, key: CacheKey | None = None) -> DataFrame:
    """inblocks with col_labels: the other side's blocks send the label counts of the rows each
    block receives (one small message per pair of blocks, once), cogrouped in place. With a
    key, the worker that labels a block keeps it, as the pack job keeps blocks without labels."""
    outboxes = other.select(BLOCK, "row_ptr", "out_dest", "out_ptr", "out_idx")
    messages = outboxes.mapInArrow(label_messages, LABELS_SCHEMA)
    messages = messages.withColumn(PART, partition_key(F.col("dest"), num_blocks))
    grouped = inblocks.groupBy(PART).cogroup(messages.groupBy(PART))
    labelled = grouped.applyInArrow(functools.partial(_labelled, key=key), INBLOCK_SCHEMA)
    keyed = labelled.withColumn(PART, partition_key(F.col(BLOCK), num_blocks))
    return keyed.repartition(num_blocks, PART).cache()


def _labelled(inblock: pa.Table, messages: pa.Table, *, key: CacheKey | None) -> pa.Table:
    """with_col_labels, and with a key, the labelled block kept by this worker (cache.keep)."""
    out = with_col_labels(inblock, messages)
    if key is not None:
        cache.keep(key, out.column(BLOCK)[0].as_py(), cache.decode(out))
    return out


_TOTALS_SCHEMA = "labels double, sqrt_labels double, entities double"
# The most training ratings a block holds unless one entity has more (the maxBlockRatings Param's
# default, which the shipped defaults document).
MAX_BLOCK_RATINGS = 16_000_000


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


def _chunk(
    targets: DataFrame, dtypes: dict, rules: dict[str, tuple[int, int, Placement | None]], carries: tuple[str, ...]
) -> tuple[DataFrame, pa.Table]:
    """The ratings cut into chunks in one Arrow pass, cached, and every chunk's sizes (side,
    block, ratings and the most one entity has), which _placed_by_hashing sums per block:
    rules[id_col] = (blocks, key seed, placement or None to cut by the hashed block alone); of
    the offset and weight, only the columns in carries cross to Python (a null column costs
    the JVM's Arrow writer as much as a full one: 3.3 against 2.7 s for 4.2M ratings with and
    without two null columns)."""

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
    extras = [F.col(name) for name in (OFFSET, WEIGHT) if name in carries]
    ratings = targets.select(*user_cols, *item_cols, F.col(TARGET), *extras)
    chunk = functools.partial(chunk_ratings, sides=(user_rule, item_rule))
    # A few binary cells per partition and block, kept until both sides are packed, and filled
    # in a job of their own: the ratings' rows cross under narrow_rows, the large cells that
    # the next jobs send to Python under the session's Arrow byte limit.
    chunks = ratings.mapInArrow(chunk, CHUNK_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
    # The job that fills the cache also brings back every chunk's sizes (a row per partition and
    # block, no shuffle), so placing the users by hashing runs no job of its own after it (1.4 s
    # at 27.6M ratings, where nothing else runs). Planned without adaptive execution, which
    # would fill the cache in a job of its own and read it in a second.
    with narrow_rows(targets.sparkSession), one_job(targets.sparkSession):
        sizes = chunks.select("side", BLOCK, "ratings", "most").toArrow()
    return chunks, sizes


def _counted(chunks: DataFrame, side: int, id_col: str, dtype: T.DataType) -> DataFrame:
    """entity_counts' table of one side's integer ids, summed from the chunks' cells."""
    # Only the cells counting reads cross to Python, not the chunks' ratings.
    mine = chunks.filter(F.col("side") == side).select("side", "ids", "own")
    counts = mine.mapInArrow(chunk_counts, COUNT_SCHEMA)
    per_value = counts.groupBy(VALUE).agg(F.sum(RATINGS).cast("long").alias(RATINGS))
    return per_value.select(F.col(VALUE).cast(dtype).alias(id_col), VALUE, RATINGS, F.lit(False).alias(COLLIDED))


def _placed_by_hashing(sizes: pa.Table, side: int, id_col: str, num_blocks: int, total: int,
                       max_block_ratings: int) -> Placement | None:  # fmt: skip
    """hashed_placement of one side cut by its hashed blocks, from the chunks' sizes alone
    (_chunk's table: side, block, ratings, most): None when the entities must be counted."""
    mine = sizes.column("side").to_numpy() == side
    block = sizes.column(BLOCK).to_numpy()[mine]

    def summed(name: str) -> np.ndarray:
        return np.bincount(block, sizes.column(name).to_numpy()[mine], minlength=num_blocks).astype(np.int64)

    loads, bounds = summed("ratings"), summed("most")
    return hashed_placement(id_col, loads, bounds, total=total, max_block_ratings=max_block_ratings)


def build_blocks(
    targets: DataFrame,
    baseline: DataFrame,
    *,
    num_user_blocks: int,
    num_item_blocks: int,
    seed: int,
    max_block_ratings: int = MAX_BLOCK_RATINGS,
    num_ratings: int | None = None,
    label_counts: bool = False,
    carries: tuple[str, ...] = (OFFSET, WEIGHT),
) -> Blocks:
    """Place users and items in blocks and pack both sides, with no join of ratings to ids.

    targets: (user, item, y, offset, weight); baseline: (item, baseline, ratings), one row per trained item.
    Either side gets more blocks than asked for if a block would exceed max_block_ratings.
    num_ratings, the number of targets if known, saves counting them.
    Initial factors are drawn from xxhash64(id, seed) (users) and xxhash64(id, seed + 1)
    (items), so the model does not depend on the number of blocks.
    label_counts: each InBlock also gets its cols' label counts over all blocks (col_labels),
    and the Blocks the sums of label_totals, which fresh sampled 0-labels need (train/sampled.py).
    carries: the columns of targets besides y that can hold a value (Targets.carries).

    The ratings cross to Python once. The items are placed first, from baseline's counts,
    and the ratings are cut into chunks with each item in its placed block. Integer user ids
    are cut by their hashed block; when the chunks' sizes show that no user can be heavy,
    hashing places them all; else they are counted from those chunks and placed, and only
    the placed users' ratings' cells move to their blocks (reroute.py). String user ids are
    counted by Spark, which also keeps the table that maps their hashes back to them, and
    placed with the items, so the chunks are cut with both sides in their blocks.
    """
    spark = targets.sparkSession
    dtypes = {USER: targets.schema[USER].dataType, ITEM: targets.schema[ITEM].dataType}
    hashed_users = hashed_ids(dtypes[USER])

    def place(*sides: tuple[DataFrame, str, int]) -> list[Placement]:
        return place_sides(list(sides), total=num_ratings, max_block_ratings=max_block_ratings)

    with phase(spark, "index"):
        if num_ratings is None:
            num_ratings = int(baseline.agg(F.sum(RATINGS)).first()[0])
        per_item = entity_counts(baseline, ITEM, RATINGS)
        per_item = per_item.cache() if hashed_ids(dtypes[ITEM]) else per_item
        if hashed_users:  # Spark counts them, and the table maps their hashes back to them
            per_user = entity_counts(targets, USER).cache()
            users_at, items_at = place((per_user, USER, num_user_blocks), (per_item, ITEM, num_item_blocks))
        else:  # the items now, from their table; the users from the chunks, below
            (items_at,) = place((per_item, ITEM, num_item_blocks))
            users_at = None
    with phase(spark, "pack"):
        # The ratings are cut with every side placed so far in its blocks: no pass moves them again.
        cut_users = num_user_blocks if users_at is None else users_at.num_blocks
        rules = {USER: (cut_users, seed, users_at), ITEM: (items_at.num_blocks, seed + 1, items_at)}
        chunks, sizes = _chunk(targets, dtypes, rules, carries)
    if users_at is None:
        with phase(spark, "index"):
            # Users hold few ratings each: often no user can be heavy, and the chunks' sizes show it.
            per_user = None  # integer ids: the blocks keep no table of them
            users_at = _placed_by_hashing(sizes, 0, USER, num_user_blocks, num_ratings, max_block_ratings)
            if users_at is None:
                per_user = _counted(chunks, 0, USER, dtypes[USER])
                (users_at,) = place((per_user, USER, num_user_blocks))
    cut_placed = (rules[USER][2] is not None, True)  # per side: the chunks were cut with it placed

    def side(id_col: str, entities: DataFrame | None, placement: Placement) -> Side:
        return Side(id_col, dtypes[id_col], entities if hashed_ids(dtypes[id_col]) else None, placement)

    user_side, item_side = side(USER, per_user, users_at), side(ITEM, per_item, items_at)
    with phase(spark, "pack"):
        if users_at.num_blocks != cut_users:
            # The users were split for max_block_ratings: their hashed blocks change, so cut
            # again, this time with them placed too.
            chunks.unpersist()
            rules[USER] = (users_at.num_blocks, seed, users_at)
            chunks, _ = _chunk(targets, dtypes, rules, carries)
            cut_placed = (True, True)
        # One job packs and caches both sides: its one shuffle has a partition per block, and
        # it brings back each user block's repeated pairs, the estimator's duplicate check.
        # Its workers keep the blocks they pack, unless label counts change them after it: then
        # the workers that add those keep them.
        key = uuid.uuid4().hex
        keys = cache.side_keys(spark, key)
        kept = None if any(k is None or k.mode != "on" for k in keys.values()) else keys
        with one_job(spark):
            packed = _pack(chunks, (users_at, items_at), cut_placed, None if label_counts else kept)
            repeats = packed.select(*REPEATS).collect()
        chunks.unpersist()
        try:
            refuse_repeats(repeats, user_side.id_of, item_side.id_of)
        except RepeatedPairsError:
            for df in (packed, *[s.entities for s in (user_side, item_side) if s.entities is not None]):
                df.unpersist()
            if kept:
                _release(spark, key, users_at.num_blocks + items_at.num_blocks)
            raise
        users, items = _side_view(packed, 0), _side_view(packed, 1)
        totals = None
        if label_counts:
            labelled = (_with_labels(users, items, users_at.num_blocks, kept and kept["user"]),
                        _with_labels(items, users, items_at.num_blocks, kept and kept["item"]))  # fmt: skip
            users, items = labelled
            users.select(BLOCK).unionByName(items.select(BLOCK)).count()
            packed.unpersist()
            packed = None
            totals = label_totals(items)
    return Blocks(users, items, user_side, item_side, key=key, kept=kept, label_totals=totals, packed=packed,
                  requested=(num_user_blocks, num_item_blocks))  # fmt: skip
