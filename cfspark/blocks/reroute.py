"""Chunks cut by hashed block, counted and then moved to the placed blocks, in Arrow cells.

Setup cuts the ratings into chunks (inblock.chunk_ratings) before any entity is placed,
each rating in the hashed block of its user and of its item. The same cached chunks then
give each side's per-entity rating counts, from which the driver places the heaviest
entities (placement.py), and the few placed entities' ratings are moved to their blocks
here. So the ratings cross from the JVM to Python once, and no rating is ever shuffled as
a row of its own: counting them needs no pass of its own over the ratings.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import blob, cell
from cfspark.blocks.inblock import _CHUNK_ARROW, EXTRAS, _distinct
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


def _sub_chunk(batch: pa.RecordBatch, r: int, block: int, keep: np.ndarray | None, other_blocks: np.ndarray) -> dict:
    """Chunk r with its block set, only the own entities that keep marks (None: all of them),
    and the other side's blocks replaced by other_blocks."""
    ids, key = cell(batch, "ids", r, np.int64), cell(batch, "key", r, np.int64)
    own, other = cell(batch, "own", r, np.int32), cell(batch, "other", r, np.int32)
    other_ids = cell(batch, "other_ids", r, np.int64)
    per_rating = {name: cell(batch, name, r, np.float64) for name in _PER_RATING}
    if keep is not None:
        rows = keep[own]
        new_own = np.cumsum(keep, dtype=np.int32) - np.int32(1)
        ids, key, own = ids[keep], key[keep], new_own[own[rows]]
        used, other = _distinct(other[rows])  # the other entities these ratings still name, ascending
        other_ids, other_blocks = other_ids[used], other_blocks[used]
        per_rating = {name: None if v is None else v[rows] for name, v in per_rating.items()}
    return {
        "side": batch.column("side")[r].as_py(),
        "block": block,
        "ids": blob(ids),
        "key": blob(key),
        "own": blob(own),
        "other_ids": blob(other_ids),
        "other_block": blob(other_blocks),
        "other": blob(other),
        **{name: blob(v) for name, v in per_rating.items()},
    }


def reroute_chunks(batches: Iterator[pa.RecordBatch], routes: tuple[Route, Route]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over chunks cut by hashed block: the same chunks with each placed
    entity's ratings in its placed block (routes[side] for side 0 = users, 1 = items), and
    the other side's blocks routed too, so the messages line up."""
    for batch in batches:
        rows = []
        for r in range(batch.num_rows):  # over chunks, never over ratings
            side, hashed = batch.column("side")[r].as_py(), batch.column("block")[r].as_py()
            ids = cell(batch, "ids", r, np.int64)
            other_ids = cell(batch, "other_ids", r, np.int64)
            other_blocks = route_blocks(other_ids, cell(batch, "other_block", r, np.int32), routes[1 - side])
            dest = route_blocks(ids, np.full(len(ids), hashed, dtype=np.int32), routes[side])
            targets = np.unique(dest)
            if len(targets) == 1:
                rows.append(_sub_chunk(batch, r, int(targets[0]), None, other_blocks))
                continue
            rows.extend(_sub_chunk(batch, r, int(b), dest == b, other_blocks) for b in targets)
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=_CHUNK_ARROW)
