"""NDCG@k of a factor model on a validation fold, in numpy: what a ranking-aware search minimises.

A row r (a user) ranks every item by z = params_r · items_i (the layout's constant column
makes that w·x + b + c), without the items it was trained on (its seen items), and the items
held out for it are the relevant ones. As data/metrics.py's ranking_metrics, which scores a
test split in Spark: DCG@k = Σ hit / log2(position + 1), over the ideal DCG of min(#held, k)
hits, averaged over the rows with a held item. A held item the model never saw still counts
in the ideal and can never be hit. Rows go in batches, so memory stays near batch × items.
"""

from __future__ import annotations

import numpy as np

BATCH_SCORES = 4_000_000  # scores held at once: rows per batch = this / number of items


def discounts(k: int) -> np.ndarray:
    """1 / log2(position + 1) for positions 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(
    params: np.ndarray,
    items: np.ndarray,
    rows: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held: tuple[np.ndarray, np.ndarray],
    k: int,
) -> float:
    """Mean NDCG@k over rows (row indices of params) with at least one held item.

    seen and held are CSR pairs (row_ptr, cols) over all rows of params: seen cols index items
    and are excluded from a row's ranking; held cols are the relevant items, −1 for an item
    not in items. Returns 0.0 when no row has a held item.
    """
    values = ndcg_rows(params, items, rows, seen, held, k)
    return float(values.mean()) if len(values) else 0.0


def ndcg_rows(
    params: np.ndarray,
    items: np.ndarray,
    rows: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    held: tuple[np.ndarray, np.ndarray],
    k: int,
) -> np.ndarray:
    """NDCG@k of each row in rows that has a held item, in the order of rows (as ndcg_at_k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    seen_ptr, seen_cols = seen
    held_ptr, held_cols = held
    rows = np.asarray(rows, np.int64)
    rows = rows[held_ptr[rows + 1] > held_ptr[rows]]
    if not len(rows):
        return np.zeros(0)
    n_items = len(items)
    depth = min(k, n_items)
    gain = discounts(k)
    ideal = np.cumsum(gain)
    batch = max(1, BATCH_SCORES // max(n_items, 1))
    values = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        cost = params.take(part, axis=0) @ items.T
        local, cols = _expand(part, seen_ptr, seen_cols)
        cost[local, cols] = -np.inf
        # −z, negated in place: argpartition takes the smallest, and a negated copy of every
        # score would cost as much memory traffic as the product itself.
        np.negative(cost, out=cost)
        top = np.argpartition(cost, depth - 1, axis=1)[:, :depth]
        order = np.argsort(np.take_along_axis(cost, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        # A hit is a top (row, item) pair among the held ones, matched on one int64 key each:
        # a dense batch × items mask of the held pairs is not built.
        local, cols = _expand(part, held_ptr, held_cols)
        known = cols >= 0
        held_keys = local[known] * n_items + cols[known]
        hits = np.isin(np.arange(len(part))[:, None] * n_items + top, held_keys)
        hits &= np.isfinite(np.take_along_axis(cost, top, axis=1))  # a seen item is never a hit
        dcg = hits @ gain[:depth]
        n_held = held_ptr[part + 1] - held_ptr[part]
        values.append(dcg / ideal[np.minimum(n_held, k) - 1])
    return np.concatenate(values)


def _expand(part: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in part, col) of every CSR entry of the rows in part."""
    starts, ends = row_ptr[part], row_ptr[part + 1]
    lengths = ends - starts
    local = np.repeat(np.arange(len(part)), lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return local, cols[np.repeat(starts, lengths) + within]
