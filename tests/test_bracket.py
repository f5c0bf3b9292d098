"""The λ search kernel (kernels/bracket.py) on planted score curves, without Spark: it widens
past either end of its start grid, ends within one refinement step of the best λ on a fine
grid, and never calls outside its hard range. Also without Spark: the fold's item means
(kernels/baseline.py) and the settle rule that ends the fit at the chosen λ."""

from __future__ import annotations

import math

import numpy as np
import pytest
from planted import planted_ratings

from cfspark.kernels.baseline import shrunk_means
from cfspark.kernels.bracket import bracket_search
from cfspark.train import one_task
from cfspark.train.one_task import csr_by_row, fit_arrays, predictions
from cfspark.train.step import StepConfig

START = (0.3, 0.1, 0.03)
TOL = math.log(1.25)


def _curve(best: float, *, skew: float = 0.0):
    """A validation-like score of log λ: a floor at best, steeper on one side when skewed."""

    def score(reg: float) -> float:
        d = math.log(reg) - math.log(best)
        return 1.0 + 0.02 * d * d * (1.0 + skew * math.tanh(d)) + 0.001 * d**4

    return score


def _fine_best(score, low: float, high: float) -> float:
    grid = np.exp(np.linspace(math.log(low), math.log(high), 20001))
    return float(grid[np.argmin([score(r) for r in grid])])


@pytest.mark.parametrize(
    ("best", "skew", "widened"),
    [(0.0012, 0.0, "down"), (0.004, 0.5, "down"), (4.0, -0.5, "up"), (17.0, 0.0, "up"), (0.07, 0.3, "")],
)
def test_search_brackets_past_the_start_grid_and_ends_within_a_step(best, skew, widened):
    calls: list[float] = []
    curve = _curve(best, skew=skew)

    def score(reg: float) -> float:
        calls.append(reg)
        return curve(reg)

    found = bracket_search(score, start=START, tol=TOL)
    assert found.widened == widened
    assert not found.at_limit
    assert calls[:3] == list(START)  # the start grid first, in the order given (warm starts)
    assert [reg for reg, _ in found.path] == calls  # each point once, in the order called
    fine = _fine_best(curve, 1e-4, 1e2)
    assert abs(math.log(found.reg) - math.log(fine)) <= TOL
    assert found.score == min(s for _, s in found.path) == curve(found.reg)
    # Bracketed: the chosen λ has a worse neighbour on both sides among the points called.
    regs = sorted(r for r, _ in found.path)
    i = regs.index(found.reg)
    assert 0 < i < len(regs) - 1
    assert curve(regs[i - 1]) > found.score < curve(regs[i + 1])


@pytest.mark.parametrize("resolution", [0.0, 1e-3])
@pytest.mark.parametrize(("best", "end"), [(1e-7, 1e-3), (1e5, 10.0)])
def test_search_never_calls_outside_its_hard_range(best, end, resolution):
    low, high = (1e-3, 10.0)
    calls: list[float] = []
    curve = _curve(best)

    def score(reg: float) -> float:
        calls.append(reg)
        return curve(reg)

    found = bracket_search(score, start=START, low=low, high=high, resolution=resolution)
    assert all(low <= reg <= high for reg in calls)
    assert found.at_limit and found.reg == pytest.approx(end)


def test_failed_points_count_as_worst_and_the_call_budget_holds():
    curve = _curve(0.05)
    found = bracket_search(lambda reg: None if reg < 0.02 else curve(reg), start=START, tol=1e-9, max_calls=9)
    assert len(found.path) == 9
    assert all(reg >= 0.02 or math.isinf(s) for reg, s in found.path)
    assert found.reg >= 0.02
    with pytest.raises(ValueError, match="step > 1"):
        bracket_search(curve, start=START, step=1.0)


# The search's numpy pieces: the fold's item means, and the settle rule of the fit at the choice.


def test_shrunk_means_are_the_posterior_means_of_data_normalise():
    rng = np.random.default_rng(5)
    item = rng.integers(0, 6, size=40)
    item[item == 4] = 5  # item 4 has no rows
    y, a = rng.normal(3.0, 1.0, size=40), rng.uniform(0.5, 2.0, size=40)
    means, counts = shrunk_means(item, y, a, 6, prior=2.0, global_mean=3.5)
    for i in range(6):
        rows = item == i
        assert counts[i] == rows.sum()
        assert means[i] == pytest.approx((np.sum(a[rows] * y[rows]) + 2.0 * 3.5) / (np.sum(a[rows]) + 2.0), rel=1e-12)
    assert means[4] == 3.5
    plain, _ = shrunk_means(item, y, None, 6, prior=0.0, global_mean=3.5)  # the course's plain mean; none at g
    assert plain[0] == pytest.approx(y[item == 0].mean(), rel=1e-12) and plain[4] == 3.5


