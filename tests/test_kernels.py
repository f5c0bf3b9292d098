"""The numpy kernels on their own: gradients, optimiser steps, initial factors, top-N, and the
half-step body (arrow_bodies.step_blocks) that runs them, without Spark."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from cfspark.blocks.codec import arrow_rows, binary_column, matrix
from cfspark.blocks.inblock import pack_arrays
from cfspark.kernels import newton, topn
from cfspark.kernels.block import TILE, BlockProblem, Tiling, padded_length
from cfspark.kernels.init import hashed_uniform, initial_params
from cfspark.kernels.layout import bias_col, bias_mask, const_col, factor_mask, train_mask
from cfspark.kernels.losses import pointwise
from cfspark.kernels.newton import _Damped, _moments, newton_step
from cfspark.kernels.optimizers import AdamState, adam_step, gd_step
from cfspark.kernels.solve import solve_block
from cfspark.kernels.topn import score_pair, top_within_groups
from cfspark.train import arrow_bodies
from cfspark.train.step import StepConfig, solve_rows

RANK = 3
REG_MASK = np.r_[np.ones(RANK), 0.0]


def _problem(rng, *, n=5, m=4, side="user", loss="mse", reg=0.7, scale=1.0):
    """A random block: n own rows, m rows of the other side, every own row rated."""
    pairs = sorted({(r, c) for r in range(n) for c in range(m) if rng.random() < 0.6} | {(r, r % m) for r in range(n)})
    rows = np.array([p[0] for p in pairs])
    cols = np.array([p[1] for p in pairs], dtype=np.int32)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    other = rng.normal(scale=scale, size=(m, RANK + 1))
    other[:, RANK] = 1.0 if side == "user" else other[:, RANK]  # users see [X | 1]; items see [W | b]
    y = rng.integers(0, 2, len(rows)).astype(float) if loss == "bce" else rng.normal(size=len(rows))
    problem = BlockProblem.build(row_ptr=row_ptr, cols=cols, other=other, y=y, loss=loss, reg=reg, reg_mask=REG_MASK)
    params = rng.normal(scale=scale, size=(n, RANK + 1))
    if side == "item":
        params[:, RANK] = 1.0
    return problem, params, rows, cols, other, y


def _explicit_loss(params, rows, cols, other, y, reg, loss="mse"):
    """J written out term by term, as in the design card, for one block."""
    total = 0.0
    for r, c, t in zip(rows, cols, y, strict=True):
        z = params[r] @ other[c]
        total += (
            0.5 * (z - t) ** 2
            if loss == "mse"
            else -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))
        )
    return total + 0.5 * reg * np.sum(params[:, :RANK] ** 2)


def _finite_difference(f, params, h=1e-6):
    grad = np.zeros_like(params)
    for idx in np.ndindex(params.shape):
        up, down = params.copy(), params.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_block_loss_matches_the_written_out_sum(side, loss):
    problem, params, rows, cols, other, y = _problem(np.random.default_rng(1), side=side, loss=loss)
    value, _ = problem.loss_and_grad(params)
    assert value == pytest.approx(_explicit_loss(params, rows, cols, other, y, 0.7, loss), rel=1e-12)


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_gradient_matches_finite_differences(side, loss):
    # user side: columns 0..k-1 are W, column k is b; item side: columns 0..k-1 are X.
    problem, params, *_ = _problem(np.random.default_rng(2), side=side, loss=loss)
    _, grad = problem.loss_and_grad(params)
    numeric = _finite_difference(lambda p: problem.loss_and_grad(p)[0], params)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)
    if side == "user":
        # b carries no L2 term: its gradient is the plain sum of the user's dloss/dz.
        _, dz = pointwise(loss, problem.scores(params), problem.y)
        np.testing.assert_allclose(grad[:, RANK], np.bincount(problem.rows, dz), atol=1e-12)


def test_bce_stays_finite_and_exact_at_large_scores():
    z = np.array([-50.0, 50.0, -50.0, 50.0, 700.0, -700.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    loss, dz = pointwise("bce", z, y)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(loss, [50.0, 50.0, 0.0, 0.0, 700.0, 700.0], atol=1e-20, rtol=1e-12)
    np.testing.assert_allclose(dz, [-1.0, 1.0, 0.0, 0.0, 1.0, -1.0], atol=1e-20)


def test_bce_terms_are_the_loss_and_the_sigmoid_from_one_exponential():
    """bce_terms (the Newton step's loss and P(y = 1) on one e^−|z|) against logaddexp and the
    tanh form of σ, across scores where either term saturates, and finite at ±700."""
    from cfspark.kernels.losses import bce_terms, per_rating, sigmoid, softplus

    z = np.r_[np.linspace(-40.0, 40.0, 2001), -700.0, 700.0, 0.0]
    y = (np.arange(len(z)) % 2).astype(np.float64)
    loss, p1 = bce_terms(z, y)
    np.testing.assert_allclose(loss, np.logaddexp(0.0, z) - y * z, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(p1, 0.5 * (1.0 + np.tanh(0.5 * z)), rtol=1e-15, atol=3e-16)
    np.testing.assert_allclose(softplus(z), np.logaddexp(0.0, z), rtol=1e-15, atol=1e-300)
    np.testing.assert_array_equal(per_rating("bce", z, y), loss)
    assert p1[-1] == 0.5 and p1[-2] == 1.0 and 0.0 < p1[-3] < 1e-300 and np.all(np.isfinite(loss))
    assert np.all(np.diff(p1[:2001]) >= 0) and np.all(sigmoid(z) >= 0)


def test_a_sampled_half_step_reuses_its_tiling_and_steps_as_afresh():
    """Drawing without replacement, a row takes as many 0-labels at every iteration, so solve_rows's
    cache keeps the tiling of the ratings and draws: the next iteration's step is the same, to the
    bit, as with nothing cached; with replacement the row lengths change and a new tiling is made."""
    from cfspark.train.sampled import Draws

    rng = np.random.default_rng(21)
    users, items = 30, 60
    rated = rng.random((users, items)) < 0.15
    rated[np.arange(users), np.arange(users)] = True
    rows, cols = np.nonzero(rated)
    row_ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=users))]
    other = initial_params(np.arange(items) + 10**6, RANK, scale=0.3, side="item")
    params = initial_params(np.arange(users), RANK, scale=0.3, side="user")
    keys = np.arange(users) * 7919
    for replace in (False, True):
        draws = Draws(per_label=3, weight=0.5, sampling="sqrt", seed=5, replace=replace)
        cache: dict = {}
        for iteration in (1, 2):
            cfg = StepConfig(side="user", rank=RANK, loss="bce", reg=0.1, count_scaled=True, bias_reg=5.0,
                             draws=dataclasses.replace(draws, iteration=iteration))  # fmt: skip
            kept = cache.get("drawn")
            ratings = (row_ptr, cols, np.ones(len(cols)), None, None, other, params, None)
            cached, _, _ = solve_rows(cfg, *ratings, keys=keys, cache=cache)
            afresh, _, _ = solve_rows(cfg, *ratings, keys=keys)
            np.testing.assert_array_equal(cached, afresh)
            if iteration == 2:
                assert (cache["drawn"][1] is kept[1]) != replace  # kept without replacement only


@pytest.mark.parametrize("optimizer", ["adam", "gd"])
def test_one_step_lowers_the_block_loss(optimizer):
    problem, params, *_ = _problem(np.random.default_rng(3), n=8, m=6)
    before, grad = problem.loss_and_grad(params)
    if optimizer == "adam":
        after_params, state = adam_step(params, grad, AdamState.zeros_like(params), lr=0.01)
        assert state.t == 1
    else:
        after_params = gd_step(params, grad, lr=0.01)
    after, _ = problem.loss_and_grad(after_params)
    assert after < before


def test_solve_block_keeps_frozen_columns_and_converges():
    problem, params, *_ = _problem(np.random.default_rng(4), n=6, m=5, side="item", reg=0.5)
    mask = REG_MASK  # items keep their constant 1
    solved, state = solve_block(
        problem,
        params,
        AdamState.zeros_like(params),
        optimizer="adam",
        learning_rate=0.05,
        inner_steps=800,
        train_mask=mask,
    )
    np.testing.assert_array_equal(solved[:, RANK], 1.0)
    assert state.t == 800
    _, grad = problem.loss_and_grad(solved)
    # At the optimum of the convex sub-problem the trainable gradient vanishes.
    assert np.abs(grad * mask).max() < 1e-3


def test_initial_factors_depend_only_on_key_and_seed():
    keys = np.array([11, -5, 2**62, 11], dtype=np.int64)
    a = initial_params(keys, 4, scale=0.1, side="user")
    b = initial_params(keys[::-1].copy(), 4, scale=0.1, side="user")[::-1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[3])
    assert not np.allclose(a[0], a[1])
    np.testing.assert_array_equal(a[:, 4], 0.0)
    np.testing.assert_array_equal(a[:, 5], 1.0)  # users [W | b | 1]
    np.testing.assert_array_equal(initial_params(keys, 4, scale=0.1, side="item")[:, 4:], [[1.0, 0.0]] * 4)
    draws = hashed_uniform(np.arange(20000, dtype=np.int64), 3)
    assert draws.min() >= -1 and draws.max() < 1
    assert abs(draws.mean()) < 0.02 and draws.std() == pytest.approx(1 / np.sqrt(3), rel=0.02)


@contextlib.contextmanager
def _chunk_of(size):
    before, topn.USER_CHUNK = topn.USER_CHUNK, size
    try:
        yield
    finally:
        topn.USER_CHUNK = before


def test_score_pair_equals_a_dense_ranking_with_exclusions():
    rng = np.random.default_rng(5)
    users = rng.normal(size=(7, RANK + 2))
    items = rng.normal(size=(9, RANK + 2))
    rated = np.array([(0, 1), (0, 2), (3, 0), (6, 8)])  # (user, item) pairs excluded
    idx, val = score_pair(users, items, rated[:, 0], rated[:, 1], n=3)
    dense = users @ items.T
    dense[rated[:, 0], rated[:, 1]] = -np.inf
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(val, np.take_along_axis(dense, expected, axis=1))
    # Queries in more than one chunk give the same answer.
    with _chunk_of(3):
        chunked = score_pair(users, items, rated[:, 0], rated[:, 1], n=3)
    np.testing.assert_array_equal(chunked[0], idx)


def test_score_pair_product_ranks_by_the_product_of_two_sigmoids():
    """Two models side by side: the best n by σ(q₁·c₁)·σ(q₂·c₂), exclusions and ties as score_pair's."""
    rng = np.random.default_rng(6)
    users, items = rng.normal(size=(7, 2 * (RANK + 2))), rng.normal(size=(12, 2 * (RANK + 2)))
    items[5] = items[2]  # a tie: the lower position wins
    rated = np.array([(0, 1), (0, 2), (3, 0), (6, 11)])
    w = RANK + 2
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    product = sig(users[:, :w] @ items[:, :w].T) * sig(users[:, w:] @ items[:, w:].T)
    product[rated[:, 0], rated[:, 1]] = 0.0
    expected = np.lexsort((np.broadcast_to(np.arange(12), product.shape), -product), axis=1)[:, :4]
    for chunk in (2048, 3):
        with _chunk_of(chunk):
            idx, val = topn.score_pair(users, items, rated[:, 0], rated[:, 1], n=4, product=True)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_allclose(np.exp(val), np.take_along_axis(product, expected, axis=1), rtol=1e-12)


def _dense_best(users, items, rated, n):
    dense = users @ items.T
    dense[rated[:, 0], rated[:, 1]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(items)), dense.shape), -dense), axis=1)[:, :n]
    return order, np.take_along_axis(dense, order, axis=1)


