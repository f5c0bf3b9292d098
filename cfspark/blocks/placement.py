"""Which block each user (or item) goes to, decided from per-entity rating counts (or a bound on them) alone.

Most entities are hashed, block = pmod(murmur3(id), n), as Spark ALS hashes them. Under
popularity skew a few entities hold a large share of the ratings, and hashing them can
leave one block, and so one task of every half-step, far heavier than the rest. So the
heaviest entities (each above HEAVY_SHARE of a mean block's load, and above 1 / MAX_HEAVY
of all ratings, so there are at most MAX_HEAVY of them) are taken to the driver and placed
greedily, largest first into the least loaded block, on top of the hashed load of
everything else. A rating then finds its block from its own id alone: the hash, unless
its entity is one of the few placed ones.

Inside a block, entities are ordered by one 64-bit value per id: the id itself for
integer ids, a hash of it for strings. Both sides order by the same value, which is what
lets each block find its own and the other side's positions without an index table.
Two strings with one hash would be one entity, so the counts check for that.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.core.errors import InputError
from cfspark.core.plans import one_job
from cfspark.core.schema import RATINGS

MAX_SPLIT_BLOCKS = 4096  # splitting a side for maxBlockRatings stops here, whatever the loads
# An entity is placed rather than hashed when it holds more than this share of a mean
# block's load, and more than 1 / MAX_HEAVY of all ratings. The more load is placed, the
# less the hashed rest weighs on the block that takes the heaviest entity (measured on 1M
# ratings with item skew 3 in 16 item blocks: a share of 0.01 leaves the heaviest block at
# 1.23 × the mean load, 0.001 at 1.00 ×, hashing alone at 1.58 ×).
HEAVY_SHARE = 0.001
MAX_HEAVY = 8192
ID_HASH_SEED = 0x5EED  # string ids are ordered by xxhash64(id, ID_HASH_SEED)
ID_BITS = 64  # the width of that hash; narrowed only by tests, to force collisions

VALUE, COLLIDED = "value", "collided"
_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)

log = logging.getLogger("cfspark")


def hashed_ids(dtype: T.DataType) -> bool:
    """Whether ids of this type are ordered by a hash of them (strings) rather than themselves."""
    return not isinstance(dtype, _INTEGRAL)


def id_value(col: Column, dtype: T.DataType) -> Column:
    """The 64-bit value an entity is ordered by inside its block: the id, or its hash."""
    if not hashed_ids(dtype):
        return col.cast("long")
    h = F.xxhash64(col, F.lit(ID_HASH_SEED))
    return h if ID_BITS >= 64 else F.pmod(h, F.lit(2**ID_BITS))


def hashed_block(col: Column, num_blocks: int) -> Column:
    return F.pmod(F.hash(col), F.lit(num_blocks)).cast("int")


def entity_counts(table: DataFrame, id_col: str, ratings: str | None = None) -> DataFrame:
    """(id_col, value, ratings, collided): one row per value, with its number of ratings.

    table holds one row per rating, or (ratings given) one row per id with its count in
    that column. For hashed ids, id_col is the smallest id with that value and collided
    says that another id shares it. Integer ids are their own values and never collide.
    """
    dtype = table.schema[id_col].dataType
    value = id_value(F.col(id_col), dtype)
    count = F.count(F.lit(1)) if ratings is None else F.sum(ratings)
    if not hashed_ids(dtype):
        counts = table.groupBy(id_col).agg(count.alias(RATINGS)) if ratings is None else table
        return counts.select(id_col, value.alias(VALUE), F.col(RATINGS).cast("long"), F.lit(False).alias(COLLIDED))
    counts = table.groupBy(value.alias(VALUE)).agg(
        F.min(id_col).alias(id_col), count.alias(RATINGS), (F.min(id_col) != F.max(id_col)).alias(COLLIDED)
    )
    return counts.select(id_col, VALUE, F.col(RATINGS).cast("long"), COLLIDED)


def check_distinct(entities: DataFrame, id_col: str, collided: int | None = None) -> None:
    """Raise InputError if two ids of entity_counts' table share one value (collided: the
    count of such values, if already known)."""
    if collided is None:
        collided = entities.filter(F.col(COLLIDED)).count()
    if not collided:
        return
    row = entities.filter(F.col(COLLIDED)).orderBy(VALUE).first()
    raise InputError(
        f"{collided} {id_col} hash value(s) are shared by more than one {id_col} id, e.g. {row[id_col]!r} "
        f"and another id both hash to {row[VALUE]}: cfspark orders string ids by a {ID_BITS}-bit hash, "
        f"and cannot tell these apart. Use integer ids (input.id_type = long) or rename one of them"
    )


@dataclass(frozen=True)
class Placement:
    """One side's blocks: the placed entities, and the resulting ratings per block."""

    num_blocks: int
    heavy: np.ndarray  # int64: values of the placed entities, ascending
    heavy_blocks: np.ndarray  # int32: the block of each
    loads: np.ndarray  # int64: ratings per block, as placed
    hashed_loads: np.ndarray  # int64: ratings per block had every entity been hashed
    heaviest: int  # the most ratings of any one entity, or a bound on it (hashed_placement)


