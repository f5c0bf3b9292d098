"""Arrow bodies of the half-steps: decode a block, run its numpy step (step.py), emit rows.

Every half-step outputs one table with two kinds of rows, told apart by src:
- src = −1: the block's own state (params, Adam moments, step count, losses, and the
  seconds its task spent in numpy kernels and in Arrow decoding/encoding), for dest = itself;
- src ≥ 0: a message, the rows of params that block dest needs, sent by block src.
So the next half-step of the other side reads its messages and its own state from
two such tables, and one shuffle (by dest) delivers both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import blob, cell, list_matrix, matrix
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col
from cfspark.kernels.optimizers import AdamState
from cfspark.train.step import StepConfig, solve_rows

STATE = -1

OUT_SCHEMA = (
    "dest int, src int, params binary, m binary, v binary, t long, data_loss double, reg_loss double,"
    " kernel_seconds double, codec_seconds double"
)

_ARROW_SCHEMA = pa.schema(
    [
        ("dest", pa.int32()),
        ("src", pa.int32()),
        ("params", pa.binary()),
        ("m", pa.binary()),
        ("v", pa.binary()),
        ("t", pa.int64()),
        ("data_loss", pa.float64()),
        ("reg_loss", pa.float64()),
        ("kernel_seconds", pa.float64()),
        ("codec_seconds", pa.float64()),
    ]
)


def _rows(
    block: int,
    params: np.ndarray,
    state: AdamState | None,
    losses: tuple[float, float],
    outbox: list[tuple[int, np.ndarray]],
    seconds: tuple[float, float] = (0.0, 0.0),
) -> list[dict]:
    rows = [
        {
            "dest": block,
            "src": STATE,
            "params": blob(params),
            "m": blob(state.m if state else None),
            "v": blob(state.v if state else None),
            "t": state.t if state else 0,
            "data_loss": losses[0],
            "reg_loss": losses[1],
            "kernel_seconds": seconds[0],
            "codec_seconds": seconds[1],
        }
    ]
    rows += [
        {
            "dest": int(d),
            "src": block,
            "params": blob(p),
            "m": None,
            "v": None,
            "t": 0,
            "data_loss": 0.0,
            "reg_loss": 0.0,
            "kernel_seconds": 0.0,
            "codec_seconds": 0.0,
        }
        for d, p in outbox
    ]
    return rows


def _outbox(inblock: pa.Table | pa.RecordBatch, r: int, params: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The OutBlock: for each block of the other side, the rows of params it needs."""
    dest = cell(inblock, "out_dest", r, np.int32)
    ptr = cell(inblock, "out_ptr", r, np.int64)
    idx = cell(inblock, "out_idx", r, np.int32)
    return [(dest[j], params[idx[ptr[j] : ptr[j + 1]]]) for j in range(len(dest))]


def init_blocks(cfg: StepConfig, *, send: bool):
    """mapInArrow body over InBlocks: initial state rows, plus messages when send is True."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for r in range(batch.num_rows):
                block = batch.column("block")[r].as_py()
                params = initial_params(cell(batch, "keys", r, np.int64), cfg.rank, scale=cfg.init_scale, side=cfg.side)
                outbox = _outbox(batch, r, params) if send else []
                rows += _rows(block, params, None, (0.0, 0.0), outbox)
            yield pa.RecordBatch.from_pylist(rows, schema=_ARROW_SCHEMA)

    return run


def _assemble(inblock: pa.Table, incoming: pa.Table, width: int) -> np.ndarray:
    """Stack the messages in src order into the matrix the InBlock's cols index."""
    src = incoming.column("src").to_numpy()
    order = np.argsort(src, kind="stable")
    order = order[src[order] >= 0]
    expected = cell(inblock, "src", 0, np.int32)
    sizes = np.diff(cell(inblock, "src_ptr", 0, np.int64))
    got = src[order]
    if not np.array_equal(got, expected):
        raise RuntimeError(f"block expected messages from {expected.tolist()}, got {got.tolist()}")
    parts = [matrix(incoming, "params", int(j), width) for j in order]
    for part, size, s in zip(parts, sizes, got, strict=True):
        if len(part) != size:
            raise RuntimeError(f"message from block {s} has {len(part)} rows, expected {size}")
    return np.concatenate(parts) if parts else np.empty((0, width))


def step_blocks(cfg: StepConfig):
    """cogroup(InBlock, state + messages).applyInArrow body: one half-step of one block."""

    def run(inblock: pa.Table, incoming: pa.Table) -> pa.Table:
        began = time.perf_counter()
        if inblock.num_rows == 0:
            raise RuntimeError("messages reached a block that has no ratings")
        src = incoming.column("src").to_numpy()
        (state_row,) = np.flatnonzero(src == STATE)
        params = matrix(incoming, "params", int(state_row), cfg.width).copy()
        m = matrix(incoming, "m", int(state_row), cfg.width)
        v = matrix(incoming, "v", int(state_row), cfg.width)
        t = incoming.column("t")[int(state_row)].as_py()
        state = AdamState(m, v, t) if m is not None else None

        row_ptr, cols = cell(inblock, "row_ptr", 0, np.int64), cell(inblock, "cols", 0, np.int32)
        y, offset = cell(inblock, "y", 0, np.float64), cell(inblock, "offset", 0, np.float64)
        weight = cell(inblock, "weight", 0, np.float64)
        other = _assemble(inblock, incoming, cfg.width)
        decoded = time.perf_counter()
        params, keep, losses = solve_rows(cfg, row_ptr, cols, y, offset, weight, other, params, state)
        block = inblock.column("block")[0].as_py()
        solved = time.perf_counter()
        outbox = _outbox(inblock, 0, params)
        # The encoding of the table itself is not timed: it is what the timings ride in.
        seconds = (solved - decoded, decoded - began + time.perf_counter() - solved)
        return pa.Table.from_pylist(_rows(block, params, keep, losses, outbox, seconds), schema=_ARROW_SCHEMA)

    return run


def warm_blocks(cfg: StepConfig, *, send: bool):
    """cogroup(InBlock, earlier factors).applyInArrow body: a warm start's state rows.

    Rows with earlier factors (block, local, features, bias) start from them; the rest
    start from their hashed initial values, as in a cold start. With send, the block's
    messages to the other side go out too, as init_blocks sends them.
    """
    bias = bias_col(cfg.rank, cfg.side)

    def run(inblock: pa.Table, earlier: pa.Table) -> pa.Table:
        if inblock.num_rows == 0:  # earlier factors of a block with no ratings now: nothing to start
            return pa.Table.from_pylist([], schema=_ARROW_SCHEMA)
        block = inblock.column("block")[0].as_py()
        params = initial_params(cell(inblock, "keys", 0, np.int64), cfg.rank, scale=cfg.init_scale, side=cfg.side)
        if earlier.num_rows:
            local = earlier.column("local").to_numpy()
            params[local, : cfg.rank] = list_matrix(earlier.column("features"), cfg.rank)
            if cfg.learn_bias:
                params[local, bias] = earlier.column("bias").to_numpy(zero_copy_only=False)
        outbox = _outbox(inblock, 0, params) if send else []
        return pa.Table.from_pylist(_rows(block, params, None, (0.0, 0.0), outbox), schema=_ARROW_SCHEMA)

    return run
