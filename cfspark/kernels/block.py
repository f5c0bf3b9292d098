"""Loss and gradient of one block of ratings with the other side held fixed.

A block owns parameters P (n × p) for n users (or items). Every rating r of the
block pairs own row rows[r] with row cols[r] of O, the other side's vectors as they
arrived in this half-step, so the score is z_r = P[rows[r]] · O[cols[r]] + offset_r.

Users store P = [W | b | 1] and items store P = [X | 1 | c]: one dot product then gives
w·x + b + c from either side, and the same kernel serves both half-steps.

The L2 penalty is ½ Σ_r Σ_col weight[r, col]·P[r, col]², with
  weight = λ·reg_mask + λ_b·bias_mask, or, when count_scaled,
  weight = (λ·n_r·reg_mask + λ_b·bias_mask)·CURVATURE[loss], n_r being the row's rating count.
Count scaling is ALS-WR's (and Spark ALS's regParam): with the data term summed over a
row's n_r ratings, a penalty that grows with n_r keeps the best λ the same whether an
entity has 10 ratings or 10,000, so one default transfers across data sizes. The biases'
λ_b is never scaled: against ½Σe², a bias then solves b = Σe / (n_r + λ_b), so λ_b is a
prior count of pseudo-ratings that shrinks entities with few ratings the most. CURVATURE
puts both in units of the loss's own curvature per rating: a BCE rating weighs at most 1/4
of an MSE one in the Hessian, so the same λ must weigh 1/4 as much to mean the same prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cfspark.kernels.losses import CURVATURE, pointwise

# Ratings per pass of the chunk loop. A chunk's (p × CHUNK) gathers and products stay in
# the CPU cache; gathering all ratings' vectors at once instead writes hundreds of MB and
# measured 4-10x slower for the same arithmetic (2.8 M ratings, p = 11).
CHUNK = 4096


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive ratings, and where each own row's ratings start inside it.

    A row may straddle two chunks; each chunk adds its partial sums for the row.
    """

    lo: int
    hi: int
    owners: np.ndarray  # the own rows present in the chunk, ascending
    starts: np.ndarray  # offset (from lo) of each owner's first rating in the chunk


@dataclass(frozen=True)
class BlockProblem:
    """The fixed part of a block's sub-problem for one half-step.

    other_t holds O feature-major (p × m): a chunk's gather then yields p contiguous
    rows of ratings, so every product and segment sum below runs over contiguous memory.
    """

    rows: np.ndarray  # int, own row of each rating, sorted ascending
    cols: np.ndarray  # int, row of O for each rating
    other_t: np.ndarray  # float64 (p × m), O transposed
    y: np.ndarray  # float64 (nnz,), target of each rating
    offset: np.ndarray | None  # float64 (nnz,) added to every score, or None
    loss: str
    reg: float
    reg_mask: np.ndarray  # float64 (p,), 1 where λ applies
    chunks: tuple[Chunk, ...]
    weights: np.ndarray  # the L2 weight of each entry of P: (p,) or, count-scaled, (n × p)

    @classmethod
    def build(
        cls,
        *,
        row_ptr: np.ndarray,
        cols: np.ndarray,
        other: np.ndarray,
        y: np.ndarray,
        loss: str,
        reg: float,
        reg_mask: np.ndarray,
        offset: np.ndarray | None = None,
        bias_reg: float = 0.0,
        bias_mask: np.ndarray | None = None,
        count_scaled: bool = False,
    ) -> BlockProblem:
        counts = np.diff(row_ptr)
        rows = np.repeat(np.arange(len(counts)), counts)
        weights = reg * np.asarray(reg_mask, dtype=np.float64)
        if count_scaled:
            weights = counts.astype(np.float64)[:, None] * weights[None, :]
        if bias_mask is not None and bias_reg:
            weights = weights + bias_reg * np.asarray(bias_mask, dtype=np.float64)
        if count_scaled:
            weights = weights * CURVATURE[loss]
        return cls(
            rows=rows,
            cols=np.asarray(cols),
            other_t=np.ascontiguousarray(np.asarray(other, dtype=np.float64).T),
            y=y,
            offset=offset,
            loss=loss,
            reg=reg,
            reg_mask=reg_mask,
            chunks=tuple(_chunks(rows)),
            weights=weights,
        )

    def gather(self, chunk: Chunk, params_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(O[cols]ᵀ, z) for one chunk; params_t is Pᵀ (p × n)."""
        lo, hi = chunk.lo, chunk.hi
        o = self.other_t.take(self.cols[lo:hi], axis=1)
        z = np.einsum("ij,ij->j", params_t.take(self.rows[lo:hi], axis=1), o)
        if self.offset is not None:
            z += self.offset[lo:hi]
        return o, z

    def scores(self, params: np.ndarray) -> np.ndarray:
        """z for every rating of the block."""
        params_t = np.ascontiguousarray(params.T)
        return np.concatenate([self.gather(chunk, params_t)[1] for chunk in self.chunks] or [np.empty(0)])

    def reg_loss(self, params: np.ndarray) -> float:
        return float(np.sum(self.row_reg_loss(params)))

    def row_reg_loss(self, params: np.ndarray) -> np.ndarray:
        """½ Σ_col weight·P² of each row (n,)."""
        return 0.5 * np.sum(params * params * self.weights, axis=-1)

    def row_data_loss(self, params: np.ndarray) -> np.ndarray:
        """Σ loss(z, y) over each own row's ratings (n,), zero for rows without ratings."""
        params_t = np.ascontiguousarray(params.T)
        out = np.zeros((1, len(params)))
        for chunk in self.chunks:
            _, z = self.gather(chunk, params_t)
            per_rating, _ = pointwise(self.loss, z, self.y[chunk.lo : chunk.hi])
            add_segments(out, chunk, per_rating[None, :])
        return out[0]

    def data_loss(self, params: np.ndarray) -> float:
        return float(self.row_data_loss(params).sum())

    def loss_and_grad(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """J_block(P) = Σ loss(z, y) + λ/2 Σ‖P·mask‖², and dJ/dP."""
        params_t = np.ascontiguousarray(params.T)
        grad_t = np.zeros_like(params_t)
        data = 0.0
        for chunk in self.chunks:
            o, z = self.gather(chunk, params_t)
            per_rating, dz = pointwise(self.loss, z, self.y[chunk.lo : chunk.hi])
            data += float(per_rating.sum())
            o *= dz
            add_segments(grad_t, chunk, o)
        return data + self.reg_loss(params), grad_t.T + self.weights * params


def add_segments(out: np.ndarray, chunk: Chunk, values: np.ndarray) -> None:
    """out[:, row] += Σ values[:, r] over each own row's ratings r in the chunk."""
    if len(chunk.owners):
        out[:, chunk.owners] += np.add.reduceat(values, chunk.starts, axis=1)


def _chunks(rows: np.ndarray) -> Iterator[Chunk]:
    for lo in range(0, len(rows), CHUNK):
        part = rows[lo : lo + CHUNK]
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        yield Chunk(lo, lo + len(part), part[starts], starts)