def _planted_arrays(seed: int):
    p = planted_ratings(n_users=120, n_items=80, rank=3, density=0.3, noise=0.3, seed=seed)
    y = p.ratings - np.bincount(p.items, weights=p.ratings)[p.items] / np.bincount(p.items)[p.items]
    keys_u, keys_i = np.arange(120, dtype=np.int64) * 7919, np.arange(80, dtype=np.int64) * 104729
    return p, y, keys_u, keys_i


def test_the_fit_at_the_choice_stops_once_an_iteration_cannot_move_an_rmse_by_more_than_settle():
    p, y, keys_u, keys_i = _planted_arrays(3)
    cfg = {side: StepConfig(side=side, rank=3, loss="mse", reg=0.05, init_scale=0.1, count_scaled=True)
           for side in ("user", "item")}  # fmt: skip
    settle = 1e-3
    _, _, history, stop = fit_arrays(p.users, p.items, y, None, None, keys_u, keys_i, cfg["user"], cfg["item"],
                                     max_iter=200, tol=0.5, settle=settle)  # fmt: skip
    moved = [entry["moved"] for entry in history]
    # A tol of 0.5 would have stopped after the second iteration; the settle rule runs on
    # until the predictions move by at most settle (RMS), which bounds any RMSE's change.
    assert stop.startswith("settled") and len(history) > 2
    assert moved[-1] <= settle < min(moved[:-1])
    W, X, _, _ = fit_arrays(p.users, p.items, y, None, None, keys_u, keys_i, cfg["user"], cfg["item"],
                            max_iter=len(history) - 1, tol=0.0)  # fmt: skip
    W2, X2, _, _ = fit_arrays(p.users, p.items, y, None, None, keys_u, keys_i, cfg["user"], cfg["item"],
                              max_iter=1, tol=0.0, start=(W, X))  # fmt: skip
    before, after = predictions(W, X, p.users, p.items), predictions(W2, X2, p.users, p.items)
    assert np.sqrt(np.mean((after - before) ** 2)) == pytest.approx(moved[-1], rel=1e-9)
    rmse = [np.sqrt(np.mean((z - y) ** 2)) for z in (before, after)]
    assert abs(rmse[1] - rmse[0]) <= moved[-1]


def test_csr_by_row_keeps_each_rows_ratings_in_input_order():
    """csr_by_row: row r's ratings are rows[row_ptr[r]:row_ptr[r + 1]] of the CSR arrays, in
    the order the input gave them, each value carried with its own rating; a row with no
    ratings is empty."""
    rng = np.random.default_rng(4)
    own, other, y = rng.integers(0, 30, 500), rng.integers(0, 1000, 500), rng.normal(size=500)
    own[own == 7] = 8  # row 7 has no ratings
    row_ptr, cols, values, missing = csr_by_row(own, other, 31, y, None)
    assert missing is None and row_ptr[0] == 0 and row_ptr[-1] == 500 and row_ptr[8] == row_ptr[7]
    for r in range(31):
        mine = np.flatnonzero(own == r)  # ascending: the input's order
        np.testing.assert_array_equal(cols[row_ptr[r] : row_ptr[r + 1]], other[mine])
        np.testing.assert_array_equal(values[row_ptr[r] : row_ptr[r + 1]], y[mine])


def test_predictions_score_every_row_across_the_chunks_they_are_taken_in():
    """predictions scores SCORE_ROWS rows at a time: each row's w·x + b + c (the param rows'
    dot product) for a count of rows that is not a multiple of the chunk, and none."""
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(50, 6)), rng.normal(size=(40, 6))
    n = 2 * one_task.SCORE_ROWS + 17
    u, i = rng.integers(0, 50, n), rng.integers(0, 40, n)
    expected = np.array([users[a] @ items[b] for a, b in zip(u, i, strict=True)])
    np.testing.assert_allclose(predictions(users, items, u, i), expected, rtol=1e-12, atol=1e-12)
    assert predictions(users, items, u[:0], i[:0]).shape == (0,)


