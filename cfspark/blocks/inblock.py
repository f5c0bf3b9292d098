"""Pack one block's ratings into the arrays its half-step needs (ALS's InBlock + OutBlock).

An InBlock row holds, for one block of users (or items):
- ids: the 64-bit value of each local entity (its id, or a hash of a string id), ascending;
  local = position in ids, so the block's own index needs no table;
- keys: the hash key of each local entity, from which its initial factors are drawn;
- row_ptr, cols, y: its ratings sorted by local row (CSR), cols pointing into the
  matrix assembled from the other side's messages, so a half-step needs no lookups;
- offset: a fixed term added to each rating's score (bce's o_i), or null;
- weight: each rating's weight in the loss (a sampled negative's, a count's), or null for 1;
- src, src_ptr, col_ids: which other-side blocks send vectors here, where each
  block's rows start in the assembled matrix, and which of their entities (by value) they are;
- out_dest, out_ptr, out_idx: the OutBlock, which of its own rows each other-side
  block needs, so each factor vector travels at most once to each block;
- col_labels: each col's entity's label count over all blocks, or null: a block sees only its
  own rows' ratings, so sampled 0-labels drawn at one task's rates need the other side's counts
  (train/sampled.py); label_messages and with_col_labels fill it in once, at setup.

Both sides order every block's entities by value, so a block sends the rows another block
needs in ascending value, which is the order that block's cols expect: no ids are
exchanged per step, and neither side needs the other's local indices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cfspark.blocks.codec import arrow_rows, binary_column, cell
from cfspark.blocks.hashing import hashed_blocks, xxhash64
from cfspark.blocks.placement import route_blocks
from cfspark.kernels.order import stable_order

# Optional per-rating columns, each carried only when every rating has a value.
EXTRAS = ("offset", "weight")

INBLOCK_SCHEMA = (
    "block int, n int, ids binary, keys binary, row_ptr binary, cols binary, y binary, offset binary, weight binary, "
    "src binary, src_ptr binary, col_ids binary, out_dest binary, out_ptr binary, out_idx binary, col_labels binary"
)


def _groups(sorted_keys: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the offsets where each run starts (plus end)."""
    values, starts = np.unique(sorted_keys, return_index=True)
    return values.astype(np.int32), np.append(starts, total).astype(np.int64)


# _distinct marks values in a table of one byte per value of their range when the range is at
# most this many times the number of values (and at most DENSE_MAX_RANGE): integer ids mostly
# span a range near their count.
DENSE_SPAN = 8
DENSE_MAX_RANGE = 1 << 27


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values ascending, each value's int32 index into them), as np.unique with
    return_inverse gives them. Values of a narrow range are marked in a table indexed by
    value − min, whose running count is each value's index: no hashing and no sort. Others
    go through Arrow's hash table and a sort of the distinct values alone (measured 3 to 12
    times faster than np.unique on a block's ids, which repeat)."""
    if len(values) == 0:
        return values.astype(np.int64), np.empty(0, dtype=np.int32)
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    if span <= min(DENSE_SPAN * len(values) + 1024, DENSE_MAX_RANGE):
        shifted = (values - low).astype(np.intp) if low else values.astype(np.intp, copy=False)
        seen = np.zeros(span, dtype=np.bool_)
        seen[shifted] = True
        present = np.flatnonzero(seen)
        rank = np.cumsum(seen, dtype=np.int32) - np.int32(1)
        return (present + low).astype(values.dtype, copy=False), rank[shifted]
    encoded = pc.dictionary_encode(pa.array(values))
    found = encoded.dictionary.to_numpy(zero_copy_only=False)
    order = np.argsort(found)
    rank = np.empty(len(found), dtype=np.int32)
    rank[order] = np.arange(len(found), dtype=np.int32)
    return found[order], rank[encoded.indices.to_numpy(zero_copy_only=False)]


