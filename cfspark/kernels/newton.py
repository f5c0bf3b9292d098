"""A second-order step per own row: exact for the quadratic MSE sub-problem, IRLS for BCE.

With the other side fixed, each row's sub-problem is independent and has only p = k + 1
parameters, so its Hessian H_r = Σ a·w · o oᵀ + diag(L2 weights of row r) is a small p × p matrix
(a, the rating's weight, 1 unless given). One
Newton step on the MSE sub-problem lands on the ridge solution exactly (ALS's update);
for BCE the weights are σ'(z) and rows whose loss would rise take a halved step.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import BlockProblem
from cfspark.kernels.losses import per_rating, sigmoid

MAX_HALVINGS = 8


def _moments(
    problem: BlockProblem, params: np.ndarray, free: np.ndarray, row_losses: np.ndarray | None = None
) -> np.ndarray:
    """Per own row, in the tiling's order: [H | g] (n × f × (f+1)), the Gauss-Newton Hessian
    Σ a·w·o oᵀ and the data gradient Σ a·(dloss/dz)·o over the f free columns (a, each
    rating's weight; w, the loss's curvature: 1 for MSE, p(1 − p) for BCE).

    The gathered rows are [O_free | slot | O_fixed]. Tile by tile, dloss/dz goes into the slot,
    so that one batched matrix product O_freeᵀ [w·O_free | dloss/dz] gives every row's
    Hessian and gradient at once, in the problem's working dtype; the sums are float64.
    With row_losses (n,), each row's data loss at params is added to it from the same scores.
    """
    n, p = params.shape
    f = len(free)
    columns = np.r_[free, p, np.setdiff1d(np.arange(p), free)]
    other = np.ascontiguousarray(problem.other[:, columns])
    ext = np.ascontiguousarray(problem.extended(params, problem.other.dtype)[:, columns])
    sums = np.zeros((n, f, f + 1))
    for tile in problem.tiling.tiles:
        o, z = problem.gather(tile, ext, other)
        y, a = problem.tiled("y", tile), problem.tiled("weight", tile)
        if row_losses is not None:
            problem.tiling.add(row_losses, tile, (per_rating(problem.loss, z, y) * problem.amount(tile)).sum(1))
        if problem.loss == "mse":
            o[..., f] = z - y
            weighted = o[..., : f + 1] if a is None else o[..., : f + 1] * a[..., None]
        else:
            p1 = sigmoid(z)  # P(y = 1): the IRLS weight is p1·(1 − p1)
            curvature = p1 * (1.0 - p1) if a is None else a * p1 * (1.0 - p1)
            weighted = o[..., : f + 1] * curvature[..., None]
            weighted[..., f] = p1 - y if a is None else a * (p1 - y)
        o_t = o[..., :f].transpose(0, 2, 1)
        if tile.piece:  # runs of one heavy row
            sums[tile.slot] += np.matmul(o_t, weighted).sum(axis=0, dtype=np.float64)
        else:
            np.matmul(o_t, weighted, out=sums[tile.slot : tile.slot + tile.count])
    return sums


def newton_step(problem: BlockProblem, params: np.ndarray, train_mask: np.ndarray) -> np.ndarray:
    """One Newton step for every own row; columns where train_mask is 0 do not move."""
    n = len(params)
    free = np.flatnonzero(train_mask)
    order = problem.tiling.order
    # IRLS compares each row's loss before and after its step, in float64: the float64 problem
    # has the loss before from the step's own scores, the float32 one computes it apart.
    before = np.zeros(n) if problem.loss != "mse" and problem.other.dtype == np.float64 else None
    moments = _moments(problem, params, free, before)
    reg = np.broadcast_to(problem.weights, params.shape)[order][:, free]
    hess = moments[..., :-1]
    diagonal = np.arange(len(free))
    hess[:, diagonal, diagonal] += reg + 1e-10
    grad = moments[..., -1] + reg * params[order][:, free]
    step = np.zeros_like(params)
    step[order[:, None], free] = np.linalg.solve(hess, grad[..., None])[..., 0]
    if problem.loss == "mse":
        return params - step  # the sub-problem is quadratic: this is its exact minimiser
    before = problem.row_data_loss(params) if before is None else before
    before += problem.row_reg_loss(params)
    scale = np.ones(n)
    for _ in range(MAX_HALVINGS):
        candidate = params - scale[:, None] * step
        worse = _row_losses(problem, candidate) > before
        if not worse.any():
            return candidate
        scale[worse] *= 0.5
    scale[_row_losses(problem, params - scale[:, None] * step) > before] = 0.0
    return params - scale[:, None] * step


def _row_losses(problem: BlockProblem, params: np.ndarray) -> np.ndarray:
    return problem.row_data_loss(params) + problem.row_reg_loss(params)