def test_score_pair_screens_in_float32_but_answers_in_float64():
    """Large enough for the grouped screen: ties, near-ties below float32's precision,
    a row excluded all but three items, and a zero query (every score tied at 0)."""
    rng = np.random.default_rng(8)
    m = 4 * 10 * topn.GROUP + 37
    users = rng.normal(size=(50, RANK + 2))
    items = rng.normal(size=(m, RANK + 2))
    items[100] = items[7]  # exact ties: the lower position must win
    items[200] = items[9] * (1 + 1e-12)  # closer than float32 can tell
    users[3] = 0.0
    rated = [(u, i) for u in range(50) for i in rng.choice(m, 40, replace=False)]
    rated += [(5, i) for i in range(m) if i not in (1, 2, 3)]
    rated = np.array(sorted(set(rated)))
    idx, val = score_pair(users, items, rated[:, 0], rated[:, 1], n=10)
    expected_idx, expected_val = _dense_best(users, items, rated, 10)
    finite = np.isfinite(expected_val)
    np.testing.assert_array_equal(np.isfinite(val), finite)
    np.testing.assert_array_equal(idx[finite], expected_idx[finite])
    np.testing.assert_allclose(val[finite], expected_val[finite], rtol=1e-12, atol=1e-12)
    assert finite[5].sum() == 3  # what is left of the row, then −inf
    np.testing.assert_array_equal(idx[3], expected_idx[3])  # all tied: positions in order


