"""Item baselines on local arrays: the shrunk item mean of data/normalise.py, in numpy.

The one-task λ search centres each fold on its own item means inside its task, so the
validation fold never shapes the baseline it is scored against, and no Spark job is
spent on a fold's aggregation.
"""

from __future__ import annotations

import numpy as np


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
