"""Loss and gradient of one block of ratings with the other side held fixed.

A block owns parameters P (n × p) for n users (or items). Every rating r of the
block pairs own row rows[r] with row cols[r] of O, the other side's vectors as they
arrived in this half-step, so the score is z_r = P[rows[r]] · O[cols[r]] + offset_r.

Users store P = [W | b] and items store P = [X | 1]: one dot product then gives
w·x + b from either side, and the same kernel serves both half-steps. reg_mask
says which columns carry the L2 penalty (never b, never the constant 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfspark.kernels.losses import pointwise


@dataclass(frozen=True)
class BlockProblem:
    """The fixed part of a block's sub-problem for one half-step.

    other_rows holds O[cols] gathered once per half-step, because O does not
    change during the inner steps and the gather is the costliest memory pass.
    scratch is one (ratings × p) buffer that every step writes into: a fresh array
    of that size per operation costs more in first-touch page faults than the
    arithmetic itself (measured: 0.5 s against 0.02 s for 2.5 M ratings).
    """

    rows: np.ndarray  # int, own row of each rating, sorted ascending
    rated: np.ndarray  # int, the own rows that have at least one rating
    starts: np.ndarray  # int64, first rating of each rated row
    other_rows: np.ndarray  # float64 (nnz × p), O[cols]
    y: np.ndarray  # float64 (nnz,), target of each rating
    offset: np.ndarray | None  # float64 (nnz,) added to every score, or None
    loss: str
    reg: float
    reg_mask: np.ndarray  # float64 (p,), 1 where λ applies
    scratch: np.ndarray  # float64 (nnz × p), reused by scores and gradients

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
    ) -> BlockProblem:
        counts = np.diff(row_ptr)
        rows = np.repeat(np.arange(len(counts)), counts)
        rated = np.flatnonzero(counts)
        other_rows = np.ascontiguousarray(other[cols])
        return cls(
            rows=rows,
            rated=rated,
            starts=np.asarray(row_ptr[:-1], dtype=np.int64)[rated],
            other_rows=other_rows,
            y=y,
            offset=offset,
            loss=loss,
            reg=reg,
            reg_mask=reg_mask,
            scratch=np.empty_like(other_rows),
        )

    def scores(self, params: np.ndarray) -> np.ndarray:
        # mode="clip" lets numpy write straight into scratch (rows are always in range).
        np.take(params, self.rows, axis=0, out=self.scratch, mode="clip")
        z = np.einsum("ij,ij->i", self.scratch, self.other_rows)
        return z if self.offset is None else z + self.offset

    def reg_loss(self, params: np.ndarray) -> float:
        return 0.5 * self.reg * float(np.sum(params * params * self.reg_mask))

    def data_loss(self, params: np.ndarray) -> float:
        per_rating, _ = pointwise(self.loss, self.scores(params), self.y)
        return float(per_rating.sum())

    def loss_and_grad(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """J_block(P) = Σ loss(z, y) + λ/2 Σ‖P·mask‖², and dJ/dP."""
        per_rating, dz = pointwise(self.loss, self.scores(params), self.y)
        grad = self.reg * self.reg_mask * params
        if len(self.rated):
            np.multiply(dz[:, None], self.other_rows, out=self.scratch)
            grad[self.rated] += np.add.reduceat(self.scratch, self.starts, axis=0)
        return float(per_rating.sum()) + self.reg_loss(params), grad
