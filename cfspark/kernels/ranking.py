"""NDCG@k of a factor model on a validation fold, in numpy: what a ranking-aware search minimises.

A row r (a user) ranks every item by z = params_r · items_i (the layout's constant column
makes that w·x + b + c), without the items it was trained on (its seen items), and the items
held out for it are the relevant ones. As data/metrics.py's ranking_metrics, which scores a
test split in Spark: DCG@k = Σ hit / log2(position + 1), over the ideal DCG of min(#held, k)
hits, averaged over the rows with a held item. A held item the model never saw still counts
in the ideal and can never be hit. A held item ranks after every item whose score ties with
its own, so scores all equal (factors collapsed to zero) earn nothing. Rows go in batches, so
memory stays near batch × items.

Scores are float32: two items swap places only where their scores agree to about 1e-7 of
their size, far closer than the factors are solved, and the half as many bytes per score
halve the passes' memory traffic. The searches captured at 0.7M to 2.7M pairs walked the same
paths, every NDCG equal to the last digit, in 46 % to 74 % of the time in this module
(docs/benchmarks.md "The positive-only fit from the search's items").
"""

from __future__ import annotations

import numpy as np

BATCH_SCORES = 4_000_000  # scores held at once: rows per batch = this / number of items
# Every this many-th item bounds a row's top scores from below (_positions): the bound costs
# 1/SUBSET_STRIDE of a partition of the row, and leaves about depth · SUBSET_STRIDE candidates.
SUBSET_STRIDE = 16


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
    items32 = np.ascontiguousarray(items, dtype=np.float32).T
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        scores = params.take(part, axis=0).astype(np.float32) @ items32
        local, cols = _expand(part, seen_ptr, seen_cols)
        scores[local, cols] = -np.inf
        local, cols = _expand(part, held_ptr, held_cols)
        known = cols >= 0
        local, cols = local[known], cols[known]
        position = _positions(scores, local, scores[local, cols], depth)
        hit = position < depth
        dcg = np.bincount(local[hit], weights=gain[position[hit]], minlength=len(part))
        n_held = held_ptr[part + 1] - held_ptr[part]
        values.append(dcg / ideal[np.minimum(n_held, k) - 1])
    return np.concatenate(values)


def _positions(scores: np.ndarray, local: np.ndarray, held: np.ndarray, depth: int) -> np.ndarray:
    """The 0-based position of each held score held[j] in its row local[j] of scores, ranked
    high to low; a tie ranks the held item after every item it ties with (a model that cannot
    tell items apart earns nothing for them), and a score of −∞ (a seen item) ranks last.
    Positions at or past depth come back as depth.

    No row is sorted or arg-partitioned: the depth-th largest score of every SUBSET_STRIDE-th
    item is at most the row's own, so a held item below that bound is not in the top depth,
    and every item that outranks one above it scores at least the bound too. Only the held
    items above it are placed: against their whole rows when they are at most one per row
    (as many comparisons as one pass over the scores), else among their rows' candidates,
    the items above the bound (about depth · SUBSET_STRIDE per row)."""
    n_rows = len(scores)
    subset = scores[:, ::SUBSET_STRIDE]
    if subset.shape[1] >= depth:
        bound = np.partition(subset, subset.shape[1] - depth, axis=1)[:, subset.shape[1] - depth]
    else:
        bound = np.full(n_rows, -np.inf)
    position = np.full(len(held), depth)
    near = np.flatnonzero(np.isfinite(held) & (held >= bound[local]))
    if len(near):
        rows, values = local[near], held[near]
        at_least = (
            _count_in_rows(scores, rows, values) if len(near) <= n_rows
            else _count_in_candidates(scores, rows, values, bound)
        )  # fmt: skip
        # The held item scores at least itself: one less is the number that rank before it.
        position[near] = np.minimum(at_least - 1, depth)
    return position


def _count_in_rows(scores: np.ndarray, local: np.ndarray, value: np.ndarray) -> np.ndarray:
    """How many scores of row local[j] are at least value[j], for each j: whole rows, in chunks."""
    out = np.empty(len(local), np.int64)
    step = max(1, BATCH_SCORES // max(scores.shape[1], 1))
    for start in range(0, len(local), step):
        part = slice(start, start + step)
        out[part] = (scores[local[part]] >= value[part, None]).sum(axis=1)
    return out


def _count_in_candidates(scores: np.ndarray, local: np.ndarray, value: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """_count_in_rows for values at or above their row's bound, counted among the row's scores
    at or above it (a rows × most-candidates table, −∞ padded)."""
    row, col = np.nonzero(scores >= bound[:, None])
    counts = np.bincount(row, minlength=len(scores))
    first = np.cumsum(counts) - counts
    candidates = np.full((len(scores), max(int(counts.max(initial=0)), 1)), -np.inf)
    candidates[row, np.arange(len(row)) - first[row]] = scores[row, col]
    return (candidates[local] >= value[:, None]).sum(axis=1)


def _expand(part: np.ndarray, row_ptr: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in part, col) of every CSR entry of the rows in part."""
    starts, ends = row_ptr[part], row_ptr[part + 1]
    lengths = ends - starts
    local = np.repeat(np.arange(len(part)), lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return local, cols[np.repeat(starts, lengths) + within]
