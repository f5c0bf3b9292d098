"""The factors' rank chosen on a validation fold, by truncating their product's SVD.

A model of rank k fits k directions of user-item interaction; on data whose true rank is
lower (low noise makes the surplus cheap to fit) the surplus directions fit noise, and no
λ removes them without shrinking the true ones too. principal_factors rewrites W, X so
that their k columns are the SVD directions of W·Xᵀ, strongest first, each split evenly
between the sides: keeping the first j columns is then the best rank-j approximation of
W·Xᵀ (Eckart–Young), and truncated_rank scores each j on validation rows.

A column that is 0 on both sides stays 0 under the alternating ridge steps (its normal
equation has a zero right-hand side and λ > 0 on the diagonal), so a fit started from
truncated factors keeps the chosen rank.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def principal_factors(W: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W', X', s) with W'·X'ᵀ = W·Xᵀ, W' = Q_W·U·√S and X' = Q_X·V·√S, s the singular values, descending."""
    qw, rw = np.linalg.qr(W)
    qx, rx = np.linalg.qr(X)
    u, s, vt = np.linalg.svd(rw @ rx.T)
    root = np.sqrt(s)
    return (qw @ u) * root, (qx @ vt.T) * root, s


def truncated_rank(rank: int, score: Callable[[int], float]) -> tuple[int, list[float]]:
    """The j in 1..rank whose score(j) is least (the larger j on a tie), and every score."""
    scores = [score(j) for j in range(1, rank + 1)]
    best = min(range(rank), key=lambda j: (scores[j], -j))
    return best + 1, scores
