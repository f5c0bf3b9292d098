"""Repeated (own, other) pairs, found by comparing neighbours once the pairs are sorted.

A fit orders each user's ratings anyway (the packed blocks sort them by item), so a repeated
(user, item) pair is a run of equal neighbours there: the estimator's duplicate check costs
a comparison, not a shuffle of every pair (data/validate.py's, which the job still runs).
"""

from __future__ import annotations

import numpy as np

# (how many pairs repeat, own, other of the pair with the most rows, its rows)
Repeats = tuple[int, int, int, int]


def sorted_repeats(own: np.ndarray, other: np.ndarray) -> Repeats | None:
    """The repeats of pairs sorted by own, then other; None when every pair is distinct.
    The example is the most repeated pair, the first in that order among equals."""
    same = (own[1:] == own[:-1]) & (other[1:] == other[:-1])
    if not same.any():
        return None
    # same[k] joins rows k and k+1: each run of Trues is one repeated pair.
    edges = np.diff(np.concatenate([[False], same, [False]]).astype(np.int8))
    begin, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    times = end - begin + 1
    best = int(np.argmax(times))
    return len(begin), int(own[begin[best]]), int(other[begin[best]]), int(times[best])


def repeats(own: np.ndarray, other: np.ndarray, num_other: int) -> Repeats | None:
    """sorted_repeats of pairs in any order, own and other dense indices (other < num_other):
    one sort of the pairs packed into int64 keys, the one pass the check adds to a fit in one task."""
    keys = own.astype(np.int64) * np.int64(num_other) + other.astype(np.int64)
    keys.sort()
    if not (keys[1:] == keys[:-1]).any():
        return None
    return sorted_repeats(keys // num_other, keys % num_other)
