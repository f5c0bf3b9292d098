"""The zero-factor saddle, and the rules that keep a walk over λ, and the fit after it, off it.

Zero factors are a stationary point of the loss at every λ: with W = 0 the gradient in X
is 0, and the other way round, so the half-steps leave zero factors at zero and move only
the biases. At a strong λ it is the minimum; at a weaker one it is a saddle, and factors
near it (a small init, or factors a stronger λ shrank) grow away from it geometrically,
by a few tens of per cent an iteration, while the loss and any score barely move: they
move with the square of the factors. So a walk over λ (train/search_task.py,
fit/rank_search.py) keeps two rules:

- a point whose factor term still grows by more than GROWING an iteration has not settled;
- the next point starts from the hashed init instead of factors that collapsed below
  COLLAPSED of the init's scale.

A fit at the chosen λ starts from the search's factors there (search_task.py's
start_from_search): from the hashed init, whose factors shrink for an iteration or two
before they grow, its loss moves by less than tol and it stops at the saddle.
"""

from __future__ import annotations

import numpy as np

# A point whose factor term grew by more than this fraction in its last iteration is leaving
# the saddle (there the term grows geometrically while the loss barely moves): not settled.
GROWING = 0.1
# Factors whose scale (factor_scale) fell below this share of the init's have collapsed onto
# zero: a warm start from them would sit at the saddle, so the next point starts from the init.
COLLAPSED = 0.1


def factor_scale(users: np.ndarray, items: np.ndarray, rank: int) -> float:
    """√(mean W² · mean X²): the size of the factor term W·Xᵀ, whatever its split between sides."""
    return float(np.sqrt(np.mean(users[:, :rank] ** 2) * np.mean(items[:, :rank] ** 2)))


def growing(before: float | None, after: float | None) -> bool:
    """Whether a factor size went from before to after by more than GROWING (False if either is unknown)."""
    return before is not None and after is not None and after > (1.0 + GROWING) * before


def collapsed(params: tuple[np.ndarray, np.ndarray], init: tuple[np.ndarray, np.ndarray], rank: int) -> bool:
    """Whether the (users, items) factors' scale in their first rank directions fell below
    COLLAPSED of the init's."""
    return factor_scale(*params, rank) < COLLAPSED * factor_scale(*init, rank)


def warm_start(params: tuple[np.ndarray, np.ndarray], init: tuple[np.ndarray, np.ndarray],
               rank: int) -> tuple[tuple[np.ndarray, np.ndarray], bool]:  # fmt: skip
    """(the params the next point of a walk over λ starts from, whether they are the init's):
    params themselves, or a copy of init, its directions past rank zeroed, if params collapsed."""
    if not collapsed(params, init, rank):
        return params, False
    users, items = (side.copy() for side in init)
    users[:, rank:-2] = items[:, rank:-2] = 0.0  # the factor columns past rank; the last two are the bias and 1
    return (users, items), True


def nearest(fitted: dict[float, tuple], key: float) -> float:
    """The key of fitted (log λ of points whose factors did not collapse) nearest key; a tie
    goes to the stronger λ, whose factors are the simpler model."""
    return min(fitted, key=lambda k: (abs(k - key), -k))


def keep_near_best(fitted: dict[float, tuple[float, ...]], keep: int = 3) -> None:
    """Drop from fitted (log λ → (score, params...)) all but the best-scoring point and the
    points nearest it, keep in all: a bracketing search probes beside its best point or past
    it, so the nearest start for any later probe is among these, and the rest need no memory."""
    best = min(fitted, key=lambda k: (fitted[k][0], k))
    for k in sorted(fitted, key=lambda k: (abs(k - best), -k))[keep:]:
        del fitted[k]
