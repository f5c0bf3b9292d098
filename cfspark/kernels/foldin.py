"""Fold-in: the best user rows against fixed item vectors, by the training kernel itself.

A new user's w and b solve the same sub-problem as a user half-step, with X held fixed,
so the same BlockProblem and Newton step apply: for mse one step lands on the ridge
solution exactly; for bce, IRLS steps are repeated until the rows stop moving.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import BlockProblem
from cfspark.kernels.layout import bias_mask, const_col, factor_mask, train_mask, width
from cfspark.kernels.newton import newton_step

IRLS_STEPS, IRLS_TOL = 50, 1e-9


def fold_in_rows(
    row_ptr: np.ndarray,
    item_rows: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None,
    *,
    rank: int,
    loss: str,
    reg: float,
    bias_reg: float,
    count_scaled: bool,
) -> np.ndarray:
    """User params [W | b | 1] (n × (k+2)) for n users whose ratings are row_ptr runs of y.

    item_rows[r] is the [x | 1 | c] row of rating r's item, so rating r scores
    P[user(r)] · item_rows[r] (+ offset[r]).
    """
    problem = BlockProblem.build(
        row_ptr=row_ptr,
        cols=np.arange(len(y)),
        other=item_rows,
        y=y,
        offset=offset,
        loss=loss,
        reg=reg,
        reg_mask=factor_mask(rank),
        bias_reg=bias_reg,
        bias_mask=bias_mask(rank, "user"),
        count_scaled=count_scaled,
    )
    params = np.zeros((len(row_ptr) - 1, width(rank)))
    params[:, const_col(rank, "user")] = 1.0
    mask = train_mask(rank, "user", learn_bias=True)
    for _ in range(1 if loss == "mse" else IRLS_STEPS):
        before = params
        params = newton_step(problem, params, mask)
        if np.max(np.abs(params - before), initial=0.0) < IRLS_TOL:
            break
    return params