def pack_arrays(
    own_ids: np.ndarray,
    other_block: np.ndarray,
    other_ids: np.ndarray,
    y: np.ndarray,
    key: np.ndarray,
    offset: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The InBlock arrays for one block's ratings (pure numpy, any input order).

    Per rating: its own entity's value, the other entity's block and value, the target, the
    own entity's key, the offset and the weight. A value belongs to one block on each side.
    """
    ids, own = _distinct(np.asarray(own_ids, dtype=np.int64))
    keys = np.empty(len(ids), dtype=np.int64)
    keys[own] = key
    others, other = _distinct(np.asarray(other_ids, dtype=np.int64))
    blocks = np.empty(len(others), dtype=np.int32)
    blocks[other] = other_block
    return _pack(own, other, ids, keys, others, blocks, y, {"offset": offset, "weight": weight})


def _pack(
    own: np.ndarray,
    other: np.ndarray,
    ids: np.ndarray,
    keys: np.ndarray,
    others: np.ndarray,
    other_blocks: np.ndarray,
    y: np.ndarray,
    extras: dict[str, np.ndarray | None],
) -> dict[str, np.ndarray]:
    """pack_arrays on dense indices: own[r] into ids (ascending, with keys), other[r] into
    others (ascending, in other_blocks), one per rating; extras, the optional per-rating
    columns (EXTRAS), each an array or None."""
    n = len(ids)
    # The assembled matrix: the other side's entities as their blocks send them, by block, then value.
    by_block = np.argsort(other_blocks, kind="stable")
    col_of = np.empty(len(others), dtype=np.int32)
    col_of[by_block] = np.arange(len(others), dtype=np.int32)
    src, src_ptr = _groups(other_blocks[by_block], len(others))
    cols = col_of[other]

    # Each row's ratings in column order, so a row's gathers walk the assembled matrix
    # forwards (measured: ordering them by the other side's value instead solves a 1M-rating
    # block 3-7 % slower).
    order = stable_order(own, cols)
    cols, y = cols[order], y[order]
    extras = {name: None if v is None else v[order].astype(np.float64) for name, v in extras.items()}
    # A row's count, and which rows each other-side block needs, do not depend on the ratings'
    # order: taken from them as they came, with no gather of own and other by order (two of a
    # 5.5M-rating block's four, about 0.15 s).
    counts = np.bincount(own, minlength=n)
    needed = _distinct(other_blocks[other].astype(np.int64) * n + own)[0]
    out_dest, out_ptr = _groups(needed // n, len(needed))
    return {
        "n": n,
        "ids": ids.astype(np.int64),
        "keys": keys,
        "row_ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "cols": cols,
        "y": y.astype(np.float64),
        **{name: extras.get(name) for name in EXTRAS},
        "src": src,
        "src_ptr": src_ptr,
        "col_ids": others[by_block].astype(np.int64),
        "out_dest": out_dest,
        "out_ptr": out_ptr,
        "out_idx": (needed % n).astype(np.int32),
    }


# One partition's ratings for one block of one side (0 = users, 1 = items), as binary cells:
# ids and key per own entity (ascending ids), other_ids and other_block per other entity
# (ascending), and per rating its own and other entity's index into those, y, offset and weight;
# and, readable without Python, the chunk's number of ratings and the most of them one own
# entity has (what placing the users needs when none of them can be heavy, build.py).
CHUNK_SCHEMA = (
    "side int, block int, ratings int, most int, ids binary, key binary, own binary, other_ids binary,"
    " other_block binary, other binary, y binary, offset binary, weight binary"
)
SIDES = ("user", "item")
_CHUNK_ARROW = pa.schema(
    [("side", pa.int32()), ("block", pa.int32()), ("ratings", pa.int32()), ("most", pa.int32())]
    + [(n, pa.binary()) for n in ("ids", "key", "own", "other_ids", "other_block", "other", "y", *EXTRAS)]
)


def chunk_sizes(own: np.ndarray, num_own: int) -> dict[str, int]:
    """A chunk's ratings and the most of them one of its num_own entities has (own: each rating's entity)."""
    return {"ratings": len(own), "most": int(np.bincount(own, minlength=num_own).max(initial=0))}


@dataclass(frozen=True)
class ChunkSide:
    """How a packing task finds one side's block and initial-factor key for each rating.

    wide None: the ratings carry them as columns ({side}_block, the hashed block, and
    {side}_key); False or True: the ids are integers (32- or 64-bit), hashed here as Spark
    would, pmod(hash(id), num_blocks) and xxhash64(id, key_seed). Either way the placed
    entities (heavy, ascending, and their heavy_blocks) go to their own blocks.
    """

    num_blocks: int = 0
    key_seed: int = 0
    wide: bool | None = None
    heavy: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    heavy_blocks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))

    def blocks(self, table: pa.Table, side: str, values: np.ndarray) -> np.ndarray:
        if self.wide is None:
            hashed = table.column(f"{side}_block").to_numpy().astype(np.int32, copy=False)
        else:
            hashed = hashed_blocks(values, self.num_blocks, wide=self.wide)
        return route_blocks(values, hashed, (self.heavy, self.heavy_blocks))


# chunk_ratings cuts a partition's ratings in slices of about this many, as they arrive: the
# JVM turns the next ratings into Arrow while Python cuts the last ones, where cutting them
# all at the end left the JVM idle for the whole cut.
CUT_ROWS = 1 << 18


def _cut_slice(table: pa.Table, sides: tuple[ChunkSide, ChunkSide], parts: dict, carried: dict) -> None:
    """Cut one slice of ratings by block on each side, appending each block's columns to
    parts[(side, block)], in the slice's order; carried[name] turns False at a null."""
    shared = {"y": table.column("y").to_numpy().astype(np.float64, copy=False)}
    for name in EXTRAS:  # a column with a null anywhere in the partition is not carried
        if name in table.column_names and table.column(name).null_count == 0:
            shared[name] = table.column(name).to_numpy().astype(np.float64, copy=False)
        else:
            carried[name] = False
    values = {s: table.column(f"{s}_id").to_numpy().astype(np.int64, copy=False) for s in SIDES}
    blocks = {s: rule.blocks(table, s, values[s]) for s, rule in zip(SIDES, sides, strict=True)}
    for side, (own, other) in enumerate((SIDES, SIDES[::-1])):
        # Block numbers fit in 16 bits, which numpy's stable sort takes by radix.
        order = np.argsort(blocks[own].astype(np.int16), kind="stable")
        by_block = blocks[own][order]
        starts = np.flatnonzero(np.diff(by_block, prepend=-1))
        ends = np.append(starts[1:], len(order))
        columns = {"own": values[own][order], "other": values[other][order], "other_block": blocks[other][order]}
        if sides[side].wide is None:
            columns["key"] = table.column(f"{own}_key").to_numpy()[order]
        columns.update({name: v[order] for name, v in shared.items()})
        for lo, hi in zip(starts, ends, strict=True):  # over blocks, never over ratings
            parts.setdefault((side, int(by_block[lo])), []).append({n: v[lo:hi] for n, v in columns.items()})


