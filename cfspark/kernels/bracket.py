"""A search for the λ that minimises a validation score, in log λ, that cannot run off its end.

It evaluates a start grid, widens past whichever end is best (a factor `step` at a time)
until the best point has a worse neighbour on both sides, then narrows that bracket by
golden-section steps in log λ until it is at most `tol` wide (in log λ). A hard range
[low, high] bounds every call: an end of it that is best ends the widening there.

With a `resolution` (relative to the best score), differences within it are below what the
caller's points resolve; a callable resolution is asked again at each decision, so a caller
can measure it on the points scored so far. An end of the points at most `tol` from its
neighbour, that the score falls into but whose next step could gain no more than that, is a
flat end and also ends the widening (it arises where a start is narrower than a step, as
when a caller brackets again around an earlier choice); a side of the bracket whose end
scores within it of the best is not probed.

The scorer is called in the order the search needs the points, so a caller can warm-start
each fit from the previous one. A score that is None or NaN counts as worse than any number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

GOLDEN = (3.0 - math.sqrt(5.0)) / 2.0  # 0.382: the golden section's smaller part


@dataclass
class Bracketed:
    """The chosen λ and how it was found: every (λ, score) in the order evaluated."""

    reg: float
    score: float
    path: list[tuple[float, float]] = field(default_factory=list)
    widened: str = ""  # "", "down", "up" or "down,up": past which end of the start grid it went
    at_limit: bool = False  # the best λ is an end of the hard range: the optimum may lie beyond


def _value(score: float | None) -> float:
    return math.inf if score is None or not math.isfinite(score) else float(score)


def bracket_search(
    score: Callable[[float], float | None],
    *,
    start: Sequence[float],
    step: float = 3.0,
    tol: float = math.log(1.25),
    low: float = 1e-4,
    high: float = 1e2,
    max_calls: int = 30,
    resolution: float | Callable[[], float] = 0.0,
) -> Bracketed:
    """Minimise score(λ) over λ in [low, high]: widen until bracketed, then golden-section to tol.

    start is evaluated in the order given (strong to weak λ suits warm starts); step > 1 is
    the widening factor; tol is the final bracket's width in log λ; max_calls caps the calls;
    resolution (0: none) is the relative score difference the caller's points resolve, or
    a function that gives it.
    """
    if step <= 1.0 or not 0 < low < high or tol <= 0:
        raise ValueError(f"bracket_search needs step > 1, 0 < low < high and tol > 0, got {step}, {low}, {high}, {tol}")
    resolved = resolution if callable(resolution) else lambda: resolution
    points: dict[float, float] = {}  # log λ → score
    scored: dict[float, float] = {}  # log λ → the λ scored (exp(log λ) may differ from it in the last bit)
    order: list[tuple[float, float]] = []

    def call(reg: float) -> float:
        reg = min(high, max(low, reg))
        key = math.log(reg)
        if key not in points:
            points[key], scored[key] = _value(score(reg)), reg
            order.append((reg, points[key]))
        return points[key]

    for reg in start:
        call(reg)
    widened: list[str] = []
    at_limit = False
    while len(order) < max_calls:
        keys = sorted(points)
        best = min(keys, key=lambda k: (points[k], k))
        i = keys.index(best)
        if i == 0 and best > math.log(low) + 1e-12:
            if _flat_end(points, keys[:3], step, resolved(), tol):
                break
            call(math.exp(best) / step)
            widened += [] if "down" in widened else ["down"]
        elif i == len(keys) - 1 and best < math.log(high) - 1e-12:
            if _flat_end(points, keys[::-1][:3], step, resolved(), tol):
                break
            call(math.exp(best) * step)
            widened += [] if "up" in widened else ["up"]
        else:
            at_limit = i in (0, len(keys) - 1)
            break
    if not at_limit:
        _refine(points, call, tol=tol, resolution=resolved, calls_left=lambda: len(order) < max_calls)
    best = min(points, key=lambda k: (points[k], k))
    return Bracketed(scored[best], points[best], order, ",".join(widened), at_limit)


def _flat_end(points: dict[float, float], last: list[float], step: float, resolution: float, tol: float) -> bool:
    """Whether the best point, last[0], is a flat end of the points: its inner neighbour is at
    most tol away (in log λ), the score falls strictly through last (the end and its two
    nearest neighbours), and the fall into the end, taken over one more widening step at its
    slope, gains at most resolution.

    On a score convex in log λ the slope only flattens towards the minimum, so no step past
    a flat end gains measurably, and the side towards the inner neighbour is as narrow as
    refinement leaves a bracket with one flat side: the end is placed. An exact tie between
    the neighbours is one model scored twice (a caller's plateau, such as collapsed factors),
    past which the score may still fall steeply: the widening goes on."""
    if resolution <= 0 or len(last) < 3:
        return False
    gap = abs(last[1] - last[0])
    end, inner, beyond = (points[k] for k in last)
    if gap > tol + 1e-12 or not end < inner < beyond:
        return False
    return (inner - end) * math.log(step) / gap <= resolution * abs(end)


def _refine(points: dict[float, float], call: Callable[[float], float], *, tol: float,
            resolution: Callable[[], float], calls_left) -> None:  # fmt: skip
    """Golden-section steps on the bracket around the best point until it is at most tol wide,
    or until both its ends score within resolution (relative) of the best, or until one end
    does and the side towards the other is at most tol wide."""
    while calls_left():
        keys = sorted(points)
        i = min(range(len(keys)), key=lambda j: (points[keys[j]], keys[j]))
        if i in (0, len(keys) - 1):
            return
        a, b, c = keys[i - 1], keys[i], keys[i + 1]
        if c - a <= tol:
            return
        res = resolution()
        # An end that scores within resolution of the best is a flat side: no λ on it scores
        # measurably better than the best, so it is not probed.
        flat_low, flat_high = (points[k] <= points[b] + res * abs(points[b]) for k in (a, c))
        if res > 0 and flat_low and flat_high:
            return
        # With one side flat, only the other side's width says how well the best is placed.
        if res > 0 and flat_low != flat_high and (c - b if flat_low else b - a) <= tol:
            return
        # Probe the larger side of the best point that is not flat, a golden fraction of the way in.
        up = flat_low if res > 0 and flat_low != flat_high else c - b >= b - a
        trial = b + GOLDEN * (c - b) if up else b - GOLDEN * (b - a)
        before = len(points)
        call(math.exp(trial))
        if len(points) == before:  # the bracket is narrower than float resolution
            return
