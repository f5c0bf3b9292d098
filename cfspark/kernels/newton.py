"""A second-order step per own row: exact for the quadratic MSE sub-problem, IRLS for BCE.

With the other side fixed, each row's sub-problem is independent and has only p = k + 1
parameters, so its Hessian H_r = Σ a·w · o oᵀ + diag(L2 weights of row r) is a small p × p matrix
(a, the rating's weight, 1 unless given). One
Newton step on the MSE sub-problem lands on the ridge solution exactly (ALS's update);
for BCE the weights are σ'(z) and rows whose loss would rise take a halved step.

A row with fewer ratings c than free columns f has H_r = D_r + Oᵀ A O, a diagonal D_r (its L2
weights) plus a matrix of rank c, and solves it by the Woodbury identity instead: a c × c
system per row, and no f × f Hessian built at all. On sparse data most rows hold one or two
ratings, where the batched f × f solve was most of a half-step's time (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfspark.kernels.block import BlockProblem, Tile
from cfspark.kernels.losses import bce_terms, per_rating

MAX_HALVINGS = 8
# The Woodbury solve computes D⁻¹(g − Oᵀx), whose terms cancel more the weaker D is against
# the data: its relative error is about 1e-16 · trace(Oᵀ A O) / min(D). A row takes it only
# where that ratio is at most this (an error below 1e-10); the others, as rows with no L2
# weight on a column, solve the f × f system.
WOODBURY_RATIO = 1e6


@dataclass(frozen=True)
class _Damped:
    """Each own row's L2 diagonal D and L2 gradient D·P over the free columns (n × f, in the
    tiling's order), and the Newton steps the Woodbury rows already solved (step, done)."""

    diag: np.ndarray
    reg_grad: np.ndarray
    step: np.ndarray
    done: np.ndarray

    def woodbury(self, tile: Tile, o: np.ndarray, weighted: np.ndarray) -> bool:
        """Solve the tile's rows by the Woodbury identity if they are light, shorter than the free
        columns and well enough conditioned; o (count × length × f) their gathered rows,
        weighted [A·o | a·dloss/dz] (count × length × (f+1)). False leaves the tile to the f × f path."""
        f = o.shape[-1]
        if tile.piece or tile.length >= f:
            return False
        rows = slice(tile.slot, tile.slot + tile.count)
        d_inv = 1.0 / self.diag[rows]
        o = o.astype(np.float64, copy=False)
        a_o = weighted[..., :f].astype(np.float64, copy=False)
        if np.any(np.einsum("clf,clf->c", a_o, o) * d_inv.max(axis=1) > WOODBURY_RATIO):
            return False
        g = np.einsum("clf,cl->cf", o, weighted[..., f]) + self.reg_grad[rows]
        # (D + Oᵀ A O)⁻¹ g = D⁻¹(g − Oᵀ x), where (I + A O D⁻¹ Oᵀ) x = A O D⁻¹ g: a length × length system
        # (A ≥ 0 and O D⁻¹ Oᵀ positive semi-definite, so I + A O D⁻¹ Oᵀ is never singular).
        scaled = a_o * d_inv[:, None, :]
        if tile.length == 1:  # one rating a row: every product is elementwise
            o, scaled = o[:, 0], scaled[:, 0]
            x = np.einsum("cf,cf->c", scaled, g) / (1.0 + np.einsum("cf,cf->c", scaled, o))
            self.step[rows] = d_inv * (g - o * x[:, None])
        else:
            m = np.matmul(scaled, o.transpose(0, 2, 1))
            m[:, range(tile.length), range(tile.length)] += 1.0
            x = _small_solve(m, np.einsum("clf,cf->cl", scaled, g))
            self.step[rows] = d_inv * (g - np.einsum("clf,cl->cf", o, x))
        self.done[rows] = True
        return True


def _small_solve(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x with m x = v for a batch of small systems (count × L × L), 2 × 2 in closed form."""
    if m.shape[-1] == 2:
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        det = a * d - b * c
        return np.stack([(d * v[:, 0] - b * v[:, 1]) / det, (a * v[:, 1] - c * v[:, 0]) / det], axis=1)
    return np.linalg.solve(m, v[..., None])[..., 0]


def _moments(
    problem: BlockProblem,
    params: np.ndarray,
    free: np.ndarray,
    row_losses: np.ndarray | None = None,
    damped: _Damped | None = None,
) -> np.ndarray:
    """Per own row, in the tiling's order: [H | g] (n × f × (f+1)), the Gauss-Newton Hessian
    Σ a·w·o oᵀ and the data gradient Σ a·(dloss/dz)·o over the f free columns (a, each
    rating's weight; w, the loss's curvature: 1 for MSE, p(1 − p) for BCE).

    The gathered rows are [O_free | slot | O_fixed]. Tile by tile, dloss/dz goes into the slot,
    so that one batched matrix product O_freeᵀ [w·O_free | dloss/dz] gives every row's
    Hessian and gradient at once, in the problem's working dtype; the sums are float64.
    With row_losses (n,), each row's data loss at params is added to it from the same scores.
    With damped, the rows its Woodbury solve takes get their step there instead, and zero sums.
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
        if problem.loss == "bce":  # the loss and P(y = 1) from one exponential (losses.bce_terms)
            values, p1 = bce_terms(z, y)
        else:
            values = per_rating(problem.loss, z, y) if row_losses is not None else None
        if row_losses is not None:
            problem.tiling.add(row_losses, tile, (values * problem.amount(tile)).sum(1))
        if problem.loss == "mse":
            o[..., f] = z - y
            weighted = o[..., : f + 1] if a is None else o[..., : f + 1] * a[..., None]
        else:  # p1 = P(y = 1): the IRLS weight is p1·(1 − p1)
            curvature = p1 * (1.0 - p1) if a is None else a * p1 * (1.0 - p1)
            weighted = o[..., : f + 1] * curvature[..., None]
            weighted[..., f] = p1 - y if a is None else a * (p1 - y)
        if damped is not None and damped.woodbury(tile, o[..., :f], weighted):
            continue
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
    reg = np.broadcast_to(problem.weights, params.shape).take(order, axis=0)[:, free]
    damped = _Damped(reg + 1e-10, reg * params.take(order, axis=0)[:, free], np.empty((n, len(free))),
                     np.zeros(n, bool))  # fmt: skip
    moments = _moments(problem, params, free, before, damped)
    # The Woodbury rows come first in the tiling's order (light rows by length): the rest is
    # then a slice, whose Hessians are solved in place.
    first = int(np.argmin(damped.done)) if not damped.done.all() else n
    rest = slice(first, n) if not damped.done[first:].any() else np.flatnonzero(~damped.done)
    hess, grad = moments[rest, :, :-1], moments[rest, :, -1]
    diagonal = np.arange(len(free))
    hess[:, diagonal, diagonal] += damped.diag[rest]
    grad += damped.reg_grad[rest]
    damped.step[rest] = np.linalg.solve(hess, grad[..., None])[..., 0]
    in_order = np.zeros_like(params)
    in_order[:, free] = damped.step
    back = np.empty_like(order)
    back[order] = np.arange(n)
    step = in_order.take(back, axis=0)
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
