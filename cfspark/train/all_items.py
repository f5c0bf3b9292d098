"""The all-items model in the blockwise engine: the other side's Gramian, summed over its blocks.

The all-items half-step (kernels/implicit.py) needs G = Σ_i O_i O_iᵀ over every row of the
other side, while a block receives only the rows its ratings name. G is a sum over the other
side's blocks, so each block of the other side adds its own part, PᵀP (p × p, p = rank + 2),
from its state row, and every block of this side receives all those parts as small messages
(src = GRAM) beside its ordinary ones, in the same shuffle, and sums them in source-block order:
every block then holds the same G, bit for bit, whatever order the rows arrived in. That is
num_blocks × num_other_blocks messages of p² doubles per half-step, never a factor vector more.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from cfspark.blocks.codec import arrow_rows, matrix
from cfspark.kernels.implicit import gram

GRAM = -3  # src of a Gramian part (arrow_bodies.py: −1 is a state row, −2 a miss); t holds its source block


def gram_parts(width: int, num_blocks: int):
    """mapInArrow body over the other side's state rows: each block's PᵀP, once for every block."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for r in range(batch.num_rows):
                part = gram(matrix(batch, "params", r, width))
                source = batch.column("dest")[r].as_py()
                rows += [
                    {"dest": d, "src": GRAM, "params": part, "m": None, "v": None, "t": source, "data_loss": 0.0,
                     "reg_loss": 0.0, "kernel_seconds": 0.0, "codec_seconds": 0.0, "moved": 0.0}
                    for d in range(num_blocks)
                ]  # fmt: skip
            yield from arrow_rows(rows, batch.schema).to_batches()

    return run


def gram_messages(other_states: DataFrame, width: int, num_blocks: int, schema: str) -> DataFrame:
    """The Gramian parts of the other side's state rows, addressed to each of num_blocks blocks
    (rows of the half-step schema, to be unioned with the block's state and messages)."""
    return other_states.mapInArrow(gram_parts(width, num_blocks), schema)


def received_gram(incoming: pa.Table, width: int) -> np.ndarray:
    """The sum of the Gramian parts among a block's incoming rows, in source-block order."""
    src = incoming.column("src").to_numpy()
    rows = np.flatnonzero(src == GRAM)
    if not len(rows):
        raise RuntimeError("an all-items half-step received no Gramian of the other side")
    sources = incoming.column("t").to_numpy()[rows]
    if len(np.unique(sources)) != len(sources):
        raise RuntimeError(f"Gramian parts from blocks {sorted(sources.tolist())}: one block sent two")
    total = np.zeros((width, width))
    for r in rows[np.argsort(sources, kind="stable")]:
        total += matrix(incoming, "params", int(r), width)
    return total
