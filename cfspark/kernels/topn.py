"""Top-N items per user for one (user block, item block) pair, and the merge across item blocks."""

from __future__ import annotations

import numpy as np

USER_CHUNK = 2048  # users scored at once, bounding the dense score matrix to USER_CHUNK × items


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the n largest entries of each row, best first.

    −inf marks an excluded entry; such entries sort last and callers drop them.
    """
    n = min(n, scores.shape[1])
    if n == 0:
        return np.empty((scores.shape[0], 0), np.int64), np.empty((scores.shape[0], 0))
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def score_pair(
    queries: np.ndarray,
    candidates: np.ndarray,
    excluded_rows: np.ndarray,
    excluded_cols: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Best n candidates of this block for every query: the rows of queries @ candidates.T,
    with the (excluded_rows[j], excluded_cols[j]) entries set to −inf first.

    The vectors carry every term of the score (recommend.py lays them out), so one
    product is the whole score. Scored USER_CHUNK queries at a time.
    """
    best_idx = np.empty((len(queries), min(n, len(candidates))), np.int64)
    best_val = np.empty(best_idx.shape)
    order = np.argsort(excluded_rows, kind="stable")
    excluded_rows, excluded_cols = excluded_rows[order], excluded_cols[order]
    for lo in range(0, len(queries), USER_CHUNK):
        hi = min(lo + USER_CHUNK, len(queries))
        scores = queries[lo:hi] @ candidates.T
        a, b = np.searchsorted(excluded_rows, [lo, hi])
        scores[excluded_rows[a:b] - lo, excluded_cols[a:b]] = -np.inf
        best_idx[lo:hi], best_val[lo:hi] = top_n(scores, n)
    return best_idx, best_val


def top_within_groups(groups: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the n best scores of each group, and their ranks (1 = best).

    Ties keep the earlier position, so merging blocks in order gives what one block would.
    """
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    sorted_groups = groups[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    ranks = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)])) + 1
    keep = ranks <= n
    return order[keep], ranks[keep]
