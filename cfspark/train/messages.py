"""Arrow bodies of the half-steps: decode a block, run the numpy kernels, emit rows.

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
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import blob, cell, list_matrix, matrix
from cfspark.kernels.block import BlockProblem
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col, bias_mask, factor_mask, train_mask, width
from cfspark.kernels.optimizers import AdamState
from cfspark.kernels.solve import solve_block

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


@dataclass(frozen=True)
class StepConfig:
    """What a half-step kernel needs to know; shipped to executors with the closure."""

    side: str  # "user" or "item": which side's params this half-step updates
    rank: int
    loss: str
    reg: float
    optimizer: str
    learning_rate: float
    inner_steps: int
    init_scale: float
    count_scaled: bool = False  # λ·n_r per row (ALS-WR) rather than λ (the course's sum form)
    bias_reg: float = 0.0  # λ_b on this side's bias, never count-scaled
    learn_bias: bool = True  # users always learn b; items learn c only with the item bias on
    # Gather the other side's vectors and sum the Newton step's products in float32 (the sums
    # across tiles, the solve, the losses and the params sent on stay float64).
    float32: bool = False

    @property
    def width(self) -> int:
        return width(self.rank)

    @property
    def reg_mask(self) -> np.ndarray:
        # λ applies to W and X, never to a bias nor to the constant 1.
        return factor_mask(self.rank)

    @property
    def train_mask(self) -> np.ndarray:
        # The constant 1 never moves, nor does an item bias that is switched off.
        return train_mask(self.rank, self.side, learn_bias=self.learn_bias)


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


def solve_rows(
    cfg: StepConfig,
    row_ptr: np.ndarray,
    cols: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None,
    weight: np.ndarray | None,
    other: np.ndarray,
    params: np.ndarray,
    state: AdamState | None,
) -> tuple[np.ndarray, AdamState | None, tuple[float, float]]:
    """One half-step of one block in numpy: the rows' new params, the optimiser state to
    keep (Adam's; None otherwise) and the (data, L2) losses at the new params.

    row_ptr/cols/y/offset/weight are the block's ratings as CSR; other is the other side's params
    in the order cols index. The distributed half-step and the one-task fit both call this.
    """
    problem = BlockProblem.build(
        row_ptr=row_ptr,
        cols=cols,
        other=other,
        y=y,
        offset=offset,
        loss=cfg.loss,
        reg=cfg.reg,
        reg_mask=cfg.reg_mask,
        bias_reg=cfg.bias_reg,
        bias_mask=bias_mask(cfg.rank, cfg.side),
        count_scaled=cfg.count_scaled,
        dtype=np.float32 if cfg.float32 else np.float64,
        rating_weight=weight,
    )
    params, state = solve_block(
        problem,
        params,
        state if state is not None else AdamState.zeros_like(params),
        optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        inner_steps=cfg.inner_steps,
        train_mask=cfg.train_mask,
    )
    keep = state if cfg.optimizer == "adam" else None
    return params, keep, (problem.data_loss(params), problem.reg_loss(params))


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
