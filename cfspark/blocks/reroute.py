"""Chunks counted, and the placed users' cells moved, in Arrow cells.

Setup places the items from their table first, then cuts the ratings into chunks
(inblock.chunk_ratings), each rating in its item's placed block and its user's hashed
block. Unless the chunks' sizes show that no user can be heavy (placement.hashed_placement),
the same cached chunks then give the users' rating counts, from which the driver places the
heaviest users (placement.py), and the few placed users' ratings are moved to their blocks
here (the item blocks' numbers of their users are routed as each block is packed). So the
ratings cross from the JVM to Python once, and no rating is ever shuffled as a row of its
own: counting them needs no pass of its own over the ratings.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import arrow_rows, cell
from cfspark.blocks.inblock import _CHUNK_ARROW, EXTRAS, _distinct, chunk_sizes
from cfspark.blocks.placement import route_blocks

COUNT_SCHEMA = "side int, value long, ratings long"
_COUNT_ARROW = pa.schema([("side", pa.int32()), ("value", pa.int64()), ("ratings", pa.int64())])
_PER_RATING = ("y", *EXTRAS)


def chunk_counts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over chunks: (side, value, ratings) of each entity of each chunk."""
    for batch in batches:
        for r in range(batch.num_rows):
            ids = cell(batch, "ids", r, np.int64)
            counts = np.bincount(cell(batch, "own", r, np.int32), minlength=len(ids)).astype(np.int64)
            side = np.full(len(ids), batch.column("side")[r].as_py(), dtype=np.int32)
            yield pa.RecordBatch.from_arrays([pa.array(side), pa.array(ids), pa.array(counts)], schema=_COUNT_ARROW)


Route = tuple[np.ndarray, np.ndarray]  # (values of the placed entities ascending, the block of each)


def _sub_chunk(batch: pa.RecordBatch, r: int, block: int, keep: np.ndarray) -> dict:
    """Chunk r with its block set and only the own entities that keep marks."""
    ids, key = cell(batch, "ids", r, np.int64), cell(batch, "key", r, np.int64)
    own, other = cell(batch, "own", r, np.int32), cell(batch, "other", r, np.int32)
    rows = keep[own]
    new_own = np.cumsum(keep, dtype=np.int32) - np.int32(1)
    used, other = _distinct(other[rows])  # the other entities these ratings still name, ascending
    per_rating = {name: cell(batch, name, r, np.float64) for name in _PER_RATING}
    kept_own = new_own[own[rows]]
    return {
        "side": batch.column("side")[r].as_py(),
        "block": block,
        **chunk_sizes(kept_own, int(keep.sum())),
        "ids": ids[keep],
        "key": key[keep],
        "own": kept_own,
        "other_ids": cell(batch, "other_ids", r, np.int64)[used],
        "other_block": cell(batch, "other_block", r, np.int32)[used],
        "other": other,
        **{name: None if v is None else v[rows] for name, v in per_rating.items()},
    }


def reroute_chunks(batches: Iterator[pa.RecordBatch], route: Route) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over one side's chunks cut by hashed block: the same chunks with each
    placed entity's ratings (route) in its placed block. A chunk with no placed entity
    outside its block passes through as it is. The other side's block numbers are left as
    cut: pack_chunks routes them."""
    for batch in batches:
        keep, rows = [], []
        for r in range(batch.num_rows):  # over chunks, never over ratings
            ids = cell(batch, "ids", r, np.int64)
            hashed = batch.column("block")[r].as_py()
            dest = route_blocks(ids, np.full(len(ids), hashed, dtype=np.int32), route)
            if (dest == hashed).all():
                keep.append(r)
                continue
            rows.extend(_sub_chunk(batch, r, int(b), dest == b) for b in np.unique(dest))
        if keep:  # in the output's own types: Spark may hand binary cells in as large_binary
            kept = batch.take(pa.array(keep, pa.int32()))
            columns = [kept.column(f.name).cast(f.type) for f in _CHUNK_ARROW]
            yield pa.RecordBatch.from_arrays(columns, schema=_CHUNK_ARROW)
        for row in rows:  # a batch per chunk, as chunk_ratings makes them
            yield from arrow_rows([row], _CHUNK_ARROW).to_batches()
