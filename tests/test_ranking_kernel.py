"""NDCG@k of a validation fold (kernels/ranking.py) against a brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cfspark.kernels import ranking
from cfspark.kernels.ranking import ndcg_at_k


def _csr(lists):
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    cols = np.array([c for x in lists for c in x], np.int64)
    return ptr, cols


def _brute(params, items, rows, seen, held, k):
    """Sort every item by score for each row, drop its seen items, sum 1/log2(pos + 1) over hits."""
    values = []
    for r in rows:
        if not held[r]:
            continue
        scores = {i: float(params[r] @ items[i]) for i in range(len(items)) if i not in seen[r]}
        ranked = sorted(scores, key=lambda i: -scores[i])[:k]
        dcg = sum(1 / math.log2(pos + 2) for pos, i in enumerate(ranked) if i in held[r])
        ideal = sum(1 / math.log2(pos + 2) for pos in range(min(len(held[r]), k)))
        values.append(dcg / ideal)
    return sum(values) / len(values) if values else 0.0


@pytest.mark.parametrize("k", [1, 3, 10, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_items", [25, 700])  # 700: the strided bound is below most rows' top scores
def test_ndcg_equals_the_brute_force_ranking(k, seed, n_items, monkeypatch):
    rng = np.random.default_rng(seed)
    n_rows, p = 30, 4
    params, items = rng.normal(size=(n_rows, p)), rng.normal(size=(n_items, p))
    # Row 5 has seen all but 3·k of the items: its strided subset holds fewer than k scores.
    seen = [set(rng.choice(n_items, rng.integers(0, 8) if r != 5 else max(0, n_items - 3 * k), replace=False).tolist())
            for r in range(n_rows)]  # fmt: skip
    held = []
    for r in range(n_rows):
        free = [i for i in range(n_items) if i not in seen[r]]
        if n_items > 100:  # held items among the row's top 4·k, so that the top k holds some of them
            free = sorted(free, key=lambda i: -float(params[r] @ items[i]))[: 4 * k]
        chosen = rng.choice(free, min(len(free), rng.integers(0, 5)), replace=False).tolist()
        held.append(chosen + ([-1] if r % 7 == 3 else []))  # −1: an item the model never saw
    rows = np.arange(n_rows)[rng.random(n_rows) < 0.8]
    monkeypatch.setattr(ranking, "BATCH_SCORES", 7 * n_items)  # several batches
    got = ndcg_at_k(params, items, rows, _csr([sorted(s) for s in seen]), _csr(held), k)
    want = _brute(params, items, rows, seen, [set(h) for h in held], k)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 <= got <= 1 and (got > 0 or k == 1)


def test_ndcg_is_one_for_a_perfect_ranking_and_zero_for_the_worst():
    items = np.eye(6)
    params = np.array([[6.0, 5, 4, 3, 2, 1]])  # ranks item 0 first, 5 last
    seen = _csr([[0]])
    assert ndcg_at_k(params, items, [0], seen, _csr([[1, 2]]), 2) == pytest.approx(1.0)
    assert ndcg_at_k(params, items, [0], seen, _csr([[5]]), 4) == 0.0
    # The seen item 0 is skipped: item 3 is third, worth 1/log2(4) of the ideal 1.
    assert ndcg_at_k(params, items, [0], seen, _csr([[3]]), 3) == pytest.approx(0.5)
    assert ndcg_at_k(params, items, [0], seen, _csr([[]]), 3) == 0.0


def test_a_held_item_ranks_after_every_item_it_ties_with():
    items = np.eye(4)
    params = np.array([[3.0, 2, 2, 1]])  # items 1 and 2 tie in second place
    seen = _csr([[]])
    # Held item 1 counts as third, after item 2 that ties with it: 1/log2(4) of the ideal 1.
    assert ndcg_at_k(params, items, [0], seen, _csr([[1]]), 3) == pytest.approx(0.5)
    assert ndcg_at_k(params, items, [0], seen, _csr([[1]]), 2) == 0.0
    # Scores all equal (factors collapsed to zero): no held item is in the top k.
    flat = np.zeros((1, 4))
    assert ndcg_at_k(flat, items, [0], seen, _csr([[0, 3]]), 2) == 0.0
    # Two held items that tie count each after the other: second place each, of the ideal 1 + 1/log2(3).
    second = 1 / math.log2(3)
    assert ndcg_at_k(flat, items, [0], _csr([[1, 2]]), _csr([[0, 3]]), 2) == pytest.approx(2 * second / (1 + second))


def test_both_ways_of_counting_agree_with_a_full_sort():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(40, 300)), 1)  # rounded: many ties
    scores[7, :290] = -np.inf  # a row that has seen almost every item
    bound = np.partition(scores[:, ::16], scores[:, ::16].shape[1] - 5, axis=1)[:, -5]
    local = rng.integers(0, 40, 200)
    value = scores[local, rng.integers(0, 300, 200)]
    above = np.isfinite(value) & (value >= bound[local])
    local, value = local[above], value[above]
    want = np.array([(scores[r] >= v).sum() for r, v in zip(local, value, strict=True)])
    np.testing.assert_array_equal(ranking._count_in_rows(scores, local, value), want)
    np.testing.assert_array_equal(ranking._count_in_candidates(scores, local, value, bound), want)
