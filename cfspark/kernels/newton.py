"""A second-order step per own row: exact for the quadratic MSE sub-problem, IRLS for BCE.

With the other side fixed, each row's sub-problem is independent and has only p = k + 1
parameters, so its Hessian H_r = Σ w · o oᵀ + diag(L2 weights of row r) is a small p × p matrix. One
Newton step on the MSE sub-problem lands on the ridge solution exactly (ALS's update);
for BCE the weights are σ'(z) and rows whose loss would rise take a halved step.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import CHUNK, BlockProblem, add_segments
from cfspark.kernels.losses import pointwise, sigmoid

MAX_HALVINGS = 8


def _moments(problem: BlockProblem, params: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per own row: the Gauss-Newton Hessian Σ w·o oᵀ and the data gradient Σ (dloss/dz)·o,
    both over the free columns. Only the upper triangle of each Hessian is summed: it is
    symmetric, and the pair products are the costliest pass of the step.
    """
    n, f = len(params), len(free)
    upper_i, upper_j = np.triu_indices(f)
    pairs = len(upper_i)
    sums = np.zeros((pairs + f, n))
    buffer = np.empty((pairs + f, CHUNK))  # reused by every chunk
    params_t = np.ascontiguousarray(params.T)
    for chunk in problem.chunks:
        o, z = problem.gather(chunk, params_t)
        o = o[free]
        _, dz = pointwise(problem.loss, z, problem.y[chunk.lo : chunk.hi])
        if problem.loss == "mse":
            weighted = o
        else:
            p1 = sigmoid(z)  # P(y = 1): the IRLS weight is p1·(1 − p1)
            weighted = o * (p1 * (1.0 - p1))
        out = buffer[:, : chunk.hi - chunk.lo]
        at = 0
        for a in range(f):  # over feature pairs, never over rows
            np.multiply(weighted[a], o[a:], out=out[at : at + f - a])
            at += f - a
        np.multiply(o, dz, out=out[pairs:])
        add_segments(sums, chunk, out)
    hess = np.zeros((n, f, f))
    hess[:, upper_i, upper_j] = sums[:pairs].T
    hess[:, upper_j, upper_i] = sums[:pairs].T
    return hess, sums[pairs:].T


def newton_step(problem: BlockProblem, params: np.ndarray, train_mask: np.ndarray) -> np.ndarray:
    """One Newton step for every own row; columns where train_mask is 0 do not move."""
    n = len(params)
    free = np.flatnonzero(train_mask)
    hess, data_grad = _moments(problem, params, free)
    reg = np.broadcast_to(problem.weights, params.shape)[:, free]
    diagonal = np.arange(len(free))
    hess[:, diagonal, diagonal] += reg + 1e-10
    grad = data_grad + reg * params[:, free]
    step = np.zeros_like(params)
    step[:, free] = np.linalg.solve(hess, grad[..., None])[..., 0]
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


def _row_losses(problem: BlockProblem, params: np.ndarray) -> np.ndarray:
    return problem.row_data_loss(params) + problem.row_reg_loss(params)