def _chunk_row(side: int, block: int, slices: list[dict], rule: ChunkSide, carried: dict) -> dict:
    """One block's chunk of one side, from its slices in arrival order."""
    names = [n for n in slices[0] if all(n in s for s in slices)]
    joined = {n: np.concatenate([s[n] for s in slices]) for n in names}
    ids, own_idx = _distinct(joined["own"])
    others, other_idx = _distinct(joined["other"])
    if "key" not in joined:  # hashed once per entity, not per rating
        own_keys = xxhash64(ids, rule.key_seed, wide=rule.wide)
    else:
        own_keys = np.empty(len(ids), dtype=np.int64)
        own_keys[own_idx] = joined["key"]
    where = np.empty(len(others), dtype=np.int32)
    where[other_idx] = joined["other_block"]
    return {
        "side": side,
        "block": block,
        **chunk_sizes(own_idx, len(ids)),
        "ids": ids,
        "key": own_keys,
        "own": own_idx,
        "other_ids": others,
        "other_block": where,
        "other": other_idx,
        **{n: joined[n] if carried.get(n, True) and n in joined else None for n in ("y", *EXTRAS)},
    }


def chunk_ratings(
    batches: Iterator[pa.RecordBatch], sides: tuple[ChunkSide, ChunkSide] = (ChunkSide(), ChunkSide())
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: a partition's ratings (user_id, item_id, y, offset, weight, and the
    {side}_block and {side}_key columns sides ask for) → one row of binary cells per block
    of each side.

    *_id is the 64-bit value an entity is ordered by. Both sides are cut from one pass, so
    the ratings cross from the JVM to Arrow once, and shuffling a few large cells per
    partition costs the JVM far less than shuffling and sorting every rating as a row of its own.
    The ratings are cut in slices of CUT_ROWS as they arrive; a block's chunk holds its
    ratings in the partition's order, as one stable cut of the whole partition would.
    """
    parts: dict[tuple[int, int], list[dict]] = {}
    carried: dict[str, bool] = {}
    pending, rows = [], 0
    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            rows += batch.num_rows
        if rows >= CUT_ROWS:
            _cut_slice(pa.Table.from_batches(pending), sides, parts, carried)
            pending, rows = [], 0
    if pending:
        _cut_slice(pa.Table.from_batches(pending), sides, parts, carried)
    if not parts:  # an empty partition
        return
    for side, block in sorted(parts):  # a batch per chunk: a partition's cells may pass a column's 2 GiB
        row = _chunk_row(side, block, parts.pop((side, block)), sides[side], carried)
        yield from arrow_rows([row], _CHUNK_ARROW).to_batches()


def _merged(table: pa.Table, values: str, index: str, per_value: str, dtype) -> tuple:
    """One block's chunks merged on one side of the ratings: the distinct values (ascending),
    each rating's index into them, and the per-value column (keys, or the other side's blocks)."""
    parts, indices, base = [], [], 0
    for r in range(table.num_rows):
        part = cell(table, values, r, np.int64)
        parts.append(part)
        indices.append(cell(table, index, r, np.int32).astype(np.int64) + base)
        base += len(part)
    merged, where = _distinct(np.concatenate(parts))
    column = np.empty(len(merged), dtype=dtype)
    column[where] = np.concatenate([cell(table, per_value, r, dtype) for r in range(table.num_rows)])
    return merged, where[np.concatenate(indices)], column


_NO_ROUTE = (np.empty(0, np.int64), np.empty(0, np.int32))


def pack_chunks(table: pa.Table, other_route: tuple[np.ndarray, np.ndarray] = _NO_ROUTE) -> pa.Table:
    """One block's chunks → one InBlock row (setup's pack job calls it for each block of its
    partition, build._packer).

    other_route: (values ascending, blocks) of the other side's placed entities, whose
    blocks replace those the chunks were cut with (their hashed blocks, when setup cut
    before it placed anything); routing again an already routed block changes nothing."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([cell(table, name, r, np.float64) for r in range(table.num_rows)])

    ids, own, keys = _merged(table, "ids", "own", "key", np.int64)
    others, other, other_blocks = _merged(table, "other_ids", "other", "other_block", np.int32)
    other_blocks = route_blocks(others, other_blocks, other_route)
    extras = {name: joined(name) if table.column(name).null_count == 0 else None for name in EXTRAS}
    arrays = _pack(own, other, ids, keys, others, other_blocks, joined("y"), extras)
    row = {
        "block": pa.array([table.column("block")[0].as_py()], pa.int32()),
        "n": pa.array([arrays.pop("n")], pa.int32()),
    }
    row.update({name: binary_column([a]) for name, a in arrays.items()})
    row["col_labels"] = pa.array([None], pa.binary())
    return pa.table(row)