@pytest.mark.parametrize("scale", [1e20, 1e50])
def test_score_pair_ranks_vectors_too_large_for_float32_in_float64(scale):
    """Scores past float32's range (ratings of 1e40, say), which a float32 screen turns into
    inf and NaN: the ranking is then float64's throughout, exactly the dense one."""
    rng = np.random.default_rng(9)
    m = 4 * 10 * topn.GROUP + 5
    users, items = scale * rng.normal(size=(20, RANK + 2)), scale * rng.normal(size=(m, RANK + 2))
    items[50] = items[3]  # a tie: the lower position wins
    rated = np.array(sorted({(u, int(i)) for u in range(20) for i in rng.choice(m, 30, replace=False)}))
    idx, val = score_pair(users, items, rated[:, 0], rated[:, 1], n=10)
    expected_idx, expected_val = _dense_best(users, items, rated, 10)
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_allclose(val, expected_val, rtol=1e-12)


def test_top_within_groups_ranks_each_group_and_keeps_ties_in_order():
    groups = np.array([2, 0, 2, 0, 2, 1, 0])
    scores = np.array([0.5, 3.0, 0.9, 1.0, 0.5, -1.0, 2.0])
    keep, ranks = top_within_groups(groups, scores, 2)
    # group 0: positions 1 (3.0), 6 (2.0); group 1: position 5; group 2: 2 (0.9), then the tie 0 before 4
    np.testing.assert_array_equal(keep, [1, 6, 5, 2, 0])
    np.testing.assert_array_equal(ranks, [1, 2, 1, 1, 2])


@pytest.mark.parametrize("side", ["user", "item"])
def test_bce_gradient_at_large_scores_matches_finite_differences(side):
    # An offset puts every score near ±50, where a naive log(σ(z)) would hit log(0).
    problem, params, *_ = _problem(np.random.default_rng(6), side=side, loss="bce", scale=0.3)
    offset = np.where(problem.y == 1.0, -50.0, 50.0)  # every label is wrong by |z| ≈ 50
    problem = dataclasses.replace(problem, offset=offset)
    value, grad = problem.loss_and_grad(params)
    assert np.isfinite(value) and value > 50 * len(offset) * 0.9
    numeric = _finite_difference(lambda p: problem.loss_and_grad(p)[0], params, h=1e-5)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("side", ["user", "item"])
