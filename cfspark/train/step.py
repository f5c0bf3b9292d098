"""One half-step of one block in numpy: what it needs to know (StepConfig) and the step itself.

The distributed half-step (arrow_bodies.py) and the one-task fit (one_task.py) both call
solve_rows, so the two paths share every line of the maths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfspark.kernels.block import BlockProblem
from cfspark.kernels.implicit import all_items_rows
from cfspark.kernels.layout import bias_mask, factor_mask, train_mask, width
from cfspark.kernels.optimizers import AdamState
from cfspark.kernels.solve import solve_block
from cfspark.train.sampled import Draws, with_negatives


@dataclass(frozen=True)
class StepConfig:
    """What a half-step kernel needs to know; shipped to executors with the closure."""

    side: str  # "user" or "item": which side's params this half-step updates
    rank: int
    loss: str
    reg: float
    optimizer: str = "newton"  # the exact ridge (mse) or IRLS (bce) step, which needs no step size
    learning_rate: float = 0.0  # adam and gd only
    inner_steps: int = 1
    init_scale: float = 0.0  # the initial factors' spread; a fold-in starts from none
    count_scaled: bool = False  # λ·n_r per row (ALS-WR) rather than λ (the course's sum form)
    bias_reg: float = 0.0  # λ_b on this side's bias, never count-scaled
    learn_bias: bool = True  # users always learn b; items learn c only with the item bias on
    # Gather the other side's vectors and sum the Newton step's products in float32 (the sums
    # across tiles, the solve, the losses and the params sent on stay float64).
    float32: bool = False
    # Positive-only: every row of other is a 0 of weight 1 beside the observed pairs, whose weight
    # is their confidence (kernels/implicit.py), through the other side's Gramian (train/all_items.py).
    all_items: bool = False
    # all_items: the ratings' weights are confidences made with the reference α₀, and the half-step
    # uses 1 + s·(w − 1), s = α/α₀ (data/weights.py), so that ratings taken before the search has
    # chosen α (blocks built beside it, fit/implicit.py) serve any α without being made again.
    confidence_scale: float = 1.0
    # Sampled 0-labels drawn inside each half-step, afresh each iteration (train/sampled.py).
    draws: Draws | None = None
    # The blockwise half-step reports how far it moved its ratings' predictions (the trainer's
    # settle rule, train/trainer.py); off, it spends nothing on it.
    track_moves: bool = False

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
    gram: np.ndarray | None = None,
    keys: np.ndarray | None = None,
    col_labels: np.ndarray | None = None,
    *,
    data_loss: bool = True,
    cache: dict | None = None,
    drawn: tuple | None = None,
) -> tuple[np.ndarray, AdamState | None, tuple[float, float]]:
    """One half-step of one block in numpy: the rows' new params, the optimiser state to
    keep (Adam's; None otherwise) and the (data, L2) losses at the new params.

    row_ptr/cols/y/offset/weight are the block's ratings as CSR; other is the other side's params
    in the order cols index. gram (all_items only) is the other side's Gramian over all of its
    rows, when other holds only the rows this block's ratings name (train/all_items.py). keys, the
    rows' hash keys, seed the rows' fresh 0-labels when cfg.draws is set (train/sampled.py);
    col_labels, the cols' label counts over all blocks, set the rates they are drawn at.
    data_loss=False skips the pass over the ratings that the data loss takes (it is NaN then),
    for a caller that does not read it. cache, a dict kept by a caller that solves the same
    ratings again (the one-task loops), keeps their tiling from one call to the next. drawn,
    under cfg.draws, is the ratings with this iteration's 0-labels as with_negatives gives
    them, drawn ahead by the caller (sampled.DrawsAhead); without it the half-step draws them.
    """
    if cfg.all_items:
        if weight is not None and cfg.confidence_scale != 1.0:
            weight = 1.0 + cfg.confidence_scale * (weight - 1.0)
        params, data, l2 = all_items_rows(
            row_ptr, cols, weight, other, params, train_mask=cfg.train_mask, reg_mask=cfg.reg_mask,
            bias_mask=bias_mask(cfg.rank, cfg.side), reg=cfg.reg, bias_reg=cfg.bias_reg, count_scaled=cfg.count_scaled,
            g=gram, data_loss=data_loss, cache=cache,
        )  # fmt: skip
        return params, None, (data, l2)
    tiling = None
    if cfg.draws is not None:
        row_ptr, cols, y, offset, weight = drawn or with_negatives(
            cfg.draws, row_ptr, cols, y, offset, weight, keys, len(other), cfg.side, col_labels
        )
        # Without replacement a row draws the same number of 0-labels at every iteration
        # (min(K·n_r, its drawable items)), so the tiling, which only the row lengths decide, is kept.
        kept = cache.get("drawn") if cache is not None else None
        if kept is not None and np.array_equal(kept[0], row_ptr):
            tiling = kept[1]
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
        like=cache.get("problem") if cache is not None and cfg.draws is None else None,
        tiling=tiling,
    )
    if cache is not None and cfg.draws is not None:  # fresh 0-labels make other ratings every call: the tiling alone
        cache["drawn"] = (row_ptr, problem.tiling)
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
    losses = (problem.data_loss(params) if data_loss else float("nan"), problem.reg_loss(params))
    if cache is not None and cfg.draws is None:  # kept once the steps have tiled the ratings
        cache["problem"] = problem.lender()
    return params, keep, losses
