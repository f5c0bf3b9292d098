"""The factors' degrees of freedom (kernels/dof.py) against the traces of hat matrices built
densely, row by row, and its worked example and limits."""

from __future__ import annotations

import numpy as np
import pytest

from cfspark.kernels import dof
from cfspark.kernels.dof import factor_dof


def _dense_trace(design: np.ndarray, a: np.ndarray, penalty: np.ndarray) -> float:
    """tr(H) of the weighted ridge fit ŷ = D (DᵀAD + Λ)⁻¹ DᵀA y, H built in full."""
    A = np.diag(a)
    return float(np.trace(design @ np.linalg.solve(design.T @ A @ design + np.diag(penalty), design.T @ A)))


def _ratings(seed: int, n_users: int = 7, n_items: int = 9, n: int = 40):
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, n, replace=False)
    u, i = pairs // n_items, pairs % n_items
    return rng, u, i


def test_the_worked_example():
    # One user, items whose one factor is 1 and 3, count-scaled λ 1 (λ·n = 2): centred on
    # their mean 2 they give G = 2, so the user's factor spends 2 / (2 + 2) = 0.5; each item's
    # factor (the user's is 1) spends 1 / (1 + 1) = 0.5, its bias (λ_b 1) 1 / 2 jointly with it.
    user, item = np.array([0, 0]), np.array([0, 1])
    users, items = np.array([[1.0]]), np.array([[1.0], [3.0]])
    items_alone = factor_dof(user, item, None, users, items, reg=1.0, count_scaled=True, item_bias=False, bias_reg=0)
    assert items_alone == pytest.approx(0.5 + 2 * 0.5)
    # With the bias, each item's system is [[1 + 1, 1], [1, 1 + 1]] on G = [[1, 1], [1, 1]]: trace 2/3.
    with_bias = factor_dof(user, item, None, users, items, reg=1.0, count_scaled=True, item_bias=True, bias_reg=1.0)
    assert with_bias == pytest.approx(0.5 + 2 * 2 / 3)


@pytest.mark.parametrize("count_scaled", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_each_side_is_the_trace_of_its_rows_hat_matrices(count_scaled, weighted):
    rng, u, i = _ratings(1)
    rank, reg, bias_reg = 3, 0.3, 2.5
    a = rng.uniform(0.5, 3.0, len(u)) if weighted else np.ones(len(u))
    users, items = rng.normal(size=(7, rank)), rng.normal(size=(9, rank))
    expected = 0.0
    for row in range(7):  # a user's factors beside a free bias: the joint trace less the bias's 1
        mine = u == row
        design = np.column_stack([items[i[mine]], np.ones(mine.sum())])
        penalty = np.r_[np.full(rank, reg * (a[mine].sum() if count_scaled else 1.0)), 0.0]
        expected += _dense_trace(design, a[mine], penalty) - 1.0
    for row in range(9):  # an item's factors and its bias cᵢ, with λ_b on it
        mine = i == row
        if not mine.any():
            continue
        design = np.column_stack([users[u[mine]], np.ones(mine.sum())])
        penalty = np.r_[np.full(rank, reg * (a[mine].sum() if count_scaled else 1.0)), bias_reg]
        expected += _dense_trace(design, a[mine], penalty)
    got = factor_dof(u, i, a if weighted else None, users, items, reg=reg, count_scaled=count_scaled,
                     item_bias=True, bias_reg=bias_reg)  # fmt: skip
    assert got == pytest.approx(expected, rel=1e-9)


def test_no_penalty_spends_a_degree_a_direction_and_a_heavy_one_none():
    rng, u, i = _ratings(2, n_users=5, n_items=30, n=120)
    rank = 2
    users, items = rng.normal(size=(5, rank)), rng.normal(size=(30, rank))
    # λ = 0: every user (24 ratings) spends its rank, every item its rank plus its free bias,
    # where it has more ratings than that (else as many as it has).
    counts = np.bincount(i, minlength=30)
    free = factor_dof(u, i, None, users, items, reg=0.0, count_scaled=True, item_bias=True, bias_reg=0.0)
    assert free == pytest.approx(5 * rank + np.minimum(counts, rank + 1).sum(), rel=1e-6)
    held = factor_dof(u, i, None, users, items, reg=1e12, count_scaled=True, item_bias=True, bias_reg=1e12)
    assert held == pytest.approx(0.0, abs=1e-6)


def test_a_side_past_the_sample_is_estimated_from_a_fixed_sample_of_its_vectors(monkeypatch):
    rng, u, i = _ratings(3, n_users=600, n_items=400, n=12_000)
    rank = 4
    users, items = rng.normal(size=(600, rank)), rng.normal(size=(400, rank))
    args = dict(reg=0.05, count_scaled=True, item_bias=True, bias_reg=3.0)
    exact = factor_dof(u, i, None, users, items, **args)
    monkeypatch.setattr(dof, "SAMPLE", 150)
    sampled = factor_dof(u, i, None, users, items, **args)
    assert sampled != exact and sampled == factor_dof(u, i, None, users, items, **args)  # fixed, not exact
    # Each vector spends between 0 and rank + 1 degrees: 150 of them give the sum within 3 %.
    assert sampled == pytest.approx(exact, rel=0.03)
