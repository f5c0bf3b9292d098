"""A search for the λ that minimises a validation score, in log λ, that cannot run off its end.

It evaluates a start grid, widens past whichever end is best (a factor `step` at a time)
until the best point has a worse neighbour on both sides, then narrows that bracket by
golden-section steps in log λ until it is at most `tol` wide (in log λ). A hard range
[low, high] bounds every call: an end of it that is best ends the widening there. With a
`resolution`, scores within it of the best are ties: an end of the points that beats its
neighbour only by a tie also ends the widening, and a side of the bracket that ties is not
probed.

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
    resolution: float = 0.0,
) -> Bracketed:
    """Minimise score(λ) over λ in [low, high]: widen until bracketed, then golden-section to tol.

    start is evaluated in the order given (strong to weak λ suits warm starts); step > 1 is
    the widening factor; tol is the final bracket's width in log λ; max_calls caps the calls.
    """
    if step <= 1.0 or not 0 < low < high or tol <= 0:
        raise ValueError(f"bracket_search needs step > 1, 0 < low < high and tol > 0, got {step}, {low}, {high}, {tol}")
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
        if i in (0, len(keys) - 1) and len(keys) > 1 and resolution > 0:
            # An end that beats its neighbour by less than resolution is a flat end: on a score
            # convex in log λ each step beyond it gains less than this one did, so none gains
            # measurably, and widening would only pay for points that tie. An exact tie is not
            # flat but one model scored twice (a caller's plateau, such as collapsed factors),
            # past which the score may still fall: the widening goes on.
            inner = points[keys[1] if i == 0 else keys[-2]]
            if points[best] < inner <= points[best] + resolution * abs(points[best]):
                break
        if i == 0 and best > math.log(low) + 1e-12:
            call(math.exp(best) / step)
            widened += [] if "down" in widened else ["down"]
        elif i == len(keys) - 1 and best < math.log(high) - 1e-12:
            call(math.exp(best) * step)
            widened += [] if "up" in widened else ["up"]
        else:
            at_limit = i in (0, len(keys) - 1)
            break
    if not at_limit:
        _refine(points, call, tol=tol, resolution=resolution, calls_left=lambda: len(order) < max_calls)
    best = min(points, key=lambda k: (points[k], k))
    return Bracketed(scored[best], points[best], order, ",".join(widened), at_limit)


def _refine(points: dict[float, float], call: Callable[[float], float], *, tol: float, resolution: float,
            calls_left) -> None:  # fmt: skip
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
        # An end that scores within resolution of the best is a flat side: no λ on it scores
        # measurably better than the best, so it is not probed.
        flat_low, flat_high = (points[k] <= points[b] + resolution * abs(points[b]) for k in (a, c))
        if resolution > 0 and flat_low and flat_high:
            return
        # With one side flat, only the other side's width says how well the best is placed.
        if resolution > 0 and flat_low != flat_high and (c - b if flat_low else b - a) <= tol:
            return
        # Probe the larger side of the best point that is not flat, a golden fraction of the way in.
        up = flat_low if resolution > 0 and flat_low != flat_high else c - b >= b - a
        trial = b + GOLDEN * (c - b) if up else b - GOLDEN * (b - a)
        before = len(points)
        call(math.exp(trial))
        if len(points) == before:  # the bracket is narrower than float resolution
            return