@pytest.mark.parametrize(("best", "skew"), [(0.07, 0.3), (4.0, -0.5), (0.0012, 0.0)])
def test_refinement_stops_once_both_ends_of_the_bracket_score_within_resolution(best, skew):
    curve = _curve(best, skew=skew)
    resolution = 1e-3
    full = bracket_search(curve, start=START, tol=TOL)
    found = bracket_search(curve, start=START, tol=TOL, resolution=resolution)
    # No more points, and the choice scores within resolution of the fine grid's best.
    assert len(found.path) <= len(full.path)
    fine = _fine_best(curve, 1e-4, 1e2)
    assert found.score <= curve(fine) * (1 + resolution)
    # It stopped because both neighbours are within resolution, or the bracket is tol wide, or
    # one neighbour is within resolution and the other at most tol away.
    regs = sorted(r for r, _ in found.path)
    i = min(range(len(regs)), key=lambda j: abs(math.log(regs[j] / found.reg)))
    a, c = regs[i - 1], regs[i + 1]
    flat_a, flat_c = (curve(r) <= found.score * (1 + resolution) for r in (a, c))
    steep_width = math.log(c / found.reg) if flat_a else math.log(found.reg / a)
    assert (flat_a and flat_c) or math.log(c / a) <= TOL or (flat_a != flat_c and steep_width <= TOL)


def test_a_flat_side_of_the_bracket_is_not_probed():
    # Worse by 0.05 % everywhere below 0.1 (within resolution), steep above.
    def curve(reg: float) -> float:
        d = math.log(reg / 0.1)
        return 1.0 + 0.0005 * (d < 0) + 0.05 * max(d, 0.0) ** 2

    found = bracket_search(curve, start=START, tol=TOL, resolution=1e-3)
    assert found.reg == pytest.approx(0.1)
    # Below 0.1 only the start grid's 0.03 is scored: the side is flat, and it is not probed.
    assert [r for r, _ in found.path if r < 0.1 * (1 - 1e-9)] == pytest.approx([0.03])
    assert len(found.path) < len(bracket_search(curve, start=START, tol=TOL).path)


def test_a_start_a_tol_wide_whose_end_gains_too_little_for_a_step_ends_the_widening():
    # Falling gently all the way to 30; a start a tenth of a step wide around 0.3 (as a second
    # bracket's is): a step of 3 past its top end gains under 0.1 %.
    def curve(reg: float) -> float:
        return 1.0 + 1e-5 * math.log(reg / 30.0) ** 2

    half = math.exp(TOL / 2)  # the search's second bracket starts a tol wide (train/search_task.py)
    start = (0.3, 0.3 / half, 0.3 * half)
    found = bracket_search(curve, start=start, tol=TOL, resolution=1e-3)
    full = bracket_search(curve, start=start, tol=TOL)
    assert found.reg == pytest.approx(start[2]) and found.widened == "" and not found.at_limit
    assert [r for r, _ in found.path] == pytest.approx(list(start))
    assert full.widened == "up" and full.reg > 10.0  # without a resolution it walks to the floor
    # What it leaves is within resolution of the floor's score.
    assert found.score <= full.score * (1 + 1e-3)
    # From the start grid, a step apart, the same curve is widened as before: the end is not placed.
    assert bracket_search(curve, start=START, tol=TOL, resolution=1e-3).widened == "up"


def test_an_exact_tie_at_an_end_is_a_plateau_and_the_widening_goes_on():
    # One model (scored 1.0) for every λ from 0.02 up, as collapsed factors are; below it the
    # score falls to its best at 0.004.
    def curve(reg: float) -> float:
        return 1.0 if reg >= 0.02 else 1.0 - 0.05 + 0.02 * math.log(reg / 0.004) ** 2

    found = bracket_search(curve, start=START, tol=TOL, resolution=1e-3)
    assert found.widened == "down"
    assert abs(math.log(found.reg / 0.004)) <= TOL


