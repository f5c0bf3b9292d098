"""A second-order step per own row: exact for the quadratic MSE sub-problem, IRLS for BCE.

With the other side fixed, each row's sub-problem is independent and has only p = k + 1
parameters, so its Hessian H_r = Σ w · o oᵀ + λ·diag(mask) is a small p × p matrix. One
Newton step on the MSE sub-problem lands on the ridge solution exactly (ALS's update);
for BCE the weights are σ'(z) and rows whose loss would rise take a halved step.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import BlockProblem
from cfspark.kernels.losses import pointwise, sigmoid

RATINGS_PER_CHUNK = 1 << 16  # bounds the (ratings × p × p) outer products held at once
MAX_HALVINGS = 8


def _row_sums(values: np.ndarray, problem: BlockProblem, n: int) -> np.ndarray:
    """Σ over each own row's ratings of values (first axis), zeros for rows without ratings."""
    out = np.zeros((n, *values.shape[1:]))
    if len(problem.rated):
        out[problem.rated] = np.add.reduceat(values, problem.starts, axis=0)
    return out


def _hessians(problem: BlockProblem, weights: np.ndarray, n: int, p: int) -> np.ndarray:
    """Σ_r w · o oᵀ per own row, built a chunk of ratings at a time."""
    hess = np.zeros((n, p, p))
    o = problem.other_rows
    counts = np.bincount(problem.rows, minlength=n)
    # A chunk ends on a row boundary, so it may overrun RATINGS_PER_CHUNK by up to one row.
    buffer = np.empty((RATINGS_PER_CHUNK + int(counts.max(initial=0)), p, p))  # reused: see BlockProblem
    lo = 0
    while lo < len(o):
        hi = min(lo + RATINGS_PER_CHUNK, len(o))
        hi = int(np.searchsorted(problem.rows, problem.rows[hi - 1], side="right"))  # whole rows only
        outer = np.multiply((weights[lo:hi, None] * o[lo:hi])[:, :, None], o[lo:hi, None, :], out=buffer[: hi - lo])
        rows = problem.rows[lo:hi]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        hess[rows[first]] += np.add.reduceat(outer, first, axis=0)
        lo = hi
    return hess


def _row_losses(problem: BlockProblem, params: np.ndarray) -> np.ndarray:
    per_rating, _ = pointwise(problem.loss, problem.scores(params), problem.y)
    data = np.bincount(problem.rows, per_rating, minlength=len(params))
    return data + 0.5 * problem.reg * np.sum(params * params * problem.reg_mask, axis=1)


def newton_step(problem: BlockProblem, params: np.ndarray, train_mask: np.ndarray) -> np.ndarray:
    """One Newton step for every own row; columns where train_mask is 0 do not move."""
    n, p = params.shape
    free = np.flatnonzero(train_mask)
    _, grad = problem.loss_and_grad(params)
    z = problem.scores(params)
    weights = np.ones_like(z) if problem.loss == "mse" else sigmoid(z) * (1.0 - sigmoid(z))
    hess = _hessians(problem, weights, n, p)[:, free[:, None], free[None, :]]
    hess += np.diag(problem.reg * problem.reg_mask[free] + 1e-10)[None, :, :]
    step = np.zeros_like(params)
    step[:, free] = np.linalg.solve(hess, grad[:, free, None])[..., 0]
    if problem.loss == "mse":
        return params - step  # the sub-problem is quadratic: this is its exact minimiser
    before = _row_losses(problem, params)
    scale = np.ones(n)
    for _ in range(MAX_HALVINGS):
        candidate = params - scale[:, None] * step
        worse = _row_losses(problem, candidate) > before
        if not worse.any():
            return candidate
        scale[worse] *= 0.5
    scale[_row_losses(problem, params - scale[:, None] * step) > before] = 0.0
    return params - scale[:, None] * step
