"""Block state → flat factor tables (id, features, bias) under the caller's own ids."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from cfspark.blocks.codec import list_rows, matrix
from cfspark.core.schema import BIAS, BLOCK, FEATURES, LOCAL
from cfspark.kernels.layout import bias_col, width

_ROWS_SCHEMA = "block int, local int, features array<double>, bias double"


def _explode(rank: int, side: str):
    """mapInArrow body: one state row (a block's params) → one row per entity."""
    bias = bias_col(rank, side)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for r in range(batch.num_rows):
                params = matrix(batch, "params", r, width(rank))
                n = len(params)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(np.full(n, batch.column("dest")[r].as_py(), np.int32)),
                        pa.array(np.arange(n, dtype=np.int32)),
                        list_rows(params[:, :rank]),
                        pa.array(params[:, bias]),
                    ],
                    names=[BLOCK, LOCAL, FEATURES, BIAS],
                )

    return run


def factor_table(state: DataFrame, index: DataFrame, id_col: str, rank: int, *, side: str) -> DataFrame:
    """(id, features, bias) from a side's state rows and its (id, block, local) index.

    bias is b for users and c for items (0 where the item bias is off).
    """
    rows = state.select("dest", "params").mapInArrow(_explode(rank, side), _ROWS_SCHEMA)
    return rows.join(index.select(id_col, BLOCK, LOCAL), [BLOCK, LOCAL]).select(id_col, FEATURES, BIAS)
