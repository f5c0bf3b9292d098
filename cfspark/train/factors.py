"""Block state → flat factor tables (id, features, bias) under the caller's own ids."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.codec import cell, list_rows, matrix
from cfspark.blocks.placement import VALUE
from cfspark.core.schema import BIAS, BLOCK, FEATURES
from cfspark.kernels.layout import bias_col, width

_ROWS_SCHEMA = f"{VALUE} long, {FEATURES} array<double>, {BIAS} double"


def _explode(rank: int, side: str):
    """mapInArrow body: one block's state (params) and ids → one row per entity, by its value."""
    bias = bias_col(rank, side)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for r in range(batch.num_rows):
                params = matrix(batch, "params", r, width(rank))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(cell(batch, "ids", r, np.int64)), list_rows(params[:, :rank]), pa.array(params[:, bias])],
                    names=[VALUE, FEATURES, BIAS],
                )

    return run


def factor_table(state: DataFrame, blocks: Blocks, rank: int, *, side: str) -> DataFrame:
    """(id, features, bias) of one side ("user" or "item") from its state rows and its
    InBlocks, whose ids are in the order of the state's rows: one row per block meets one row
    per block, and no table of (id, block, local) is built or joined.

    bias is b for users and c for items (0 where the item bias is off).
    """
    ids = blocks.inblocks(side).select(F.col(BLOCK).alias("dest"), "ids")
    rows = state.select("dest", "params").join(ids, "dest").mapInArrow(_explode(rank, side), _ROWS_SCHEMA)
    return blocks.side(side).with_ids(rows, FEATURES, BIAS)
