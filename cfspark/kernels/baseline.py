"""Item baselines on local arrays: the shrunk item mean of data/normalise.py, in numpy.

The one-task λ search centres each fold on its own item means inside its task, so the
validation fold never shapes the baseline it is scored against, and no Spark job is
spent on a fold's aggregation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cfspark.kernels.priors import prior_from_rows


def shrunk_means(
    item: np.ndarray, rating: np.ndarray, weight: np.ndarray | None, n_items: int, *, prior: float, global_mean: float
) -> tuple[np.ndarray, np.ndarray]:
    """(μ, counts) per local item 0..n_items−1: μ_i = (Σ a·y + m·g) / (Σ a + m), an item
    with no rows (and m = 0) at g; counts the rows per item."""
    a = np.ones(len(item)) if weight is None else weight
    sums = np.bincount(item, weights=a * rating, minlength=n_items)
    mass = np.bincount(item, weights=a, minlength=n_items)
    counts = np.bincount(item, minlength=n_items).astype(np.int64)
    denom = mass + prior
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(denom > 0, (sums + prior * global_mean) / np.where(denom > 0, denom, 1.0), global_mean)
    return means, counts


def spread_of(mean_square: float) -> float:
    """The targets' spread s from their weighted mean square: its root to 12 significant digits,
    and 1 where there is no spread to scale by (constant ratings). The rounding makes s the same
    whichever order a cluster adds its sums in, and s enters λ in ALS's units, which a resumed
    run's checkpoint fingerprint must match."""
    s = float(f"{math.sqrt(max(0.0, mean_square)):.12g}")
    return s if s > 0 else 1.0


class TargetMoments(NamedTuple):
    global_mean: float  # g
    prior: float  # m
    spread: float  # s
    means: np.ndarray  # μ_i per local item
    counts: np.ndarray  # the rows per local item


def target_moments(
    item: np.ndarray, rating: np.ndarray, weight: np.ndarray | None, n_items: int, *,
    prior: float | None, global_mean: float | None,
) -> TargetMoments:  # fmt: skip
    """g, m and s of every row, as fit/targets.py's target_stats takes them in Spark: the
    weighted mean rating g and the item means' prior count m (kernels/priors.py) where not
    given, and the spread s of the targets y − μ_i (spread_of), μ_i shrunk by m towards g;
    with those μ_i and counts (shrunk_means'), which the fit's targets are. A one-task fit
    takes them from the rows it holds, saving the Spark jobs that would."""
    a = np.ones(len(rating)) if weight is None else weight
    mass = float(a.sum())
    g = float(np.dot(a, rating) / mass) if global_mean is None else global_mean
    m = prior_from_rows(item, rating, weight, n_items) if prior is None else prior
    means, counts = shrunk_means(item, rating, weight, n_items, prior=m, global_mean=g)
    centred = rating - means[item]
    return TargetMoments(g, m, spread_of(float(np.dot(a * centred, centred) / mass)), means, counts)
