"""Warm start: the first state tables of a fit, taken from an earlier model's factors.

Users and items the earlier model knows start from its w, b, x and c; new ones start
from their hashed initial values, as in a cold start; those that have disappeared
from the data are not in the blocks, so they are dropped.

A small table of earlier factors (at most INLINE_BYTES, as automatic λ's search's mostly is)
travels inside the start's body, found by each block's own ids: no join or shuffle. Both
sides' small tables come to the driver in one job, each counted first unless its rows are
known (the search's are). A larger one is joined to the blocks' (value, block, local) rows
and cogrouped with the blocks; a saved model's table is never collected before its count
says it is small. Both key the earlier ids by the values the blocks order their ids by
(Side.with_values), so they start the same rows from the same factors.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.cache import CacheKey
from cfspark.blocks.codec import list_matrix
from cfspark.blocks.inblock import INDEX_SCHEMA, index_rows
from cfspark.blocks.partitioning import PART, partition_key
from cfspark.blocks.placement import VALUE
from cfspark.core.plans import one_job
from cfspark.core.schema import BIAS, BLOCK, FEATURES, LOCAL
from cfspark.train.arrow_bodies import OUT_SCHEMA, warm_blocks, warm_inline
from cfspark.train.step import StepConfig
from cfspark.train.trainer import cache_keys, settle_all

# Earlier factor tables of up to this many bytes (a value, the features and the bias per row:
# 349,525 rows at rank 10) go inside the start's body, pickled with its plan; over Spark
# Connect the plan travels in one message, of at most 128 MiB.
INLINE_BYTES = 32 << 20
_SIDE = "side"  # which table a row of collect_sides' one collected table is of


def fits_inline(rows: int, rank: int) -> bool:
    """Whether a table of earlier factors of this many rows is small enough to carry inline."""
    return rows * (rank + 2) * 8 <= INLINE_BYTES


def _carried(table: pa.Table, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values ascending, features, bias) of a collected (value, features, bias) table."""
    values = table.column(VALUE).to_numpy().astype(np.int64)
    order = np.argsort(values, kind="stable")
    features = list_matrix(table.column(FEATURES), rank)[order] if len(values) else np.empty((0, rank))
    bias = table.column(BIAS).to_numpy(zero_copy_only=False).astype(np.float64)[order]
    return values[order], features, bias


def _inline_sides(
    blocks: Blocks, factors: dict[str, DataFrame], rank: int, rows: dict[str, int | None]
) -> dict[str, tuple | None]:
    """Each side's earlier factors as _carried gives them, the values being those its blocks
    order their ids by; None for a table of more than INLINE_BYTES. A side's rows, where
    known, save counting its table; the sides within the bound are collected in one job."""
    small = [s for s in factors if fits_inline(factors[s].count() if rows.get(s) is None else rows[s], rank)]
    if not small:
        return dict.fromkeys(factors)
    tables = collect_sides([blocks.side(s).with_values(factors[s], FEATURES, BIAS) for s in small])
    carried = {s: _carried(table, rank) for s, table in zip(small, tables, strict=True)}
    return {s: carried.get(s) for s in factors}


def collect_sides(tables: list[DataFrame]) -> list[pa.Table]:
    """Tables of (id, features, bias), whose ids may be of other types, each collected to the
    driver as a table of those columns, all in one Spark job: a job's fixed cost is paid once.
    Each row carries its table's ids in a column of their own type, null in the others'."""
    names, types = [t.columns[0] for t in tables], [t.schema[0].dataType for t in tables]

    def tagged(j: int, table: DataFrame) -> DataFrame:
        ids = [F.col(names[j]) if k == j else F.lit(None).cast(types[k]) for k in range(len(tables))]
        return table.select(F.lit(j).alias(_SIDE), *(c.alias(f"id{k}") for k, c in enumerate(ids)), FEATURES, BIAS)

    both = functools.reduce(DataFrame.unionByName, [tagged(j, t) for j, t in enumerate(tables)]).toArrow()
    which = both.column(_SIDE).to_numpy()
    parts = [both.filter(pa.array(which == j)) for j in range(len(tables))]
    return [pa.table({names[j]: p.column(f"id{j}"), FEATURES: p.column(FEATURES), BIAS: p.column(BIAS)})
            for j, p in enumerate(parts)]  # fmt: skip


def _side(
    blocks: Blocks, side: str, factors: DataFrame, cfg: StepConfig, key: CacheKey | None, inline: tuple | None
) -> DataFrame:
    """One side's first state table (with the items' messages to the user blocks), from its
    earlier factors carried inline if given, else joined to the blocks; planned, not computed."""
    kept = blocks.kept_view(side, key)  # the workers kept the blocks at setup: the start keeps none
    key = key if kept is None else None
    if inline is not None:  # as the cold start's init pass, with the earlier factors in its body
        body = warm_inline(cfg, inline, send=side == "item", key=key)
        return (blocks.inblocks(side) if kept is None else kept).mapInArrow(body, OUT_SCHEMA)
    num_blocks = blocks.num_blocks(side)
    placed = blocks.inblocks(side).select(BLOCK, "ids").mapInArrow(index_rows, INDEX_SCHEMA)  # (value, block, local)
    earlier = placed.join(blocks.side(side).with_values(factors, FEATURES, BIAS), VALUE)
    rows = earlier.select(BLOCK, LOCAL, FEATURES, BIAS, partition_key(F.col(BLOCK), num_blocks).alias(PART))
    rows = rows.repartition(num_blocks, PART)  # as the InBlocks are: the cogroup adds no shuffle
    # Workers that keep the blocks read them only here (no cached copy in place), or read only
    # their small columns, where setup kept them.
    inblocks = blocks.in_place(side, keep=key is None) if kept is None else kept.repartition(num_blocks, PART)
    body = warm_blocks(cfg, send=side == "item", key=key)
    return inblocks.groupBy(PART).cogroup(rows.groupBy(PART)).applyInArrow(body, OUT_SCHEMA)


def warm_start(
    blocks: Blocks, user_factors: DataFrame, item_factors: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig,
    rows: tuple[int, int] | None = None,
) -> tuple[DataFrame, DataFrame]:  # fmt: skip
    """(user_out, item_out) to pass as train(start_from=...): the users' state, and the
    items' state with their messages to the user blocks. rows, the two tables' row counts
    if known, saves counting them."""
    keys = cache_keys(blocks)
    factors = {"user": user_factors, "item": item_factors}
    inline = _inline_sides(blocks, factors, user_cfg.rank, dict(zip(factors, rows or (None, None), strict=True)))
    users = _side(blocks, "user", user_factors, user_cfg, keys["user"], inline["user"])
    items = _side(blocks, "item", item_factors, item_cfg, keys["item"], inline["item"])
    # Both sides in one job; a joined side's shuffles have the block count's partitions.
    with one_job(users.sparkSession):
        user_out, item_out = settle_all(users, items)
    return user_out, item_out