def heavy_threshold(total: int, num_blocks: int) -> float:
    """The ratings above which an entity is placed by load rather than hashed."""
    return max(HEAVY_SHARE * total / num_blocks, total / MAX_HEAVY)


def route_blocks(values: np.ndarray, blocks: np.ndarray, route: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """blocks, with the block of each placed entity (route = (values ascending, blocks)) put in."""
    heavy, heavy_blocks = route
    if len(heavy) == 0:
        return blocks
    pos = np.minimum(np.searchsorted(heavy, values), len(heavy) - 1)
    hit = heavy[pos] == values
    if not hit.any():
        return blocks
    routed = blocks.copy()
    routed[hit] = heavy_blocks[pos[hit]]
    return routed


def place(per_block: dict[int, int], heavy: list[tuple[int, int, int]], num_blocks: int, heaviest: int) -> Placement:
    """Greedy placement of the heaviest entities on top of the hashed load of the rest.

    per_block: hashed block → ratings of all its entities; heavy: (value, ratings, hashed
    block) of the entities to place, heaviest first. Kept only if it lowers the heaviest block.
    """
    hashed = np.zeros(num_blocks, dtype=np.int64)
    for b, load in per_block.items():
        hashed[b] = load
    loads = hashed.copy()
    for _, ratings, b in heavy:
        loads[b] -= ratings
    chosen = np.empty(len(heavy), dtype=np.int32)
    for j, (_, ratings, _) in enumerate(heavy):  # heaviest first; ties go to the lowest block
        chosen[j] = int(np.argmin(loads))
        loads[chosen[j]] += ratings
    if not heavy or loads.max() >= hashed.max():
        empty = np.empty(0, dtype=np.int64)
        return Placement(num_blocks, empty, empty.astype(np.int32), hashed, hashed, heaviest)
    values = np.array([t[0] for t in heavy], dtype=np.int64)
    order = np.argsort(values)
    return Placement(num_blocks, values[order], chosen[order], loads, hashed, heaviest)


def hashed_placement(
    id_col: str, loads: np.ndarray, bounds: np.ndarray, *, total: int, max_block_ratings: int
) -> Placement | None:
    """The placement of a side whose counts need not be taken: every entity hashed, when no
    entity can be heavy. loads: ratings per hashed block; bounds: per block, a bound on any
    one of its entities' ratings (the sum, over the block's chunks, of the most one entity
    has in each). At or under heavy_threshold no entity is placed by load, which is what
    counting them and place_sides would find; None when a bound is over it, or a block over
    max_block_ratings, and only the counts can decide."""
    num_blocks = len(loads)
    heaviest = int(bounds.max(initial=0))
    threshold = heavy_threshold(total, num_blocks)
    if heaviest > threshold or loads.max(initial=0) > max_block_ratings:
        log.info("%s ids counted: the chunks bound one's ratings by %d (heavy over %.0f), a block's load by %d",
                 id_col, heaviest, threshold, int(loads.max(initial=0)))  # fmt: skip
        return None
    placement = place(dict(enumerate(loads.tolist())), [], num_blocks, heaviest)
    _log_balance(id_col, placement)
    return placement


def _summary(entities: DataFrame, id_col: str, num_blocks: int, side: int, total: int) -> DataFrame:
    """One row per hashed block, all the driver places one side from: the block's load, its
    heaviest entity, its collided values, and (value, ratings) of its entities over
    heavy_threshold. One aggregate, so the entity table is computed once."""
    heavy = F.when(F.col(RATINGS) > F.lit(heavy_threshold(total, num_blocks)), F.struct(VALUE, RATINGS))
    return entities.groupBy(hashed_block(F.col(id_col), num_blocks).alias("block")).agg(
        F.lit(side).alias("side"),
        F.sum(RATINGS).cast("long").alias("load"),
        F.max(RATINGS).cast("long").alias("heaviest"),
        F.sum(F.col(COLLIDED).cast("long")).alias("collided"),
        F.collect_list(heavy).alias("heavy"),  # nulls, the light entities, are left out
    )


def place_sides(sides: list[tuple[DataFrame, str, int]], *, total: int, max_block_ratings: int) -> list[Placement]:
    """Place each side's entities (entity_counts tables, with an asked-for block count),
    total being the number of ratings.

    One Spark job reads what all sides need. A side whose heaviest block would hold more
    than max_block_ratings ratings gets more blocks (its count times ⌈load / limit⌉) and
    is placed again. One entity's ratings always share a block, so no block can get
    below the heaviest entity.
    """
    placements: dict[int, Placement] = {}
    pending = {s: n for s, (_, _, n) in enumerate(sides)}
    while pending:
        queries = [_summary(sides[s][0], sides[s][1], n, s, total) for s, n in pending.items()]
        union = queries[0]
        for q in queries[1:]:
            union = union.unionByName(q)
        with one_job(union.sparkSession):  # its aggregates' shuffles in one job, not one job each
            rows = union.collect()
        for s, n in list(pending.items()):
            entities, id_col, _ = sides[s]
            blocks = [r for r in rows if r["side"] == s]
            check_distinct(entities, id_col, sum(r["collided"] for r in blocks))
            heaviest = max((r["heaviest"] for r in blocks), default=0)
            top = sorted(
                ((h[VALUE], h[RATINGS], r["block"]) for r in blocks for h in r["heavy"]), key=lambda t: (-t[1], t[0])
            )
            placement = place({r["block"]: r["load"] for r in blocks}, top, n, heaviest)
            load = int(placement.loads.max(initial=0))
            if heaviest > max_block_ratings:
                log.warning("one %s has %d ratings, over max_block_ratings = %d", id_col, heaviest, max_block_ratings)
            if load <= max(max_block_ratings, heaviest) or n >= MAX_SPLIT_BLOCKS:
                placements[s] = placement
                del pending[s]
                _log_balance(id_col, placement)
                continue
            split = min(MAX_SPLIT_BLOCKS, n * math.ceil(load / max_block_ratings))
            log.warning("a %s block would hold %d ratings: splitting %d blocks into %d", id_col, load, n, split)
            pending[s] = split
    return [placements[s] for s in range(len(sides))]


def _log_balance(id_col: str, p: Placement) -> None:
    mean = p.loads.sum() / p.num_blocks
    if mean:
        log.info(
            "%s blocks: %d, heaviest %.2f × the mean load (hashing alone: %.2f ×), %d placed by load",
            id_col, p.num_blocks, p.loads.max() / mean, p.hashed_loads.max() / mean, len(p.heavy),
        )  # fmt: skip