def test_one_newton_step_lands_on_the_ridge_solution(side):
    problem, params, rows, cols, other, y = _problem(np.random.default_rng(7), n=6, m=5, side=side, reg=0.8)
    mask = np.ones(RANK + 1) if side == "user" else REG_MASK
    stepped = newton_step(problem, params, mask)
    free = np.flatnonzero(mask)
    for r in range(len(params)):
        sel = rows == r
        a = other[cols[sel]][:, free]
        target = y[sel] - other[cols[sel]][:, ~mask.astype(bool)] @ params[r, ~mask.astype(bool)]
        ridge = np.linalg.solve(a.T @ a + 0.8 * np.diag(REG_MASK[free]), a.T @ target)
        np.testing.assert_allclose(stepped[r, free], ridge, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(stepped[:, ~mask.astype(bool)], params[:, ~mask.astype(bool)])
    _, grad = problem.loss_and_grad(stepped)
    assert np.abs(grad * mask).max() < 1e-9


def test_newton_irls_lowers_the_bce_loss_monotonically():
    problem, params, *_ = _problem(np.random.default_rng(8), n=8, m=6, loss="bce", reg=0.3, scale=3.0)
    losses = [problem.loss_and_grad(params)[0]]
    for _ in range(15):
        params = newton_step(problem, params, np.ones(RANK + 1))
        losses.append(problem.loss_and_grad(params)[0])
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < losses[0] and np.abs(problem.loss_and_grad(params)[1]).max() < 1e-6


@pytest.mark.parametrize("count_scaled", [True, False])
@pytest.mark.parametrize("side", ["user", "item"])
def test_newton_step_with_count_scaled_reg_and_bias_prior_is_the_weighted_ridge_solution(side, count_scaled):
    """The layout the trainer uses (users [W | b | 1], items [X | 1 | c]) with the item bias on:
    one step solves each row's ridge with λ·n_r (count form) or λ (sum form) on the factors
    and the unscaled λ_b on the bias, in closed form."""
    rng = np.random.default_rng(9)
    n, m, reg, bias_reg = 7, 6, 0.3, 4.0
    pairs = sorted({(r, c) for r in range(n) for c in range(m) if rng.random() < 0.7} | {(r, r % m) for r in range(n)})
    rows, cols = (np.array(v) for v in zip(*pairs, strict=True))
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    other_side = "item" if side == "user" else "user"
    other = initial_params(np.arange(m, dtype=np.int64), RANK, scale=1.0, side=other_side)
    other[:, bias_col(RANK, other_side)] = rng.normal(size=m)  # the other side's bias is live too
    y = rng.normal(size=len(rows))
    problem = BlockProblem.build(
        row_ptr=row_ptr, cols=cols, other=other, y=y, loss="mse", reg=reg, reg_mask=factor_mask(RANK),
        bias_reg=bias_reg, bias_mask=bias_mask(RANK, side), count_scaled=count_scaled,
    )  # fmt: skip
    params = initial_params(np.arange(n, dtype=np.int64) + 100, RANK, scale=1.0, side=side)
    mask = train_mask(RANK, side, learn_bias=True)
    stepped = newton_step(problem, params, mask)
    free, fixed = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    assert list(free) == [*range(RANK), bias_col(RANK, side)] and list(fixed) == [const_col(RANK, side)]
    for r in range(n):
        sel = rows == r
        a = other[cols[sel]][:, free]
        target = y[sel] - other[cols[sel]][:, fixed] @ params[r, fixed]
        lam = reg * (sel.sum() if count_scaled else 1.0)
        penalty = np.diag(np.r_[np.full(RANK, lam), bias_reg])
        ridge = np.linalg.solve(a.T @ a + penalty, a.T @ target)
        np.testing.assert_allclose(stepped[r, free], ridge, rtol=1e-8, atol=1e-9)  # the step adds 1e-10 to H's diagonal
    np.testing.assert_array_equal(stepped[:, fixed], 1.0)
    # The penalty in the loss is the one the step minimised: the gradient vanishes.
    _, grad = problem.loss_and_grad(stepped)
    assert np.abs(grad * mask).max() < 1e-9


def test_count_scaled_penalty_gradient_matches_finite_differences():
    problem, params, *_ = _problem(np.random.default_rng(10), loss="bce")
    counts = np.diff(np.searchsorted(problem.rows, np.arange(len(params) + 1)))
    scaled = BlockProblem.build(
        row_ptr=np.r_[0, np.cumsum(counts)], cols=problem.cols, other=problem.other_t.T, y=problem.y, loss="bce",
        reg=0.7, reg_mask=REG_MASK, bias_reg=2.0, bias_mask=np.r_[np.zeros(RANK), 1.0], count_scaled=True,
    )  # fmt: skip
    value, grad = scaled.loss_and_grad(params)
    # BCE's curvature per rating is at most 1/4, and count-scaled weights are in that unit; the
    # factors' prior is FACTOR_PRIOR (3) times stronger for BCE.
    factors = 3.0 * 0.7 * counts @ np.sum(params[:, :RANK] ** 2, axis=1)
    expected_reg = 0.125 * (factors + 2.0 * np.sum(params[:, RANK] ** 2))
    assert value - scaled.data_loss(params) == pytest.approx(expected_reg, rel=1e-12)
    numeric = _finite_difference(lambda p: scaled.loss_and_grad(p)[0], params)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_padded_lengths_waste_less_than_an_eighth():
    counts = np.arange(1, 20000)
    lengths = padded_length(counts)
    assert np.all(lengths >= counts) and np.all(lengths < counts * 1.125 + 1)
    np.testing.assert_array_equal(lengths[:8], counts[:8])
    assert len(np.unique(lengths)) <= 8 * 15 + 8  # 8 lengths per octave


def _short_rows_block(rng, loss, *, weighted, bias_reg=5.0, rank=10):
    """Items of 0 to 14 ratings at rank 10 (11 free columns), the trainer's layout, count-scaled."""
    counts = np.r_[np.arange(1, 15), 0, 1, 2, 2, 3, 1]
    m = 40
    cols = np.concatenate([np.sort(rng.choice(m, c, replace=False)) for c in counts]).astype(np.int32)
    other = initial_params(np.arange(m, dtype=np.int64), rank, scale=1.0, side="user")
    other[:, bias_col(rank, "user")] = rng.normal(size=m)
    nnz = len(cols)
    y = rng.integers(0, 2, nnz).astype(float) if loss == "bce" else rng.normal(size=nnz)
    problem = BlockProblem.build(
        row_ptr=np.r_[0, np.cumsum(counts)], cols=cols, other=other, y=y, offset=rng.normal(0.0, 0.3, nnz), loss=loss,
        reg=0.2, reg_mask=factor_mask(rank), bias_reg=bias_reg, bias_mask=bias_mask(rank, "item"), count_scaled=True,
        rating_weight=rng.uniform(0.2, 3.0, nnz) if weighted else None,
    )  # fmt: skip
    params = initial_params(np.arange(len(counts), dtype=np.int64) + 500, rank, scale=1.0, side="item")
    params[:, bias_col(rank, "item")] = rng.normal(size=len(counts))
    return problem, other, params, train_mask(rank, "item", learn_bias=True), counts


@pytest.mark.parametrize("weighted", [False, True])
def test_rows_shorter_than_the_free_columns_solve_the_exact_ridge_by_woodbury(weighted):
    """A row of c < f ratings solves D + Oᵀ A O by the Woodbury identity (a c × c system);
    its step is the row's weighted ridge solution, as the f × f solve's is."""
    problem, other, params, mask, counts = _short_rows_block(np.random.default_rng(31), "mse", weighted=weighted)
    free, fixed = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    n, f = len(params), len(free)
    damped = _Damped(np.ones((n, f)), np.zeros((n, f)), np.zeros((n, f)), np.zeros(n, bool))
    sums = _moments(problem, params, free, None, damped)
    done = np.zeros(n, bool)
    done[problem.tiling.order] = damped.done
    np.testing.assert_array_equal(done, (counts > 0) & (counts < f))  # the rest build their f × f sums
    assert np.all(sums[damped.done] == 0.0)
    stepped = newton_step(problem, params, mask)
    a = np.ones(len(problem.y)) if problem.rating_weight is None else problem.rating_weight
    row_ptr = np.r_[0, np.cumsum(counts)]
    for r in range(n):
        sel = slice(row_ptr[r], row_ptr[r + 1])
        o = other[problem.cols[sel]]
        target = problem.y[sel] - problem.offset[sel] - o[:, fixed] @ params[r, fixed]
        hess = o[:, free].T @ (a[sel, None] * o[:, free]) + np.diag(problem.weights[r, free] + 1e-10)
        # The step adds 1e-10 to H's diagonal but not to the gradient: P − H⁻¹(∇) is this, not quite the ridge.
        ridge = np.linalg.solve(hess, o[:, free].T @ (a[sel] * target) + 1e-10 * params[r, free])
        np.testing.assert_allclose(stepped[r, free], ridge, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(stepped[:, fixed], params[:, fixed])


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_the_woodbury_step_equals_the_full_solve_and_falls_back_without_an_l2_weight(loss, monkeypatch):
    """IRLS steps (bce) are the same by either solve; with no L2 weight on the bias (λ_b = 0) the
    identity would divide by ~0, so those rows take the f × f solve, which still gives the step."""
    for bias_reg in (5.0, 0.0):
        problem, _, params, mask, counts = _short_rows_block(np.random.default_rng(32), loss, weighted=True,
                                                              bias_reg=bias_reg)  # fmt: skip
        free = np.flatnonzero(mask)
        n, f = len(params), len(free)
        reg = problem.weights.take(problem.tiling.order, axis=0)[:, free] + 1e-10
        damped = _Damped(reg, np.zeros((n, f)), np.zeros((n, f)), np.zeros(n, bool))
        _moments(problem, params, free, None, damped)
        assert damped.done.sum() == (np.sum((counts > 0) & (counts < f)) if bias_reg else 0)
        stepped = newton_step(problem, params, mask)
        with monkeypatch.context() as patch:
            patch.setattr(newton, "WOODBURY_RATIO", 0.0)  # every row takes the f × f solve
            full = newton_step(problem, params, mask)
        np.testing.assert_allclose(stepped, full, rtol=1e-9, atol=1e-12)


def _explicit_moments(problem, other, params, free):
    """Per row, Σ w·o oᵀ and Σ (dloss/dz)·o over the free columns, one row at a time in float64."""
    z = np.einsum("ij,ij->i", params[problem.rows], other[problem.cols]) + problem.offset
    _, dz = pointwise(problem.loss, z, problem.y)
    w = np.ones_like(z) if problem.loss == "mse" else dz + problem.y - (dz + problem.y) ** 2  # σ(1 − σ)
    hess = np.zeros((len(params), len(free), len(free)))
    grad = np.zeros((len(params), len(free)))
    for r in range(len(params)):
        sel = problem.rows == r
        o = other[problem.cols[sel]][:, free]
        hess[r] = o.T @ (w[sel, None] * o)
        grad[r] = o.T @ dz[sel]
    return hess, grad


def _heavy_block(rng, loss, dtype=np.float64):
    """One item of 50,000 ratings among light items of 0 to 300, item layout [X | 1 | c]."""
    counts = np.r_[50_000, rng.integers(1, 300, 40), 0, 3, 4096, 4097, 9]
    m = 60_000
    cols = np.concatenate([np.sort(rng.choice(m, c, replace=False)) for c in counts]).astype(np.int32)
    row_ptr = np.r_[0, np.cumsum(counts)]
    other = initial_params(np.arange(m, dtype=np.int64), RANK, scale=1.0, side="user")
    other[:, bias_col(RANK, "user")] = rng.normal(size=m)
    params = initial_params(np.arange(len(counts), dtype=np.int64), RANK, scale=1.0, side="item")
    params[:, bias_col(RANK, "item")] = rng.normal(size=len(counts))
    nnz = row_ptr[-1]
    y = rng.integers(0, 2, nnz).astype(float) if loss == "bce" else rng.normal(3.5, 1.0, nnz)
    problem = BlockProblem.build(
        row_ptr=row_ptr, cols=cols, other=other, y=y, offset=rng.normal(0.0, 0.3, nnz), loss=loss, reg=0.1,
        reg_mask=factor_mask(RANK), bias_reg=5.0, bias_mask=bias_mask(RANK, "item"), count_scaled=True, dtype=dtype,
    )  # fmt: skip
    return problem, other, params, train_mask(RANK, "item", learn_bias=True)


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_heavy_row_gram_by_matmul_equals_the_row_by_row_sums(loss):
    problem, other, params, mask = _heavy_block(np.random.default_rng(11), loss)
    _check_tiled_moments(problem, other, params, mask)
    tiles = problem.tiling.tiles
    assert max(t.count * t.length for t in tiles) <= TILE
    # 50,000 ratings make 13 runs of 3847 (11 of padding), 4097 make 2 of 2049; a row of 4096 is still light.
    runs = {int(problem.tiling.order[t.slot]): (t.length, 0) for t in tiles if t.piece}
    for t in tiles:
        if t.piece:
            row = int(problem.tiling.order[t.slot])
            runs[row] = (t.length, runs[row][1] + t.count)
    assert runs == {0: (3847, 13), 44: (2049, 2)}
    # The float32 path sums the same products from float32 vectors, tile by tile into float64.
    # Errors measured about 1e-7 of each row's largest sum, the heavy row's included.
    free = np.flatnonzero(mask)
    single, *_ = _heavy_block(np.random.default_rng(11), loss, np.float32)
    exact = _moments(problem, params, free)
    scale = np.abs(exact).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(_moments(single, params, free) - exact) <= 2e-6 * scale)


def test_runs_of_a_heavy_row_share_tiles_and_still_add_up():
    """Short runs (as for a large rank), several to a tile: rows over 1000 ratings, in runs of 1000."""
    problem, other, params, mask = _heavy_block(np.random.default_rng(14), "bce")
    row_ptr = np.r_[0, np.cumsum(np.bincount(problem.rows, minlength=len(params)))]
    problem = dataclasses.replace(problem, tiling=Tiling.of(row_ptr, run=1000))
    assert max(t.count for t in problem.tiling.tiles if t.piece) == 4  # 4 runs of 1000 to a tile of 4096
    _check_tiled_moments(problem, other, params, mask)
    value, grad = problem.loss_and_grad(params)
    z = np.einsum("ij,ij->i", params[problem.rows], other[problem.cols]) + problem.offset
    np.testing.assert_allclose(problem.scores(params), z, rtol=1e-12, atol=1e-12)
    per, dz = pointwise("bce", z, problem.y)
    np.testing.assert_allclose(problem.row_data_loss(params), np.bincount(problem.rows, per, len(params)), rtol=1e-12)
    assert value == pytest.approx(per.sum() + problem.reg_loss(params), rel=1e-12)
    expected = np.stack([np.bincount(problem.rows, dz * other[problem.cols, j], len(params)) for j in range(RANK + 2)])
    np.testing.assert_allclose(grad - problem.weights * params, expected.T, rtol=1e-10, atol=1e-9)


def _check_tiled_moments(problem, other, params, mask):
    free = np.flatnonzero(mask)
    hess, grad = _explicit_moments(problem, other, params, free)
    moments = np.empty((len(params), len(free), len(free) + 1))
    moments[problem.tiling.order] = _moments(problem, params, free)
    np.testing.assert_allclose(moments[..., :-1], hess, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(moments[..., -1], grad, rtol=1e-10, atol=1e-9)
    assert np.trace(hess[0]) > 1e3  # the heavy row's sums are 50,000 ratings deep
    if problem.loss == "mse":
        reg = problem.weights[:, free]
        expected = params.copy()
        rhs = grad + reg * params[:, free]
        expected[:, free] -= np.linalg.solve(hess + reg[:, :, None] * np.eye(len(free)) + 1e-10 * np.eye(len(free)),
                                             rhs[..., None])[..., 0]  # fmt: skip
        np.testing.assert_allclose(newton_step(problem, params, mask), expected, rtol=1e-9, atol=1e-11)


def _planted_split(rng, loss, n_users=5000, n_items=150, rank=4):
    """A planted rank-4 model; item i has about 4800·(i+1)^-0.4 raters, so item 0 is a heavy row."""
    u, v = rng.normal(scale=rank**-0.25, size=(n_users, rank)), rng.normal(scale=rank**-0.25, size=(n_items, rank))
    raters = np.maximum(5, (4800 * np.arange(1, n_items + 1) ** -0.4).astype(int))
    items = np.repeat(np.arange(n_items), raters)
    users = np.concatenate([rng.choice(n_users, c, replace=False) for c in raters])
    z = (
        (u[users] * v[items]).sum(1)
        + rng.normal(scale=0.5, size=n_items)[items]
        + rng.normal(scale=0.3, size=n_users)[users]
    )
    y = (
        3.0 + z + rng.normal(scale=0.5, size=len(z))
        if loss == "mse"
        else (rng.random(len(z)) < 1 / (1 + np.exp(-z))) * 1.0
    )
    test = rng.random(len(y)) < 0.1
    return [(users[s], items[s], y[s]) for s in (~test, test)], n_users, n_items


REGS = {"mse": 0.05, "bce": 0.1}  # bce: 0.3 before FACTOR_PRIOR (3) scaled the factor prior


def _side_problem(own, other_ids, y, n_own, other, loss, dtype, side):
    order = np.lexsort((other_ids, own))
    row_ptr = np.r_[0, np.cumsum(np.bincount(own, minlength=n_own))]
    offset = np.full(len(y), 3.0 if loss == "mse" else 0.0)
    return BlockProblem.build(
        row_ptr=row_ptr, cols=other_ids[order], other=other, y=y[order], offset=offset, loss=loss, reg=REGS[loss],
        reg_mask=factor_mask(4), bias_reg=5.0, bias_mask=bias_mask(4, side), count_scaled=True, dtype=dtype,
    )  # fmt: skip


def _alternate(train, n_users, n_items, loss, dtype, iterations=10):
    users, items, y = train
    w = initial_params(np.arange(n_users, dtype=np.int64), 4, scale=0.1, side="user")
    x = initial_params(np.arange(n_items, dtype=np.int64) + 10**6, 4, scale=0.1, side="item")
    for _ in range(iterations):
        w = newton_step(
            _side_problem(users, items, y, n_users, x, loss, dtype, "user"), w, train_mask(4, "user", learn_bias=True)
        )
        x = newton_step(
            _side_problem(items, users, y, n_items, w, loss, dtype, "item"), x, train_mask(4, "item", learn_bias=True)
        )
    return w, x


def _fit_error(w, x, split, loss):
    users, items, y = split
    z = (w[users] * x[items]).sum(1)
    if loss == "mse":
        return float(np.sqrt(np.mean((3.0 + z - y) ** 2)))  # RMSE
    return float(np.mean(pointwise("bce", z, y)[0]))  # log loss


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_float32_training_matches_float64_on_a_planted_model(loss):
    """Ten alternations of Newton half-steps with float32 gathers and products against float64:
    the training and test errors (RMSE for mse, log loss for bce) agree to 1e-4 relative
    (measured: at most 2e-9)."""
    (train, test), n_users, n_items = _planted_split(np.random.default_rng(12), loss)
    assert np.bincount(train[1]).max() > TILE  # item 0 is a heavy row
    single = _alternate(train, n_users, n_items, loss, np.float32)
    double = _alternate(train, n_users, n_items, loss, np.float64)
    for split in (train, test):
        a, b = _fit_error(*single, split, loss), _fit_error(*double, split, loss)
        assert abs(a - b) <= 1e-4 * b, (loss, a, b)
    # The fit is real: noise 0.5 against an RMSE of 1.26 around the mean; log loss 0.693 for a coin.
    assert _fit_error(*double, test, loss) < {"mse": 0.6, "bce": 0.66}[loss]
    # The factors agree to about 1e-6.
    np.testing.assert_allclose(single[0], double[0], atol=1e-4)
    np.testing.assert_allclose(single[1], double[1], atol=1e-4)


def test_a_float32_half_step_body_sends_float64_params_close_to_float64s():
    """arrow_bodies.step_blocks, Spark-free: StepConfig.float32 reaches the kernels, and the state and
    messages it emits are float64 cells either way."""
    (train, _), n_users, n_items = _planted_split(np.random.default_rng(13), "mse")
    users, items, y = train
    packed = pack_arrays(users, np.zeros_like(items), items, y, users.astype(np.int64), offset=np.full(len(y), 3.0))
    inblock = pa.table(
        {"block": pa.array([0], pa.int32()), "n": pa.array([packed.pop("n")], pa.int32())}
        | {name: binary_column([a]) for name, a in packed.items()}
        | {"col_labels": pa.array([None], pa.binary())}  # set only for sampled exposure fits
    )
    w = initial_params(np.arange(n_users, dtype=np.int64), 4, scale=0.1, side="user")
    x = initial_params(np.arange(n_items, dtype=np.int64), 4, scale=0.1, side="item")
    state = arrow_bodies._rows(0, w, None, (0.0, 0.0), [])
    sent = arrow_bodies._rows(0, x, None, (0.0, 0.0), [(0, x[np.unique(items)])])[1:]  # block 0: its items, by id
    incoming = arrow_rows(state + sent, arrow_bodies._ARROW_SCHEMA)
    out = {}
    for single in (False, True):
        cfg = StepConfig(
            side="user", rank=4, loss="mse", reg=0.05, optimizer="newton", learning_rate=0.0, inner_steps=1,
            init_scale=0.1, count_scaled=True, bias_reg=5.0, float32=single,
        )  # fmt: skip
        table = arrow_bodies.step_blocks(cfg)(inblock, incoming)
        src = table.column("src").to_pylist()
        assert src == [arrow_bodies.STATE, 0]
        assert len(table.column("params")[0].as_py()) == n_users * 6 * 8  # float64 cells, as before
        out[single] = matrix(table, "params", 0, 6), table.column("data_loss")[0].as_py()
    (p64, loss64), (p32, loss32) = out[False], out[True]
    assert not np.array_equal(p32, p64)  # the float32 path ran
    np.testing.assert_allclose(p32, p64, atol=1e-5)
    assert loss32 == pytest.approx(loss64, rel=1e-6)


def _weighted(problem: BlockProblem, weight: np.ndarray, **extra) -> BlockProblem:
    """problem again, with a weight per rating."""
    counts = np.bincount(problem.rows, minlength=int(problem.rows.max()) + 1)
    return BlockProblem.build(
        row_ptr=np.r_[0, np.cumsum(counts)], cols=problem.cols, other=problem.other_t.T, y=problem.y,
        loss=problem.loss, reg=0.7, reg_mask=REG_MASK, rating_weight=weight, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("count_scaled", [False, True])
def test_weighted_ratings_loss_and_gradient_match_the_sum_and_finite_differences(loss, count_scaled):
    """Σ a_r·loss(z_r, y_r) + penalty, with sampled-negative-like weights (0.25) among 1s and counts (3)."""
    problem, params, rows, cols, other, y = _problem(np.random.default_rng(21), n=6, m=5, loss=loss)
    weight = np.random.default_rng(22).choice([0.25, 1.0, 3.0], size=len(y))
    weighted = _weighted(problem, weight, count_scaled=count_scaled)
    value, grad = weighted.loss_and_grad(params)
    z = np.einsum("rk,rk->r", params[rows], other[cols])
    data = np.sum(weight * pointwise(loss, z, y)[0])
    amount = np.bincount(rows, weight)  # count scaling counts a row's weights, not its ratings
    lam = 0.7 * (amount * (0.75 if loss == "bce" else 1.0) if count_scaled else np.ones(len(params)))
    assert value == pytest.approx(data + 0.5 * np.sum(lam * np.sum(params[:, :RANK] ** 2, axis=1)), rel=1e-12)
    numeric = _finite_difference(lambda p: weighted.loss_and_grad(p)[0], params)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_a_weight_of_two_is_the_rating_twice_in_the_newton_step():
    """IRLS with a_r = 2 takes the step of the same block with that rating written twice."""
    problem, params, rows, cols, other, y = _problem(np.random.default_rng(23), n=5, m=4, loss="bce", scale=0.5)
    weight = np.ones(len(y))
    weight[::3] = 2.0
    twice = np.sort(np.r_[np.arange(len(y)), np.flatnonzero(weight == 2.0)])
    doubled = BlockProblem.build(
        row_ptr=np.r_[0, np.cumsum(np.bincount(rows[twice], minlength=5))], cols=cols[twice], other=other,
        y=y[twice], loss="bce", reg=0.7, reg_mask=REG_MASK,
    )  # fmt: skip
    mask = np.ones(RANK + 1)
    stepped = newton_step(_weighted(problem, weight), params, mask)
    np.testing.assert_allclose(stepped, newton_step(doubled, params, mask), rtol=1e-10, atol=1e-12)


def test_weighted_mse_newton_step_is_the_weighted_ridge_solution():
    problem, params, rows, cols, other, y = _problem(np.random.default_rng(24), n=6, m=5)
    weight = np.random.default_rng(25).uniform(0.1, 3.0, size=len(y))
    stepped = newton_step(_weighted(problem, weight), params, np.ones(RANK + 1))
    for r in range(len(params)):
        sel = rows == r
        a, w = other[cols[sel]], weight[sel]
        ridge = np.linalg.solve(a.T @ (w[:, None] * a) + 0.7 * np.diag(REG_MASK), a.T @ (w * y[sel]))
        np.testing.assert_allclose(stepped[r], ridge, rtol=1e-8, atol=1e-9)


def test_a_problem_built_like_another_on_the_same_ratings_shares_its_tiling_and_steps_alike():
    """The one-task loops tile their ratings once (BlockProblem.build(like=...), step.solve_rows's cache):
    the step against new other-side vectors is the same, to the bit, as from a problem built afresh."""
    problem, other, params, mask = _heavy_block(np.random.default_rng(33), "mse")
    row_ptr = np.r_[0, np.cumsum(np.bincount(problem.rows, minlength=len(params)))]
    moved = other + np.random.default_rng(34).normal(0.0, 0.1, other.shape)
    build = dict(row_ptr=row_ptr, cols=problem.cols, other=moved, y=problem.y, offset=problem.offset, loss="mse",
                 reg=0.3, reg_mask=factor_mask(RANK), bias_reg=5.0, bias_mask=bias_mask(RANK, "item"),
                 count_scaled=True)  # fmt: skip
    problem.data_loss(params)  # fills the tile-ordered ratings it lends
    like = BlockProblem.build(**build, like=problem.lender())
    assert like.tiling is problem.tiling and like.__dict__["_tiled"] is problem.__dict__["_tiled"]
    afresh = BlockProblem.build(**build)
    np.testing.assert_array_equal(newton_step(like, params, mask), newton_step(afresh, params, mask))
    cfg = StepConfig(side="item", rank=RANK, loss="mse", reg=0.3, count_scaled=True, bias_reg=5.0)
    cache: dict = {}
    first, _, (data, _) = solve_rows(cfg, row_ptr, problem.cols, problem.y, problem.offset, None, moved,
                                                  params, None, cache=cache)  # fmt: skip
    again, _, (skipped, _) = solve_rows(cfg, row_ptr, problem.cols, problem.y, problem.offset, None, moved, params,
                                        None, data_loss=False, cache=cache)  # fmt: skip
    assert cache["problem"].tiling is not None and np.isfinite(data) and np.isnan(skipped)
    np.testing.assert_array_equal(first, again)


def test_a_newton_steps_reported_loss_is_its_results_loss_from_scratch():
    """The half-step's data loss (remembered from the step's own acceptance test) equals the
    written-out loss of the params it returns, and a caller changing the returned row losses
    leaves the next answer alone."""
    rng = np.random.default_rng(11)
    problem, params, rows, cols, other, y = _problem(rng, n=7, m=5, loss="bce", reg=0.3)
    stepped = newton_step(problem, params, np.r_[np.ones(RANK), 1.0])
    expected = _explicit_loss(stepped, rows, cols, other, y, 0.0, loss="bce")
    losses = problem.row_data_loss(stepped)
    assert losses.sum() == pytest.approx(expected, rel=1e-12)
    losses += 1.0
    assert problem.data_loss(stepped) == pytest.approx(expected, rel=1e-12)
    assert problem.data_loss(params) == pytest.approx(_explicit_loss(params, rows, cols, other, y, 0.0, "bce"))