LABELS_SCHEMA = "dest int, src int, labels binary"
_LABELS_ARROW = pa.schema([("dest", pa.int32()), ("src", pa.int32()), ("labels", pa.binary())])


def label_messages(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over one side's InBlocks: for each block of the other side, the label
    counts of the rows it receives, in the order its messages carry them (the OutBlock's)."""
    for batch in batches:
        rows = []
        for r in range(batch.num_rows):
            block = batch.column("block")[r].as_py()
            labels = np.diff(cell(batch, "row_ptr", r, np.int64)).astype(np.float64)
            dest, ptr = cell(batch, "out_dest", r, np.int32), cell(batch, "out_ptr", r, np.int64)
            idx = cell(batch, "out_idx", r, np.int32)
            rows += [
                {"dest": int(d), "src": block, "labels": labels[idx[ptr[j] : ptr[j + 1]]]} for j, d in enumerate(dest)
            ]
        yield from arrow_rows(rows, _LABELS_ARROW).to_batches()


def with_col_labels(inblock: pa.Table, messages: pa.Table) -> pa.Table:
    """cogroup(InBlock, label_messages).applyInArrow body: the InBlock with col_labels, its
    cols' label counts stacked in src order as the half-step stacks their params."""
    if inblock.num_rows == 0:
        raise RuntimeError("label counts reached a block that has no ratings")
    src = messages.column("src").to_numpy()
    order = np.argsort(src, kind="stable")
    expected = cell(inblock, "src", 0, np.int32)
    if not np.array_equal(src[order], expected):
        raise RuntimeError(f"block expected label counts from {expected.tolist()}, got {src[order].tolist()}")
    parts = [cell(messages, "labels", int(j), np.float64) for j in order]
    labels = np.concatenate(parts) if parts else np.empty(0)
    if len(labels) != len(cell(inblock, "col_ids", 0, np.int64)):
        raise RuntimeError("label counts do not match the block's cols")
    names = [n.split()[0] for n in INBLOCK_SCHEMA.split(", ")]
    columns = {n: inblock.column(n) for n in names if n != "col_labels"}
    return pa.table({**columns, "col_labels": binary_column([labels])})


INDEX_SCHEMA = "value long, block int, local int"


def index_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body over InBlocks (block, ids): (value, block, local) for every entity."""
    for batch in batches:
        for r in range(batch.num_rows):
            ids = cell(batch, "ids", r, np.int64)
            n = len(ids)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(ids),
                    pa.array(np.full(n, batch.column("block")[r].as_py(), dtype=np.int32)),
                    pa.array(np.arange(n, dtype=np.int32)),
                ],
                names=["value", "block", "local"],
            )
