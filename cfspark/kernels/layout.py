"""Where each number sits in a block's parameter rows, shared by every layer that reads them.

Users store P = [W | b | 1] and items store P = [X | 1 | c], k + 2 columns each, so that

    P_user · P_item = w·x + b·1 + 1·c = w·x + b + c

and one dot product scores a rating from either side. The constant 1 of one side meets
the other side's bias. With the item bias off (the course's model), c stays exactly 0.
"""

from __future__ import annotations

import numpy as np

SIDES = ("user", "item")


def width(rank: int) -> int:
    return rank + 2


def bias_col(rank: int, side: str) -> int:
    """The column of b (users) or c (items)."""
    return rank if side == "user" else rank + 1


def const_col(rank: int, side: str) -> int:
    """The column that holds the constant 1."""
    return rank + 1 if side == "user" else rank


def factor_mask(rank: int) -> np.ndarray:
    """1 on the k factor columns, where λ applies."""
    return np.r_[np.ones(rank), 0.0, 0.0]


def bias_mask(rank: int, side: str) -> np.ndarray:
    """1 on the side's bias column, where λ_b applies."""
    mask = np.zeros(width(rank))
    mask[bias_col(rank, side)] = 1.0
    return mask


def train_mask(rank: int, side: str, *, learn_bias: bool) -> np.ndarray:
    """1 on the columns a half-step may move: the factors, and the bias if it is learned."""
    return factor_mask(rank) + (bias_mask(rank, side) if learn_bias else 0.0)