def test_a_small_gain_just_past_a_plateau_is_not_a_flat_end():
    # Collapsed factors: one score for every λ from 0.02 up. Just below, the factors barely
    # switch on (0.05 % better at 0.01); further down the score falls to 0.95 at 0.002.
    def curve(reg: float) -> float:
        if reg >= 0.02:
            return 1.0
        return 0.95 + 0.0495 * min(1.0, (math.log(reg / 0.002) / math.log(5.0)) ** 2)

    found = bracket_search(curve, start=(0.3, 0.1, 0.03), tol=TOL, resolution=1e-3)
    assert curve(0.01) == pytest.approx(0.9995)
    assert found.widened == "down" and abs(math.log(found.reg / 0.002)) <= TOL


def test_a_gain_over_a_narrow_gap_counts_at_the_widening_steps_width():
    # A start a tenth of a step wide (as a second bracket's is) around 0.9, on a parabola in
    # log λ with its floor at 0.05: the 0.06 % gain across the narrow gap is a fall of about
    # 0.6 % over one widening step, not a flat end.
    def curve(reg: float) -> float:
        return 1.0 + 0.001 * math.log(reg / 0.05) ** 2

    half = math.exp(TOL / 2)
    start = (0.9, 0.9 / half, 0.9 * half)
    assert curve(start[0]) - curve(start[1]) < 1e-3 * curve(start[1])
    found = bracket_search(curve, start=start, tol=TOL, resolution=1e-3)
    assert found.widened == "down" and found.score <= 1.0 + 1e-3


def test_with_one_side_flat_refinement_stops_once_the_other_side_is_tol_wide():
    # Flat above 0.1 (within resolution), a parabola below whose probes stay measurably worse
    # for many golden steps: the flat side's width must not keep the search going.
    def curve(reg: float) -> float:
        d = math.log(reg / 0.1)
        return 1.0 + 0.05 * min(d, 0.0) ** 2 + 1e-7 * max(d, 0.0)

    found = bracket_search(curve, start=START, tol=TOL, resolution=1e-6)
    full = bracket_search(curve, start=START, tol=TOL)
    assert found.reg == pytest.approx(0.1) and full.reg == pytest.approx(0.1)
    below = sorted(r for r, _ in found.path if r < 0.1 * (1 - 1e-9))
    # It stopped with the probed side at most tol wide, after fewer calls than tol alone needs.
    assert math.log(0.1 / below[-1]) <= TOL < math.log(0.1 / below[-2])
    assert len(found.path) < len(full.path)


def test_the_fit_at_the_choice_also_stops_once_its_training_rmse_is_still():
    p, y, keys_u, keys_i = _planted_arrays(3)
    cfg = {side: StepConfig(side=side, rank=3, loss="mse", reg=0.05, init_scale=0.1, count_scaled=True)
           for side in ("user", "item")}  # fmt: skip
    still = 1e-3

    def fit(iterations: int, **kw):
        return fit_arrays(p.users, p.items, y, None, None, keys_u, keys_i, cfg["user"], cfg["item"],
                          max_iter=iterations, **kw)  # fmt: skip

    _, _, history, stop = fit(200, tol=0.0, settle=1e-9, still=still)
    n = len(history)
    assert stop.startswith("settled: the training RMSE") and 2 <= n < 200

    def rmse(iterations: int) -> float:
        W, X, _, _ = fit(iterations, tol=0.0)
        return float(np.sqrt(np.mean((predictions(W, X, p.users, p.items) - y) ** 2)))

    # The last iteration changed the training RMSE by at most still of it; the one before, by more.
    last = [rmse(k) for k in (n - 2, n - 1, n)]
    assert abs(last[2] - last[1]) <= still * last[1]
    assert n == 2 or abs(last[1] - last[0]) > still * last[0]


def test_a_callable_resolution_is_asked_at_each_decision_on_the_points_so_far():
    curve = _curve(0.07, skew=0.3)
    # Asked as a function, a constant gives the path of the same number.
    same = bracket_search(curve, start=START, tol=TOL, resolution=lambda: 1e-3)
    assert same.path == bracket_search(curve, start=START, tol=TOL, resolution=1e-3).path
    # A resolution that the points resolve only once there are five: refinement goes on to the
    # fifth point, then stops there, as both ends of the bracket score within it.
    calls: list[float] = []

    def score(reg: float) -> float:
        calls.append(reg)
        return curve(reg)

    found = bracket_search(score, start=START, tol=TOL, resolution=lambda: 0.0 if len(calls) < 5 else 1.0)
    assert len(found.path) == 5
    assert len(bracket_search(curve, start=START, tol=TOL).path) > 5
