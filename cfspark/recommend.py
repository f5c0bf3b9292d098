"""Top-N for every user, blockwise, never collecting factors to the driver.

Every (user block, item block) pair is one task: a matrix product scores the pair,
items the user rated in training are set to −inf, and the best N per user are kept.
A second pass merges each user block's candidates across item blocks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.codec import blob, cell, matrix
from cfspark.kernels.layout import width as layout_width
from cfspark.kernels.losses import sigmoid
from cfspark.kernels.topn import merge, score_pair
from cfspark.schema import BASELINE, BLOCK, ITEM, LOCAL, RANK, SCORE, USER

_PAIR_SCHEMA = "ub int, ib int, n_users int, idx binary, val binary"
_ROW_SCHEMA = "block int, local int, item_block int, item_local int, rank int, score double"


def _item_baselines(item_index: DataFrame) -> DataFrame:
    """(ib, means): the baseline (μ_i or o_i) of each item block as one array by local index."""

    def pack(table: pa.Table) -> pa.Table:
        means = np.empty(table.num_rows)
        means[table.column(LOCAL).to_numpy()] = table.column(BASELINE).to_numpy()
        return pa.table(
            {
                "ib": pa.array([table.column(BLOCK)[0].as_py()], pa.int32()),
                "means": pa.array([blob(means)], pa.binary()),
            }
        )

    return item_index.select(BLOCK, LOCAL, BASELINE).groupBy(BLOCK).applyInArrow(pack, "ib int, means binary")


def _score_pairs(rank: int, n: int, exclude: str):
    width = layout_width(rank)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = {"ub": [], "ib": [], "n_users": [], "idx": [], "val": []}
            for r in range(batch.num_rows):
                ib = batch.column("ib")[r].as_py()
                users = matrix(batch, "user_params", r, width)
                # Ratings of this user block whose item lies in item block ib are excluded.
                src = cell(batch, "src", r, np.int32)
                src_ptr = cell(batch, "src_ptr", r, np.int64)
                row_ptr = cell(batch, "row_ptr", r, np.int64)
                cols = cell(batch, "cols", r, np.int32)
                rows = np.repeat(np.arange(len(row_ptr) - 1), np.diff(row_ptr))
                hit = np.flatnonzero(src == ib) if exclude != "none" else []
                if len(hit):
                    lo, hi = src_ptr[hit[0]], src_ptr[hit[0] + 1]
                    mask = (cols >= lo) & (cols < hi)
                    if exclude == "positives":
                        mask &= cell(batch, "y", r, np.float64) > 0.5
                    ex_rows, ex_cols = rows[mask], cell(batch, "col_local", r, np.int32)[cols[mask]]
                else:
                    ex_rows = ex_cols = np.empty(0, np.int64)
                idx, val = score_pair(
                    users,
                    matrix(batch, "item_params", r, width),
                    cell(batch, "means", r, np.float64),
                    ex_rows,
                    ex_cols,
                    n,
                )
                for key, value in (
                    ("ub", batch.column("ub")[r].as_py()),
                    ("ib", ib),
                    ("n_users", len(users)),
                    ("idx", blob(idx.astype(np.int32))),
                    ("val", blob(val)),
                ):
                    out[key].append(value)
            yield pa.RecordBatch.from_pydict(
                out,
                schema=pa.schema(
                    [
                        ("ub", pa.int32()),
                        ("ib", pa.int32()),
                        ("n_users", pa.int32()),
                        ("idx", pa.binary()),
                        ("val", pa.binary()),
                    ]
                ),
            )

    return run


def _merge_blocks(n: int, link: str):
    def run(table: pa.Table) -> pa.Table:
        n_users = table.column("n_users")[0].as_py()
        order = np.argsort(table.column("ib").to_numpy(), kind="stable")
        candidates = []
        for r in order.tolist():
            idx = cell(table, "idx", r, np.int32).reshape(n_users, -1)
            val = cell(table, "val", r, np.float64).reshape(n_users, -1)
            candidates.append((table.column("ib")[r].as_py(), idx, val))
        blocks, locals_, scores = merge(candidates, n)
        keep = np.isfinite(scores)
        users, ranks = np.nonzero(keep)
        return pa.table(
            {
                "block": pa.array(np.full(len(users), table.column("ub")[0].as_py(), np.int32)),
                "local": pa.array(users.astype(np.int32)),
                "item_block": pa.array(blocks[keep].astype(np.int32)),
                "item_local": pa.array(locals_[keep].astype(np.int32)),
                "rank": pa.array((ranks + 1).astype(np.int32)),
                "score": pa.array(sigmoid(scores[keep]) if link == "sigmoid" else scores[keep]),
            }
        )

    return run


def recommend_all(
    blocks: Blocks,
    user_state: DataFrame,
    item_state: DataFrame,
    *,
    rank: int,
    n: int,
    link: str = "identity",
    exclude: str = "labelled",
    baselines: DataFrame | None = None,
) -> DataFrame:
    """(user, item, rank, score): the n best items of every trained user.

    user_state and item_state hold (dest, params) rows, one per block: [W | b | 1] and
    [X | 1 | c]. The score is link(w·x + b + c + baseline_i). Training items are left out as exclude says:
    labelled (all), positives (label 1 only) or none. baselines is a (block, local,
    baseline) table of items; it defaults to the blocks' own (μ_i or o_i).
    """
    baselines = _item_baselines(blocks.item_index if baselines is None else baselines)
    inblocks = blocks.users.select(F.col("block").alias("ub"), "row_ptr", "cols", "y", "src", "src_ptr", "col_local")
    users = user_state.select(F.col("dest").alias("ub"), F.col("params").alias("user_params")).join(inblocks, "ub")
    items = item_state.select(F.col("dest").alias("ib"), F.col("params").alias("item_params")).join(baselines, "ib")
    pairs = users.crossJoin(items).mapInArrow(_score_pairs(rank, n, exclude), _PAIR_SCHEMA)
    rows = pairs.groupBy("ub").applyInArrow(_merge_blocks(n, link), _ROW_SCHEMA)
    user_ids = blocks.user_index.select(USER, BLOCK, LOCAL)
    item_ids = blocks.item_index.select(ITEM, F.col(BLOCK).alias("item_block"), F.col(LOCAL).alias("item_local"))
    return (
        rows.join(user_ids, [BLOCK, LOCAL]).join(item_ids, ["item_block", "item_local"]).select(USER, ITEM, RANK, SCORE)
    )
