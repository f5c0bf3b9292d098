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

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import blob, cell

INBLOCK_SCHEMA = (
    "block int, n int, keys binary, row_ptr binary, cols binary, y binary, offset binary, "
    "src binary, src_ptr binary, col_local binary, out_dest binary, out_ptr binary, out_idx binary"
)


def _groups(sorted_keys: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the offsets where each run starts (plus end)."""
    values, starts = np.unique(sorted_keys, return_index=True)
    return values.astype(np.int32), np.append(starts, total).astype(np.int64)


def _sort_order(*keys: np.ndarray) -> np.ndarray:
    """The order that sorts by keys[0], then keys[1], ...: one argsort of the keys packed into
    an int64 when their bit widths fit (measured 2.4x faster than lexsort), else lexsort."""
    bits = [int(k.max(initial=0)).bit_length() for k in keys]
    if sum(bits) > 63 or any(k.min(initial=0) < 0 for k in keys):
        return np.lexsort(keys[::-1])
    packed = np.zeros(len(keys[0]), dtype=np.int64)
    for k, b in zip(keys, bits, strict=True):
        packed <<= b
        packed |= k
    return np.argsort(packed, kind="stable")


def pack_arrays(
    own: np.ndarray,
    other_block: np.ndarray,
    other: np.ndarray,
    y: np.ndarray,
    key: np.ndarray,
    offset: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The InBlock arrays for one block's ratings (pure numpy, any input order)."""
    order = _sort_order(own, other_block, other)
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


# One partition's ratings for one block of one side (0 = users, 1 = items), as binary
# cells; key_own and key hold one key per own entity, not one per rating.
CHUNK_SCHEMA = (
    "side int, block int, own binary, other_block binary, other binary, y binary, offset binary,"
    " key_own binary, key binary"
)
SIDES = ("user", "item")
_CHUNK_DTYPES = {"own": np.int32, "other_block": np.int32, "other": np.int32, "y": np.float64, "offset": np.float64}
_CHUNK_ARROW = pa.schema(
    [("side", pa.int32()), ("block", pa.int32())] + [(n, pa.binary()) for n in (*_CHUNK_DTYPES, "key_own", "key")]
)


def chunk_ratings(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: a partition's ratings (user_block, user_local, user_key, the same
    for items, y, offset) → one row of binary cells per block of each side.

    Both sides are cut from one pass, so the ratings cross from the JVM to Arrow once.
    Shuffling a few large cells per partition then costs the JVM far less than shuffling
    and sorting every rating as a row of its own, which is what grouping the rows would do.
    """
    batches = [b for b in batches if b.num_rows]
    if not batches:  # an empty partition
        return
    table = pa.Table.from_batches(batches)
    offset = table.column("offset")
    shared = {"y": table.column("y").to_numpy().astype(np.float64, copy=False)}
    if offset.null_count == 0:
        shared["offset"] = offset.to_numpy().astype(np.float64, copy=False)
    rows = []
    for side, (own, other) in enumerate((SIDES, SIDES[::-1])):
        block = table.column(f"{own}_block").to_numpy()
        order = np.argsort(block, kind="stable")
        blocks, starts = np.unique(block[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        columns = {
            "own": table.column(f"{own}_local").to_numpy()[order].astype(np.int32, copy=False),
            "other_block": table.column(f"{other}_block").to_numpy()[order].astype(np.int32, copy=False),
            "other": table.column(f"{other}_local").to_numpy()[order].astype(np.int32, copy=False),
            **{name: values[order] for name, values in shared.items()},
        }
        key = table.column(f"{own}_key").to_numpy()[order]
        for b, lo, hi in zip(blocks, starts, ends, strict=True):  # over blocks, never over ratings
            own_entities, first = np.unique(columns["own"][lo:hi], return_index=True)
            cells = {name: blob(columns[name][lo:hi]) if name in columns else None for name in _CHUNK_DTYPES}
            rows.append(
                {"side": side, "block": int(b), **cells, "key_own": blob(own_entities), "key": blob(key[lo:hi][first])}
            )
    yield pa.RecordBatch.from_pylist(rows, schema=_CHUNK_ARROW)


def pack_chunks(table: pa.Table) -> pa.Table:
    """groupBy('block').applyInArrow body: one block's chunks → one InBlock row."""

    def joined(name: str, dtype) -> np.ndarray:
        return np.concatenate([cell(table, name, r, dtype) for r in range(table.num_rows)])

    own = joined("own", np.int32)
    keys = np.empty(int(own.max()) + 1, dtype=np.int64)
    keys[joined("key_own", np.int32)] = joined("key", np.int64)
    has_offset = table.column("offset").null_count == 0
    arrays = pack_arrays(
        own,
        joined("other_block", np.int32),
        joined("other", np.int32),
        joined("y", np.float64),
        keys[own],
        offset=joined("offset", np.float64) if has_offset else None,
    )
    row = {
        "block": pa.array([table.column("block")[0].as_py()], pa.int32()),
        "n": pa.array([arrays.pop("n")], pa.int32()),
    }
    row.update({name: pa.array([blob(a)], pa.binary()) for name, a in arrays.items()})
    return pa.table(row)
