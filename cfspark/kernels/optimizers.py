"""Optimiser steps on one block: pure functions from (params, grad, state) to new ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPTIMIZERS = ("adam", "gd", "newton")


@dataclass(frozen=True)
class AdamState:
    """Adam's moment estimates for one block, and how many steps it has taken."""

    m: np.ndarray
    v: np.ndarray
    t: int

    @classmethod
    def zeros_like(cls, params: np.ndarray) -> AdamState:
        return cls(np.zeros_like(params), np.zeros_like(params), 0)


def gd_step(params: np.ndarray, grad: np.ndarray, *, lr: float) -> np.ndarray:
    """Plain gradient descent: P − lr·∇."""
    return params - lr * grad


def adam_step(
    params: np.ndarray,
    grad: np.ndarray,
    state: AdamState,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[np.ndarray, AdamState]:
    """One Adam step with bias correction (Kingma & Ba, 2015).

    Adam is elementwise, so a user's update never depends on which block it sits
    in: this is what makes the model independent of the block counts.
    """
    t = state.t + 1
    m = beta1 * state.m + (1.0 - beta1) * grad
    v = beta2 * state.v + (1.0 - beta2) * grad * grad
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    return params - lr * m_hat / (np.sqrt(v_hat) + eps), AdamState(m, v, t)
