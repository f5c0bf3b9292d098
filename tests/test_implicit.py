"""The all-items positive-only half-step (kernels/implicit.py) against a brute-force dense solve."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from cfspark.kernels.implicit import implicit_step, reg_weights
from cfspark.kernels.layout import bias_mask, const_col, factor_mask, train_mask, width
from cfspark.train.step import StepConfig, solve_rows


def _block(n: int, m: int, rank: int, density: float, seed: int, heavy: bool = False):
    """A random block: CSR of observed pairs with confidences, the other side's params, own params."""
    rng = np.random.default_rng(seed)
    observed = rng.random((n, m)) < density
    if heavy:
        observed[0] = rng.random(m) < 0.95  # one row longer than a tile's run: cut into pieces
    observed[np.arange(n), rng.integers(0, m, n)] = True  # every row has a pair
    confidence = np.where(observed, 1.0 + rng.gamma(0.5, 8.0, (n, m)), 0.0)
    rows, cols = np.nonzero(observed)
    row_ptr = np.r_[0, np.cumsum(observed.sum(axis=1))].astype(np.int64)
    other = rng.normal(0, 0.5, (m, width(rank)))
    other[:, const_col(rank, "item")] = 1.0  # the items' constant column
    params = rng.normal(0, 0.5, (n, width(rank)))
    params[:, const_col(rank, "user")] = 1.0
    return observed, confidence, row_ptr, cols, confidence[rows, cols], other, params


def _brute_force(observed, confidence, other, params, free, weights):
    """Each row's weighted ridge over every item, unobserved ones as 0 of weight 1, solved densely."""
    fixed = np.setdiff1d(np.arange(other.shape[1]), free)
    out = params.copy()
    for r in range(len(params)):
        c = np.where(observed[r], confidence[r], 1.0)
        y = observed[r].astype(np.float64)
        o_free = other[:, free]
        target = y - other[:, fixed] @ params[r, fixed]
        a = o_free.T @ (c[:, None] * o_free) + np.diag(weights[r, free])
        out[r, free] = np.linalg.solve(a, o_free.T @ (c * target))
    return out


def _dense_loss(observed, confidence, other, params, weights):
    z = params @ other.T
    c = np.where(observed, confidence, 1.0)
    return 0.5 * float(np.sum(c * (z - observed) ** 2)), 0.5 * float(np.sum(weights * params**2))


@pytest.mark.parametrize(("n", "m", "rank", "heavy"), [(7, 40, 3, False), (12, 25, 5, False), (3, 4500, 2, True)])
@pytest.mark.parametrize("count_scaled", [False, True])
# An item's free columns skip its constant one ([X | 1 | c]): the kernel's index path, not its slice.
@pytest.mark.parametrize(("side", "learn_bias"), [("user", True), ("item", True), ("item", False)])
def test_all_items_step_equals_the_dense_solve(n, m, rank, heavy, count_scaled, side, learn_bias):
    observed, confidence, row_ptr, cols, conf, other, params = _block(n, m, rank, 0.2, seed=n + m, heavy=heavy)
    params[:, const_col(rank, side)] = 1.0
    weights = reg_weights(
        row_ptr, factor_mask(rank), bias_mask(rank, side), reg=0.3, bias_reg=0.7, count_scaled=count_scaled
    )
    mask = train_mask(rank, side, learn_bias=learn_bias)
    new, data, reg = implicit_step(row_ptr, cols, conf, other, params, mask, weights)
    expected = _brute_force(observed, confidence, other, params, np.flatnonzero(mask), weights)
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-9)
    assert np.all(new[:, const_col(rank, side)] == 1.0)  # the constant never moves
    dense_data, dense_reg = _dense_loss(observed, confidence, other, new, weights)
    assert data == pytest.approx(dense_data, rel=1e-10)
    assert reg == pytest.approx(dense_reg, rel=1e-10)


