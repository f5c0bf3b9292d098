"""Fresh sampled negatives per iteration (data/negatives.py): pure, never labelled, new each iteration."""

from __future__ import annotations

import numpy as np

from cfspark.data.negatives import fresh_negatives, hashed_uniforms


def _block(seed: int = 0, users: int = 50, items: int = 80):
    rng = np.random.default_rng(seed)
    labelled = [np.sort(rng.choice(items, rng.integers(1, 20), replace=False)) for _ in range(users)]
    row_ptr = np.r_[0, np.cumsum([len(x) for x in labelled])]
    keys = rng.integers(-(2**62), 2**62, users)
    weights = np.sqrt(rng.integers(1, 50, items).astype(np.float64))
    return row_ptr, np.concatenate(labelled), keys, 4 * np.diff(row_ptr), weights


def _pairs(ptr: np.ndarray, items: np.ndarray, keys: np.ndarray) -> set[tuple[int, int]]:
    return {(int(keys[r]), int(i)) for r in range(len(ptr) - 1) for i in items[ptr[r] : ptr[r + 1]]}


def test_fresh_negatives_never_include_a_labelled_item_and_stay_within_the_count():
    row_ptr, labelled, keys, counts, weights = _block()
    for iteration in range(3):
        ptr, items = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=iteration)
        assert _pairs(ptr, items, keys).isdisjoint(_pairs(row_ptr, labelled, keys))
        per_row = np.diff(ptr)
        assert np.all(per_row <= counts) and per_row.sum() > 0.5 * counts.sum()
        for r in range(len(counts)):  # distinct and sorted within a row
            assert np.all(np.diff(items[ptr[r] : ptr[r + 1]]) > 0)


def test_fresh_negatives_are_a_pure_function_of_seed_iteration_and_user():
    row_ptr, labelled, keys, counts, weights = _block()
    a = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=2)
    b = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # the same users in another block, in reverse order: each draws the same items
    order = np.arange(len(counts))[::-1]
    rows = [labelled[row_ptr[r] : row_ptr[r + 1]] for r in order]
    other_ptr = np.r_[0, np.cumsum([len(x) for x in rows])]
    c = fresh_negatives(other_ptr, np.concatenate(rows), keys[order], counts[order], weights, seed=7, iteration=2)
    assert _pairs(*c, keys[order]) == _pairs(*a, keys)
    # another seed draws other items
    d = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=8, iteration=2)
    assert _pairs(*d, keys) != _pairs(*a, keys)


def test_fresh_negatives_differ_between_iterations():
    row_ptr, labelled, keys, counts, weights = _block()
    draws = [
        _pairs(*fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=i), keys) for i in range(4)
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            overlap = len(draws[i] & draws[j]) / len(draws[i])
            assert overlap < 0.8  # each iteration sees mostly items another did not


def test_draws_follow_the_weights():
    """Hashed uniforms are uniform, and items are drawn in proportion to their weights."""
    u = hashed_uniforms(3, 1, np.arange(2000), np.arange(2000) % 7)
    assert abs(u.mean() - 0.5) < 0.02 and abs(np.mean(u < 0.25) - 0.25) < 0.03
    weights = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
    ptr = np.zeros(1001, np.int64)  # 1000 users without labels, one draw each
    got_ptr, items = fresh_negatives(
        ptr, np.empty(0, np.int64), np.arange(1000), np.ones(1000), weights, seed=1, iteration=0
    )
    share = np.bincount(items, minlength=5) / len(items)
    assert len(items) == 1000 and share[3] == 0.0
    np.testing.assert_allclose(share, weights / weights.sum(), atol=0.04)
