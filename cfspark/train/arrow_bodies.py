"""Arrow bodies of the half-steps: decode a block, run its numpy step (step.py), emit rows.

Every half-step outputs one table with two kinds of rows, told apart by src:
- src = −1: the block's own state (params, Adam moments, step count, losses, and the
  seconds its task spent in numpy kernels and in Arrow decoding/encoding), for dest = itself;
- src ≥ 0: a message, the rows of params that block dest needs, sent by block src.
So the next half-step of the other side reads its messages and its own state from
two such tables, and one shuffle (by dest) delivers both.

A half-step body either reads the block's InBlock from the cogroup (step_blocks) or finds
it decoded in its Python worker (step_cached, blocks/cache.py). When it does not, it
emits a single src = MISS row for the block, and the trainer runs that block again
through step_blocks: the same function on the same arrays, so the factors do not depend
on which worker held what.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from cfspark.blocks import cache
from cfspark.blocks.cache import Arrays, CacheKey
from cfspark.blocks.codec import arrow_rows, cell, list_matrix, matrix
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col
from cfspark.kernels.optimizers import AdamState
from cfspark.train.all_items import received_gram
from cfspark.train.step import StepConfig, solve_rows

STATE = -1
MISS = -2  # a block whose worker does not hold its InBlock: nothing computed, rerun from the DataFrame

# One half-step output row: a block's state (src = STATE) or a message to block `dest`.
_OUT_FIELDS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("dest", pa.int32(), "int"),
    ("src", pa.int32(), "int"),
    ("params", pa.binary(), "binary"),
    ("m", pa.binary(), "binary"),
    ("v", pa.binary(), "binary"),
    ("t", pa.int64(), "long"),
    ("data_loss", pa.float64(), "double"),
    ("reg_loss", pa.float64(), "double"),
    ("kernel_seconds", pa.float64(), "double"),
    ("codec_seconds", pa.float64(), "double"),
    ("moved", pa.float64(), "double"),
)
OUT_SCHEMA = ", ".join(f"{name} {ddl}" for name, _, ddl in _OUT_FIELDS)
_ARROW_SCHEMA = pa.schema([(name, dtype) for name, dtype, _ in _OUT_FIELDS])


def out_record(dest: int, src: int, params: np.ndarray | bytes | None, **rest: object) -> dict:
    """One OUT_SCHEMA row as a dict in field order (arrow_rows' input: binary fields hold
    arrays); the fields not given are empty (None for arrays, a zero of the field's type for numbers)."""
    empty = {"int": 0, "long": 0, "double": 0.0, "binary": None}
    record = {"dest": dest, "src": src, "params": params}
    for name, _, ddl in _OUT_FIELDS[3:]:
        record[name] = rest.pop(name, empty[ddl])
    if rest:
        raise TypeError(f"not an OUT_SCHEMA field: {sorted(rest)}")
    return record


def _rows(
    block: int,
    params: np.ndarray,
    state: AdamState | None,
    losses: tuple[float, float],
    outbox: list[tuple[int, np.ndarray]],
    seconds: tuple[float, float] = (0.0, 0.0),
    moved: float = 0.0,
) -> list[dict]:
    state_row = out_record(
        block,
        STATE,
        params,
        m=state.m if state else None,
        v=state.v if state else None,
        t=state.t if state else 0,
        data_loss=losses[0],
        reg_loss=losses[1],
        kernel_seconds=seconds[0],
        codec_seconds=seconds[1],
        moved=moved,
    )
    return [state_row] + [out_record(int(d), block, p) for d, p in outbox]


def _outbox(arrays: Arrays, params: np.ndarray, cfg: StepConfig) -> list[tuple[int, np.ndarray]]:
    """The OutBlock: for each block of the other side, the rows of params it needs.

    Under cfg.float32 they travel as float32: the receiving kernel gathers them in float32
    anyway, so the factors are the same and the shuffle moves half the bytes."""
    dest, ptr, idx = arrays["out_dest"], arrays["out_ptr"], arrays["out_idx"]
    dtype = np.float32 if cfg.float32 else np.float64
    return [(dest[j], params[idx[ptr[j] : ptr[j + 1]]].astype(dtype)) for j in range(len(dest))]


def init_blocks(cfg: StepConfig, *, send: bool, key: CacheKey | None = None):
    """mapInArrow body over InBlocks: initial state rows, plus messages when send is True.

    With a key, the worker keeps each block it decodes for the half-steps (blocks/cache.py).
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for r in range(batch.num_rows):
                block = batch.column("block")[r].as_py()
                params = initial_params(cell(batch, "keys", r, np.int64), cfg.rank, scale=cfg.init_scale, side=cfg.side)
                rows += _start_rows(cfg, block, params, functools.partial(cache.decode, batch, r), send=send, key=key)
            yield from arrow_rows(rows, _ARROW_SCHEMA).to_batches()

    return run


def _assemble(arrays: Arrays, incoming: pa.Table, width: int) -> np.ndarray:
    """Stack the messages in src order into the matrix the InBlock's cols index (float64, or
    float32 where every message is: a message's dtype is told by its length)."""
    src = incoming.column("src").to_numpy()
    order = np.argsort(src, kind="stable")
    order = order[src[order] >= 0]
    expected = arrays["src"]
    sizes = np.diff(arrays["src_ptr"])
    got = src[order]
    if not np.array_equal(got, expected):
        raise RuntimeError(f"block expected messages from {expected.tolist()}, got {got.tolist()}")
    parts = []
    for j, size, s in zip(order, sizes, got, strict=True):
        cells = incoming.column("params")[int(j)].as_buffer().size
        dtype = {8 * size * width: np.float64, 4 * size * width: np.float32}.get(cells)
        if dtype is None:
            raise RuntimeError(f"message from block {s} has {cells} bytes, expected {size} rows of {width}")
        parts.append(cell(incoming, "params", int(j), dtype).reshape(-1, width))
    return np.concatenate(parts) if parts else np.empty((0, width))


def _step(cfg: StepConfig, block: int, arrays: Arrays, incoming: pa.Table, began: float,
          scratch: dict | None = None) -> pa.Table:  # fmt: skip
    """One half-step of one block from its InBlock arrays and its incoming rows; scratch, the
    block's scratch in this worker's cache (blocks/cache.py), keeps the kernel's tiling of
    its ratings from one half-step to the next."""
    src = incoming.column("src").to_numpy()
    (state_row,) = np.flatnonzero(src == STATE)
    params = matrix(incoming, "params", int(state_row), cfg.width).copy()
    m = matrix(incoming, "m", int(state_row), cfg.width)
    v = matrix(incoming, "v", int(state_row), cfg.width)
    t = incoming.column("t")[int(state_row)].as_py()
    state = AdamState(m, v, t) if m is not None else None
    other = _assemble(arrays, incoming, cfg.width)
    gram = received_gram(incoming, cfg.width) if cfg.all_items else None  # train/all_items.py
    decoded = time.perf_counter()
    before = params.copy()  # the step may write into params
    params, kept, losses = solve_rows(
        cfg, arrays["row_ptr"], arrays["cols"], arrays["y"], arrays["offset"], arrays["weight"], other, params, state,
        gram, arrays["keys"], arrays.get("col_labels"), cache=scratch,
    )  # fmt: skip
    moved = moved_squares(arrays["row_ptr"], arrays["cols"], params - before, other) if cfg.track_moves else 0.0
    solved = time.perf_counter()
    outbox = _outbox(arrays, params, cfg)
    # The encoding of the table itself is not timed: it is what the timings ride in.
    seconds = (solved - decoded, decoded - began + time.perf_counter() - solved)
    return arrow_rows(_rows(block, params, kept, losses, outbox, seconds, moved), _ARROW_SCHEMA)


def moved_squares(row_ptr: np.ndarray, cols: np.ndarray, change: np.ndarray, other: np.ndarray,
                  chunk: int = 1 << 16) -> float:  # fmt: skip
    """Σ over the block's ratings of (Δp_row · other_col)²: how far this half-step moved the
    predictions of the block's ratings, the other side held fixed. In chunks of ratings small
    enough that the two gathered slices stay in cache while the products read them; the
    gathers are most of the cost, so they take rows with np.take and no copy beside."""
    rows = np.repeat(np.arange(len(row_ptr) - 1, dtype=np.int32), np.diff(row_ptr))
    total = 0.0
    for start in range(0, len(cols), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        d = np.einsum("ij,ij->i", np.take(change, r, axis=0), np.take(other, c, axis=0))
        total += float(d @ d)
    return total


def step_blocks(cfg: StepConfig, key: CacheKey | None = None):
    """cogroup(InBlock, state + messages).applyInArrow body: one half-step of one block.

    With a key, the worker keeps the decoded block for later half-steps (blocks/cache.py),
    and the kernel's tiling of it, as step_cached does.
    """

    def run(inblock: pa.Table, incoming: pa.Table) -> pa.Table:
        began = time.perf_counter()
        if inblock.num_rows == 0:
            raise RuntimeError("messages reached a block that has no ratings")
        block = inblock.column("block")[0].as_py()
        arrays = cache.decode(inblock)
        if key is None or not cache.keep(key, block, arrays):
            return _step(cfg, block, arrays, incoming, began)
        return _shared_step(cfg, key, block, arrays, incoming, began)

    return run


def _shared_step(cfg: StepConfig, key: CacheKey, block: int, arrays: Arrays, incoming: pa.Table,
                 began: float) -> pa.Table:  # fmt: skip
    """_step on a block this worker keeps, with its scratch: the tiling of the block's ratings
    that this worker or another of its executor built before (blocks/cache.py), else built
    here and then written beside the block's file for the others."""
    out = _step(cfg, block, arrays, incoming, began, cache.scratch(key, block))
    cache.share(key, block)
    return out


def step_cached(cfg: StepConfig, key: CacheKey):
    """groupBy(part).applyInArrow body over state + messages alone: one half-step of a block
    whose InBlock this worker holds, or a single MISS row for a block it does not."""

    def run(incoming: pa.Table) -> pa.Table:
        began = time.perf_counter()
        block = int(incoming.column("dest")[0].as_py())
        arrays = cache.lookup(key, block)
        if arrays is None:
            miss = _rows(block, np.empty((0, cfg.width)), None, (0.0, 0.0), [])
            miss[0]["src"] = MISS
            return arrow_rows(miss, _ARROW_SCHEMA)
        return _shared_step(cfg, key, block, arrays, incoming, began)

    return run


def warm_params(cfg: StepConfig, keys: np.ndarray, local: np.ndarray, features: np.ndarray | None,
                 bias: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """A block's first params: the hashed initial values, with the earlier factors (features,
    bias) of its rows local put in their place."""
    params = initial_params(keys, cfg.rank, scale=cfg.init_scale, side=cfg.side)
    if len(local):
        params[local, : cfg.rank] = features
        if cfg.learn_bias:
            params[local, bias_col(cfg.rank, cfg.side)] = bias
    return params


def _start_rows(cfg: StepConfig, block: int, params: np.ndarray, decode: Callable[..., Arrays], *, send: bool,
                key: CacheKey | None) -> list[dict]:  # fmt: skip
    """A block's first rows, cold or warm: its state, and its messages when send is True; with
    a key, the worker keeps the decoded block for the half-steps. The block is decoded only
    for one of those two, and only its OutBlock for the messages alone: a start that does
    neither needs its keys alone, and one over blocks the workers kept at setup reads the
    InBlocks' START_COLUMNS (blocks/cache.py) and keeps nothing."""
    if not send and key is None:
        return _rows(block, params, None, (0.0, 0.0), [])
    arrays = decode() if key is not None else decode(names=cache.OUTBOX_COLUMNS)
    if key is not None:
        cache.keep(key, block, arrays)
    return _rows(block, params, None, (0.0, 0.0), _outbox(arrays, params, cfg) if send else [])


def warm_blocks(cfg: StepConfig, *, send: bool, key: CacheKey | None = None):
    """cogroup(InBlock, earlier factors).applyInArrow body: a warm start's state rows.

    Rows with earlier factors (block, local, features, bias) start from them; the rest
    start from their hashed initial values, as in a cold start. With send, the block's
    messages to the other side go out too, as init_blocks sends them. With a key, the
    worker keeps the decoded block for the half-steps, as init_blocks does.
    """

    def run(inblock: pa.Table, earlier: pa.Table) -> pa.Table:
        if inblock.num_rows == 0:  # earlier factors of a block with no ratings now: nothing to start
            return arrow_rows([], _ARROW_SCHEMA)
        block = inblock.column("block")[0].as_py()
        local, features, bias = np.empty(0, np.int64), None, None
        if earlier.num_rows:
            local, features = earlier.column("local").to_numpy(), list_matrix(earlier.column("features"), cfg.rank)
            bias = earlier.column("bias").to_numpy(zero_copy_only=False)
        params = warm_params(cfg, cell(inblock, "keys", 0, np.int64), local, features, bias)
        rows = _start_rows(cfg, block, params, functools.partial(cache.decode, inblock), send=send, key=key)
        return arrow_rows(rows, _ARROW_SCHEMA)

    return run


def warm_inline(cfg: StepConfig, earlier: tuple[np.ndarray, np.ndarray, np.ndarray], *, send: bool,
                key: CacheKey | None = None):  # fmt: skip
    """mapInArrow body over InBlocks: warm_blocks' rows, from earlier factors that the body
    carries, (values ascending, features, bias), found by each block's ids (the same values):
    a small table of earlier factors reaches the blocks with no join or shuffle."""
    values, features, bias = earlier

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for r in range(batch.num_rows):
                block = batch.column("block")[r].as_py()
                ids = cell(batch, "ids", r, np.int64)
                at = np.minimum(np.searchsorted(values, ids), max(len(values) - 1, 0))
                found = values[at] == ids if len(values) else np.zeros(len(ids), dtype=bool)
                local, at = np.flatnonzero(found), at[found]
                params = warm_params(cfg, cell(batch, "keys", r, np.int64), local, features[at], bias[at])
                rows += _start_rows(cfg, block, params, functools.partial(cache.decode, batch, r), send=send, key=key)
            yield from arrow_rows(rows, _ARROW_SCHEMA).to_batches()

    return run