def test_the_step_minimises_the_loss_over_every_item():
    observed, confidence, row_ptr, cols, conf, other, params = _block(6, 30, 3, 0.3, seed=3)
    weights = reg_weights(row_ptr, factor_mask(3), bias_mask(3, "user"), reg=0.1, bias_reg=1.0, count_scaled=True)
    mask = train_mask(3, "user", learn_bias=True)
    new, _, _ = implicit_step(row_ptr, cols, conf, other, params, mask, weights)
    best = sum(_dense_loss(observed, confidence, other, new, weights))
    rng = np.random.default_rng(0)
    for _ in range(5):  # any move of the free columns raises J
        moved = new + 1e-3 * rng.normal(size=new.shape) * mask
        assert sum(_dense_loss(observed, confidence, other, moved, weights)) > best
    with_item_bias_off = train_mask(3, "user", learn_bias=False)
    fixed_bias, _, _ = implicit_step(row_ptr, cols, conf, other, params, with_item_bias_off, weights)
    np.testing.assert_array_equal(fixed_bias[:, 3], params[:, 3])


def test_a_kept_tiling_lent_copies_and_a_skipped_data_loss_change_nothing_else():
    observed, confidence, row_ptr, cols, conf, other, params = _block(12, 25, 5, 0.2, seed=4)
    weights = reg_weights(row_ptr, factor_mask(5), bias_mask(5, "user"), reg=0.3, bias_reg=0.7, count_scaled=True)
    mask = train_mask(5, "user", learn_bias=True)
    want, data, reg = implicit_step(row_ptr, cols, conf, other, params, mask, weights)
    cache: dict = {}
    # The first call tiles and keeps it; the second, with other confidences (another α), borrows it.
    implicit_step(row_ptr, cols, 1.0 + 2.0 * (conf - 1.0), other, params, mask, weights, cache=cache)
    kept = cache["tiling"]
    got, skipped, got_reg = implicit_step(row_ptr, cols, conf, other, params, mask, weights, data_loss=False,
                                          cache=cache)  # fmt: skip
    assert cache["tiling"] is kept
    np.testing.assert_array_equal(got, want)
    assert math.isnan(skipped) and got_reg == reg and math.isfinite(data)
    # Equal confidences again (a new array of the same values, as a fit at one α makes each
    # half-step): the pairs' tile-ordered copies are lent, not made again, and change nothing.
    lent = cache["pairs"]
    again, again_data, _ = implicit_step(row_ptr, cols, conf.copy(), other, params, mask, weights, cache=cache)
    assert cache["pairs"] is lent and cache["tiling"] is kept
    np.testing.assert_array_equal(again, want)
    assert again_data == data


def test_a_half_step_rescales_confidences_made_with_the_reference_alpha():
    # Blocks built beside the search hold 1 + α₀·g(c); at the chosen α a half-step uses
    # 1 + (α/α₀)·(w − 1) = 1 + α·g(c), so it equals the step on confidences made with α.
    observed, confidence, row_ptr, cols, conf, other, params = _block(15, 30, 4, 0.25, seed=6)
    reference, alpha = 2.0, 0.5
    counts = (conf - 1.0) / reference  # g(c) of each pair
    cfg = StepConfig(side="user", rank=4, loss="bce", reg=0.2, count_scaled=True, all_items=True, learn_bias=False)
    scaled = dataclasses.replace(cfg, confidence_scale=alpha / reference)
    want, _, want_losses = solve_rows(cfg, row_ptr, cols, None, None, 1.0 + alpha * counts, other, params, None)
    got, _, got_losses = solve_rows(scaled, row_ptr, cols, None, None, 1.0 + reference * counts, other, params, None)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-12)
    unscaled, _, _ = solve_rows(cfg, row_ptr, cols, None, None, 1.0 + reference * counts, other, params, None)
    assert np.abs(unscaled - want).max() > 1e-3  # α matters here: the scale is what makes them agree
