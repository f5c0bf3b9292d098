"""Initial factors drawn from a hash of each id, not from a block's random stream.

Because the draw depends only on (id, seed), the starting point, and so the whole
model, is the same whatever the number of blocks or partitions.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.layout import const_col, width

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hashed_uniform(keys: np.ndarray, width: int) -> np.ndarray:
    """A (len(keys) × width) array of U(−1, 1) values, a pure function of each key."""
    base = keys.astype(np.int64).view(np.uint64)[:, None]
    with np.errstate(over="ignore"):
        lanes = np.arange(1, width + 1, dtype=np.uint64)[None, :] * _GOLDEN
    bits = _splitmix64(base ^ lanes) >> np.uint64(11)
    return bits.astype(np.float64) * (2.0 / 2**53) - 1.0


def initial_params(keys: np.ndarray, rank: int, *, scale: float, side: str) -> np.ndarray:
    """Starting P for a block: users [W | b=0 | 1], items [X | 1 | c=0], with std(W), std(X) = scale."""
    params = np.zeros((len(keys), width(rank)), dtype=np.float64)
    params[:, :rank] = hashed_uniform(keys, rank) * (scale * np.sqrt(3.0))
    params[:, const_col(rank, side)] = 1.0
    return params
