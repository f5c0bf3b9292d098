"""The inner loop of a half-step: several optimiser steps on one block's sub-problem."""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import BlockProblem
from cfspark.kernels.newton import newton_step
from cfspark.kernels.optimizers import AdamState, adam_step, gd_step


def solve_block(
    problem: BlockProblem,
    params: np.ndarray,
    state: AdamState,
    *,
    optimizer: str,
    learning_rate: float,
    inner_steps: int,
    train_mask: np.ndarray,
) -> tuple[np.ndarray, AdamState]:
    """Take inner_steps steps; columns where train_mask is 0 never move.

    newton ignores learning_rate: its step is the row's own Newton step.
    """
    for _ in range(inner_steps):
        if optimizer == "newton":
            params = newton_step(problem, params, train_mask)
            continue
        _, grad = problem.loss_and_grad(params)
        grad *= train_mask
        if optimizer == "adam":
            params, state = adam_step(params, grad, state, lr=learning_rate)
        elif optimizer == "gd":
            params = gd_step(params, grad, lr=learning_rate)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
    return params, state
