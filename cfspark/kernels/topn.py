"""Top-N items per user for one (user block, item block) pair, and the merge across item blocks."""

from __future__ import annotations

import numpy as np

USER_CHUNK = 2048  # users scored at once, bounding the dense score matrix to USER_CHUNK × items


# Candidates per group when screening: a row's best n lie in groups whose maximum reaches
# the n-th largest group maximum, so one pass of group maxima prunes most of the row.
GROUP = 64
# float32's unit roundoff, and the factor the screening margin allows over the worst-case
# error of a float32 dot product (at most k·u·‖q‖‖c‖ for k terms).
F32_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
_SAFETY = 4.0
# Scores the float32 screen may meet: |q·c| ≤ ‖q‖‖c‖ (Cauchy–Schwarz) below this, with room for
# the sums' rounding, so no product or sum overflows to inf. Scores are in the ratings' units, so
# ratings near float32's range (about 1e37 and up) go past it, and an inf or NaN screen would
# keep too few candidates.
F32_SAFE = float(np.finfo(np.float32).max) / 16


def score_pair(
    queries: np.ndarray,
    candidates: np.ndarray,
    excluded_rows: np.ndarray,
    excluded_cols: np.ndarray,
    n: int,
    *,
    product: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Best n candidates of this block for every query: the rows of queries @ candidates.T,
    with the (excluded_rows[j], excluded_cols[j]) entries set to −inf first. Best first;
    ties go to the lower candidate position; −inf pads rows with fewer than n candidates.

    The vectors carry every term of the score (recommend.py lays them out), so one product
    is the whole score. product: each vector is two models' side by side, scored as the
    log of the product of their two probabilities (_product_chunk).
    """
    chunk = (_product_chunk if product else _screened_chunk)(queries, candidates)
    return _by_chunks(len(queries), len(candidates), excluded_rows, excluded_cols, n, chunk)


def _screened_chunk(queries: np.ndarray, candidates: np.ndarray):
    """The scores of one model, computed in float32, six times faster than float64 here
    (2,048 × 10,000, k = 12), as a screen only: every candidate within twice float32's
    worst-case error of the row's n-th best survives, and the survivors (a few more than n
    per row) are scored again in float64. So the answer is the float64 one, exactly.
    """
    # Bound on |float32 score − exact score| per query row: k·u·‖q‖·max‖c‖, with room to spare.
    c_norm = float(np.linalg.norm(candidates, axis=1).max()) if len(candidates) else 0.0
    q_norm = np.linalg.norm(queries, axis=1)
    if len(queries) and not float(q_norm.max()) * c_norm < F32_SAFE:  # also NaN: score in float64
        return _exact_chunk(queries, candidates)
    q32, c32 = queries.astype(np.float32), candidates.astype(np.float32)
    error = _SAFETY * queries.shape[1] * F32_ROUNDOFF * q_norm * c_norm

    def chunk(lo: int, hi: int, ex_rows: np.ndarray, ex_cols: np.ndarray, n: int):
        scores = q32[lo:hi] @ c32.T
        scores[ex_rows, ex_cols] = -np.inf
        rows, cols = _screen(scores, n, 2 * error[lo:hi])
        shut = np.isneginf(scores[rows, cols])  # excluded, or rows with fewer than n left
        exact = np.einsum("ij,ij->i", queries[lo + rows], candidates[cols])
        exact[shut] = -np.inf
        return _best(rows, cols, exact, hi - lo, n)

    return chunk


def _exact_chunk(queries: np.ndarray, candidates: np.ndarray):
    """The scores of one model in float64 alone, for vectors too large for the float32 screen."""

    def chunk(lo: int, hi: int, ex_rows: np.ndarray, ex_cols: np.ndarray, n: int):
        scores = queries[lo:hi] @ candidates.T
        scores[ex_rows, ex_cols] = -np.inf
        rows, cols = _screen(scores, n, np.zeros(hi - lo))
        return _best(rows, cols, scores[rows, cols], hi - lo, n)

    return chunk


def _product_chunk(queries: np.ndarray, candidates: np.ndarray):
    """The scores of two models at once: each vector is [first model's | second model's], of
    equal widths, and a pair scores log σ(q₁·c₁) + log σ(q₂·c₂), the log of the product of
    the two probabilities (P(like | shown)·P(exposed)). Computed in float64 throughout (a
    float32 screen would need the error bound carried through both σs); same order and ties.
    """
    half = queries.shape[1] // 2

    def chunk(lo: int, hi: int, ex_rows: np.ndarray, ex_cols: np.ndarray, n: int):
        scores = -np.logaddexp(0.0, -(queries[lo:hi, :half] @ candidates[:, :half].T))
        scores -= np.logaddexp(0.0, -(queries[lo:hi, half:] @ candidates[:, half:].T))  # log σ, never overflowing
        scores[ex_rows, ex_cols] = -np.inf
        rows, cols = _screen(scores, n, np.zeros(hi - lo))
        return _best(rows, cols, scores[rows, cols], hi - lo, n)

    return chunk


def _by_chunks(
    n_queries: int, n_candidates: int, excluded_rows: np.ndarray, excluded_cols: np.ndarray, n: int, chunk
) -> tuple[np.ndarray, np.ndarray]:
    """Run chunk(lo, hi, excluded rows − lo, excluded cols, n) → (best cols, values) over
    USER_CHUNK queries at a time, with each chunk's excluded pairs; −inf pads short rows."""
    n = min(n, n_candidates)
    best_idx = np.zeros((n_queries, n), np.int64)
    best_val = np.full(best_idx.shape, -np.inf)
    if n == 0 or n_queries == 0:
        return best_idx, best_val
    order = np.argsort(excluded_rows, kind="stable")
    excluded_rows, excluded_cols = excluded_rows[order], excluded_cols[order]
    for lo in range(0, n_queries, USER_CHUNK):
        hi = min(lo + USER_CHUNK, n_queries)
        a, b = np.searchsorted(excluded_rows, [lo, hi])
        best_idx[lo:hi], best_val[lo:hi] = chunk(lo, hi, excluded_rows[a:b] - lo, excluded_cols[a:b], n)
    return best_idx, best_val


def _best(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of count rows' n best (col, value) among its survivors (row-major, at least n per
    row): best first, ties to the lower position."""
    pick = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[pick], cols[pick], values[pick]
    first = np.searchsorted(rows, np.arange(count))
    take = first[:, None] + np.arange(n)[None, :]
    return cols[take], values[take]


def _screen(scores: np.ndarray, n: int, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every entry within margin of its row's n-th best, row-major.

    The n-th best entry is at least the n-th best group maximum t (n groups each hold an
    entry ≥ t), so entries ≥ t − margin include every entry of the true top n, even with
    each score off by up to margin / 2. At least n entries of each row survive.
    """
    m = scores.shape[1]
    grouped = m >= 4 * n * GROUP  # else the row itself is cheap enough to partition
    maxima = np.maximum.reduceat(scores, np.arange(0, m, GROUP), axis=1) if grouped else scores
    k = maxima.shape[1] - n
    threshold = np.partition(maxima, k, axis=1)[:, k] - margin
    return np.nonzero(scores >= threshold[:, None])


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
