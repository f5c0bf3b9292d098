"""The rank step of automatic λ (kernels/truncate.py, train/search_task.py) and the blockwise
fit's settle measure (train/arrow_bodies.py), numpy only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cfspark.kernels.baseline import shrunk_means
from cfspark.kernels.init import initial_params
from cfspark.kernels.truncate import principal_factors, truncated_rank
from cfspark.train.arrow_bodies import moved_squares
from cfspark.train.one_task import csr_by_row
from cfspark.train.search_task import SETTLED, SearchPlan, search_arrays
from cfspark.train.step import StepConfig, solve_rows


def test_principal_factors_keep_the_product_and_truncate_to_its_best_low_rank_approximation():
    rng = np.random.default_rng(0)
    W, X = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    W2, X2, s = principal_factors(W, X)
    np.testing.assert_allclose(W2 @ X2.T, W @ X.T, atol=1e-10)
    assert np.all(np.diff(s) <= 0)
    u, sv, vt = np.linalg.svd(W @ X.T)
    np.testing.assert_allclose(s, sv[:5], rtol=1e-10)
    best2 = (u[:, :2] * sv[:2]) @ vt[:2]  # Eckart–Young: the best rank-2 approximation
    np.testing.assert_allclose(W2[:, :2] @ X2[:, :2].T, best2, atol=1e-10)
    # Each direction is split evenly between the sides.
    np.testing.assert_allclose(np.linalg.norm(W2, axis=0), np.linalg.norm(X2, axis=0), rtol=1e-10)


def test_truncated_rank_takes_the_least_score_and_the_larger_rank_on_a_tie():
    assert truncated_rank(4, lambda j: {1: 3.0, 2: 1.0, 3: 1.0, 4: 2.0}[j]) == (3, [3.0, 1.0, 1.0, 2.0])


def _cfg(side: str, rank: int, reg: float) -> StepConfig:
    return StepConfig(side=side, rank=rank, loss="mse", reg=reg, init_scale=0.1, count_scaled=True, bias_reg=5.0)


def test_a_column_that_is_zero_on_both_sides_stays_zero_under_the_ridge_steps():
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    y = rng.normal(size=2000)
    users = initial_params(np.arange(50), 4, scale=0.3, side="user")
    items = initial_params(np.arange(40) + 99, 4, scale=0.3, side="item")
    users[:, 3], items[:, 3] = 0.0, 0.0
    by_user, by_item = csr_by_row(u, i, 50, y, None, None), csr_by_row(i, u, 40, y, None, None)
    for _ in range(3):
        users, _, _ = solve_rows(_cfg("user", 4, 0.01), *by_user, items, users, None)
        items, _, _ = solve_rows(_cfg("item", 4, 0.01), *by_item, users, items, None)
    assert np.all(users[:, 3] == 0.0) and np.all(items[:, 3] == 0.0)
    assert np.all(np.abs(users[:, :3]).max(axis=0) > 0.01)


def _planted(true_rank: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_users, n_items, n = 300, 200, 24_000
    pairs = rng.choice(n_users * n_items, n, replace=False)
    u, i = pairs // n_items, pairs % n_items
    U, V = (rng.normal(scale=true_rank**-0.25, size=(m, true_rank)) for m in (n_users, n_items))
    y = 3.0 + rng.normal(scale=0.4, size=n_items)[i] + (U[u] * V[i]).sum(1) + rng.normal(scale=noise, size=n)
    return u, i, y


def _search(u, i, y, rank: int, choose_rank: bool):
    held_rows = np.random.default_rng(7).random(len(y)) < 0.1
    fit_rows = ~held_rows
    g = y[fit_rows].mean()
    means, _ = shrunk_means(i[fit_rows], y[fit_rows], None, i.max() + 1, prior=20.0, global_mean=g)
    r = y - means[i]
    s = math.sqrt(np.mean(r[fit_rows] ** 2))
    fit = (u[fit_rows], i[fit_rows], r[fit_rows], None, None)
    held = {"user": u[held_rows], "item": i[held_rows], "y": r[held_rows], "offset": None}
    plan = SearchPlan(start=(0.3, 0.1, 0.03), unit=s, low=1e-4, high=1e2, step=3.0, tol_log=math.log(1.3),
                      first_iter=20, point_iter=6, tol=0.002, centre=(20.0, g))  # fmt: skip
    cfg = [StepConfig(side=side, rank=rank, loss="mse", reg=1.0, init_scale=0.1 * math.sqrt(s), count_scaled=True,
                      bias_reg=5.0) for side in ("user", "item")]  # fmt: skip
    return search_arrays(fit, held, np.arange(u.max() + 1), np.arange(i.max() + 1) + 10**6, *cfg, plan,
                         choose_rank=choose_rank)  # fmt: skip


def test_the_rank_step_finds_a_low_noise_sets_planted_rank_and_drops_the_rest():
    u, i, y = _planted(true_rank=3, noise=0.1)
    record, (users, items) = _search(u, i, y, rank=6, choose_rank=True)
    assert record["rank"] == 3
    assert np.all(users[:, 3:6] == 0.0) and np.all(items[:, 3:6] == 0.0)
    # The full rank, refitted alike, comes first; the kept rank beat it by more than a point's resolution.
    full, kept = record["rank_path"][0], [p for p in record["rank_path"] if p["rank"] == 3][0]
    assert full["rank"] == 6 and kept["score"] < full["score"] * (1 - 1e-3)
    assert [p["rank"] for p in record["rank_path"]] == [6, 5, 4, 3, 2]  # down until a cut does worse


def test_without_the_rank_step_the_search_keeps_every_direction():
    u, i, y = _planted(true_rank=3, noise=0.1)
    record, (users, _) = _search(u, i, y, rank=6, choose_rank=False)
    assert "rank" not in record
    assert np.all(np.abs(users[:, :6]).max(axis=0) > 1e-3)


def test_the_half_steps_moves_add_up_to_the_iterations_and_their_rms_bound_it():
    """train/trainer.py's settle rule: the user half-step's move (W₁ − W₀)·X₀ plus the item
    half-step's W₁·(X₁ − X₀) is the iteration's move W₁X₁ − W₀X₀, row for row."""
    rng = np.random.default_rng(3)
    u, i = rng.integers(0, 40, 500), rng.integers(0, 30, 500)
    W0, W1, X0, X1 = (rng.normal(size=(n, 4)) for n in (40, 40, 30, 30))
    user_ptr, user_cols = csr_by_row(u, i, 40)
    item_ptr, item_cols = csr_by_row(i, u, 30)
    users = moved_squares(user_ptr, user_cols, W1 - W0, X0, chunk=64)
    items = moved_squares(item_ptr, item_cols, X1 - X0, W1, chunk=1000)
    delta_u = np.einsum("ij,ij->i", (W1 - W0)[u], X0[i])
    delta_i = np.einsum("ij,ij->i", W1[u], (X1 - X0)[i])
    assert users == pytest.approx(np.sum(delta_u**2), rel=1e-12)
    assert items == pytest.approx(np.sum(delta_i**2), rel=1e-12)
    whole = np.einsum("ij,ij->i", W1[u], X1[i]) - np.einsum("ij,ij->i", W0[u], X0[i])
    np.testing.assert_allclose(delta_u + delta_i, whole, atol=1e-12)
    rms = np.sqrt(np.mean(whole**2))
    assert rms <= np.sqrt(users / 500) + np.sqrt(items / 500)


def test_the_one_task_fit_after_the_search_stops_on_the_settle_bound_even_at_the_end_of_the_range():
    """A search that ends at the bottom of its range (here 0.01, where the score still falls
    measurably) chooses a clamped λ; the fit must still find that λ's validation RMSE among
    the path's points and stop on the settle bound, not fall back to tol."""
    import pyarrow as pa

    from cfspark.core.schema import ITEM, OFFSET, TARGET, USER, WEIGHT
    from cfspark.train.one_task import ITEM_KEY, KIND, RECORD_COL, USER_KEY
    from cfspark.train.search_task import HELD, _search_and_fit_body

    u, i, y = _planted(true_rank=3, noise=0.1)
    held = (np.random.default_rng(7).random(len(y)) < 0.1).astype(np.int32)
    nan = pa.array(np.full(len(y), np.nan))
    table = pa.table({USER: pa.array(u), ITEM: pa.array(i), TARGET: pa.array(y), OFFSET: nan, WEIGHT: nan,
                      HELD: pa.array(held), USER_KEY: pa.array(u * 7 + 1), ITEM_KEY: pa.array(i * 11 + 3)})  # fmt: skip
    r = y[held == 0]
    s = float(np.sqrt(np.mean((r - r.mean()) ** 2)))
    plan = SearchPlan(start=(0.3, 0.1, 0.03), unit=s, low=1e-2, high=1e2, step=3.0, tol_log=math.log(1.3),
                      first_iter=20, point_iter=6, tol=0.002, centre=(20.0, float(r.mean())))  # fmt: skip
    cfg = [StepConfig(side=side, rank=6, loss="mse", reg=1.0, init_scale=0.1 * math.sqrt(s), count_scaled=True,
                      bias_reg=5.0) for side in ("user", "item")]  # fmt: skip
    (batch,) = _search_and_fit_body(*cfg, plan, 20)(iter(table.to_batches()))
    record = json.loads(batch.column(RECORD_COL)[batch.num_rows - 1].as_py())
    assert batch.column(KIND)[batch.num_rows - 1].as_py() == 2
    found = record["search"]
    assert found["reg"] == pytest.approx(1e-2) and found["at_limit"]
    # At the full rank, 0.01 beats 0.03 by more than the search resolves: the range's end, not a flat end.
    first = [p for p in found["path"] if p["rank"] == cfg[0].rank]
    (end,) = [p["rmse"] for p in first if math.isclose(p["reg"], 1e-2, rel_tol=1e-9)]
    (inner,) = [p["rmse"] for p in first if math.isclose(p["reg"], 0.03, rel_tol=1e-9)]
    assert end < inner * (1 - SETTLED)
    assert record["stop"].startswith("settled"), record["stop"]
