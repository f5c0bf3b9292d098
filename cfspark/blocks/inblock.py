"""Pack one block's ratings into the arrays its half-step needs (ALS's InBlock + OutBlock).

An InBlock row holds, for one block of users (or items):
- keys: the hash key of each local entity, from which its initial factors are drawn;
- row_ptr, cols, y: its ratings sorted by local row (CSR), cols pointing into the
  matrix assembled from the other side's messages, so a half-step needs no lookups;
- offset: a fixed term added to each rating's score (bce's o_i), or null;
- src, src_ptr, col_local: which other-side blocks send vectors here, where each
  block's rows start in the assembled matrix, and which of their entities they are;
- out_dest, out_ptr, out_idx: the OutBlock, which of its own rows each other-side
  block needs, so each factor vector travels at most once to each block.

Both sides order the shared vectors by (block, local), so the rows one side sends
are exactly the rows the other side's cols expect, with no ids exchanged per step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import blob

PACK_INPUT = ("block", "own", "other_block", "other", "y", "key", "offset")

INBLOCK_SCHEMA = (
    "block int, n int, keys binary, row_ptr binary, cols binary, y binary, offset binary, "
    "src binary, src_ptr binary, col_local binary, out_dest binary, out_ptr binary, out_idx binary"
)


def _groups(sorted_keys: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the offsets where each run starts (plus end)."""
    values, starts = np.unique(sorted_keys, return_index=True)
    return values.astype(np.int32), np.append(starts, total).astype(np.int64)


def pack_arrays(
    own: np.ndarray,
    other_block: np.ndarray,
    other: np.ndarray,
    y: np.ndarray,
    key: np.ndarray,
    offset: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The InBlock arrays for one block's ratings (pure numpy, any input order)."""
    order = np.lexsort((other, other_block, own))
    own, other_block, other, y, key = own[order], other_block[order], other[order], y[order], key[order]
    offset = None if offset is None else offset[order].astype(np.float64)
    n = int(own[-1]) + 1
    counts = np.bincount(own, minlength=n)
    if np.any(counts == 0):
        raise ValueError("local ids of a block must be dense: every entity needs a rating")
    keys = np.empty(n, dtype=np.int64)
    keys[own] = key

    width = np.int64(other.max()) + 1
    shared, cols = np.unique(other_block.astype(np.int64) * width + other, return_inverse=True)
    src, src_ptr = _groups(shared // width, len(shared))

    needed = np.unique(other_block.astype(np.int64) * n + own)
    out_dest, out_ptr = _groups(needed // n, len(needed))
    return {
        "n": n,
        "keys": keys,
        "row_ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "cols": cols.astype(np.int32),
        "y": y.astype(np.float64),
        "offset": offset,
        "src": src,
        "src_ptr": src_ptr,
        "col_local": (shared % width).astype(np.int32),
        "out_dest": out_dest,
        "out_ptr": out_ptr,
        "out_idx": (needed % n).astype(np.int32),
    }


def pack_block(table: pa.Table) -> pa.Table:
    """groupBy('block').applyInArrow body: one block's rating rows → one InBlock row."""
    columns = [table.column(c) for c in PACK_INPUT[1:]]
    offset = columns.pop()
    arrays = pack_arrays(*(c.to_numpy() for c in columns), offset=None if offset.null_count else offset.to_numpy())
    row = {
        "block": pa.array([table.column("block")[0].as_py()], pa.int32()),
        "n": pa.array([arrays.pop("n")], pa.int32()),
    }
    row.update({name: pa.array([blob(a)], pa.binary()) for name, a in arrays.items()})
    return pa.table(row)
