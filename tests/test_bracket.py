"""The λ search kernel (kernels/bracket.py) on planted score curves, without Spark: it widens
past either end of its start grid, ends within one refinement step of the best λ on a fine
grid, and never calls outside its hard range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cfspark.kernels.bracket import bracket_search

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


@pytest.mark.parametrize(("best", "end"), [(1e-7, 1e-3), (1e5, 10.0)])
def test_search_never_calls_outside_its_hard_range(best, end):
    low, high = (1e-3, 10.0)
    calls: list[float] = []
    curve = _curve(best)

    def score(reg: float) -> float:
        calls.append(reg)
        return curve(reg)

    found = bracket_search(score, start=START, low=low, high=high)
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
