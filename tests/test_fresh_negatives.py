"""Fresh sampled negatives per iteration (data/negatives.py, train/sampled.py): pure, never labelled, new each time."""

from __future__ import annotations

import numpy as np
import pytest

from cfspark.blocks.codec import cell
from cfspark.data import negatives
from cfspark.data.negatives import OVERSAMPLE, fresh_negatives, hashed_uniforms, inverse_cdf
from cfspark.train.sampled import Draws, with_negatives


def _block(seed: int = 0, users: int = 50, items: int = 80):
    rng = np.random.default_rng(seed)
    labelled = [np.sort(rng.choice(items, rng.integers(1, 20), replace=False)) for _ in range(users)]
    row_ptr = np.r_[0, np.cumsum([len(x) for x in labelled])]
    keys = rng.integers(-(2**62), 2**62, users)
    weights = np.sqrt(rng.integers(1, 50, items).astype(np.float64))
    return row_ptr, np.concatenate(labelled), keys, 4 * np.diff(row_ptr), weights


def _pairs(ptr: np.ndarray, items: np.ndarray, keys: np.ndarray) -> set[tuple[int, int]]:
    return {(int(keys[r]), int(i)) for r in range(len(ptr) - 1) for i in items[ptr[r] : ptr[r + 1]]}


@pytest.mark.parametrize("replace", [True, False])
def test_fresh_negatives_never_include_a_labelled_item_and_stay_within_the_count(replace):
    row_ptr, labelled, keys, counts, weights = _block()
    for iteration in range(3):
        ptr, items = fresh_negatives(
            row_ptr, labelled, keys, counts, weights, seed=7, iteration=iteration, replace=replace
        )
        assert _pairs(ptr, items, keys).isdisjoint(_pairs(row_ptr, labelled, keys))
        per_row = np.diff(ptr)
        assert np.all(per_row <= counts) and per_row.sum() > 0.5 * counts.sum()
        if not replace:  # exactly K·n_r distinct items, or every unlabelled item there is
            np.testing.assert_array_equal(per_row, np.minimum(counts, len(weights) - np.diff(row_ptr)))
        for r in range(len(counts)):  # distinct and sorted within a row
            assert np.all(np.diff(items[ptr[r] : ptr[r + 1]]) > 0)


@pytest.mark.parametrize("replace", [True, False])
def test_fresh_negatives_are_a_pure_function_of_seed_iteration_and_user(replace):
    row_ptr, labelled, keys, counts, weights = _block()
    a = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=2, replace=replace)
    b = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=2, replace=replace)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # the same users in another block, in reverse order: each draws the same items
    order = np.arange(len(counts))[::-1]
    rows = [labelled[row_ptr[r] : row_ptr[r + 1]] for r in order]
    other_ptr = np.r_[0, np.cumsum([len(x) for x in rows])]
    c = fresh_negatives(
        other_ptr, np.concatenate(rows), keys[order], counts[order], weights, seed=7, iteration=2, replace=replace
    )
    assert _pairs(*c, keys[order]) == _pairs(*a, keys)
    # another seed draws other items
    d = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=8, iteration=2, replace=replace)
    assert _pairs(*d, keys) != _pairs(*a, keys)


@pytest.mark.parametrize("replace", [True, False])
def test_fresh_negatives_differ_between_iterations(replace):
    row_ptr, labelled, keys, counts, weights = _block()
    counts = np.diff(row_ptr)  # K = 1: few enough that a row's draws can change between iterations
    draws = [
        _pairs(*fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=7, iteration=i, replace=replace), keys)
        for i in range(4)
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            overlap = len(draws[i] & draws[j]) / len(draws[i])
            assert overlap < 0.8  # each iteration sees mostly items another did not


@pytest.mark.parametrize("replace", [True, False])
def test_draws_follow_the_weights(replace):
    """Hashed uniforms are uniform, and items are drawn in proportion to their weights (without
    replacement, a row's first draw is: one draw each)."""
    u = hashed_uniforms(3, 1, np.arange(2000), np.arange(2000) % 7)
    assert abs(u.mean() - 0.5) < 0.02 and abs(np.mean(u < 0.25) - 0.25) < 0.03
    weights = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
    ptr = np.zeros(2001, np.int64)  # 2000 users without labels, one draw each
    got_ptr, items = fresh_negatives(
        ptr, np.empty(0, np.int64), np.arange(2000), np.ones(2000), weights, seed=1, iteration=0, replace=replace
    )
    share = np.bincount(items, minlength=5) / len(items)
    assert len(items) == 2000 and share[3] == 0.0
    np.testing.assert_allclose(share, weights / weights.sum(), atol=0.03)


# The packed keys, np.unique's fallback, runs of a few rows each (DRAW_CHUNK), and a first round
# too short for most rows (FIRST_ROUND_MARGIN), so that the second round draws them again.
SAMPLERS = [(negatives.PACKED_BITS, negatives.DRAW_CHUNK, negatives.FIRST_ROUND_MARGIN),
            (8, negatives.DRAW_CHUNK, negatives.FIRST_ROUND_MARGIN),
            (negatives.PACKED_BITS, 100, negatives.FIRST_ROUND_MARGIN),
            (negatives.PACKED_BITS, negatives.DRAW_CHUNK, 0.3)]  # fmt: skip


@pytest.mark.parametrize(("packed_bits", "draw_chunk", "margin"), SAMPLERS)
def test_without_replacement_a_light_row_keeps_its_first_distinct_unlabelled_draws(
    packed_bits, draw_chunk, margin, monkeypatch
):
    """A row that wants few of its items takes the first want distinct items it has no label
    for, in the order of its own draws (each a hashed uniform of seed, iteration, user key and
    draw index, through inverse_cdf), walked here one draw at a time."""
    monkeypatch.setattr(negatives, "PACKED_BITS", packed_bits)
    monkeypatch.setattr(negatives, "DRAW_CHUNK", draw_chunk)
    monkeypatch.setattr(negatives, "FIRST_ROUND_MARGIN", margin)
    row_ptr, labelled, keys, _, weights = _block(seed=3, users=60, items=400)
    want = np.random.default_rng(4).integers(1, 40, len(keys))
    for iteration in (0, 5):
        ptr, items = fresh_negatives(row_ptr, labelled, keys, want, weights, seed=11, iteration=iteration,
                                     replace=False)  # fmt: skip
        for r in range(len(keys)):
            draws = OVERSAMPLE * int(want[r]) + 8
            u = hashed_uniforms(11, iteration, keys[r : r + 1], np.arange(draws), np.zeros(draws, np.int64))
            taken: list[int] = []
            for item in inverse_cdf(weights, u):
                if item not in taken and item not in labelled[row_ptr[r] : row_ptr[r + 1]]:
                    taken.append(int(item))
                if len(taken) == want[r]:
                    break
            assert len(taken) == want[r]  # every row is light here, and its draws suffice
            np.testing.assert_array_equal(items[ptr[r] : ptr[r + 1]], sorted(taken))


def test_the_first_round_draws_give_the_wanted_distinct_items_in_expectation():
    """Uniform weights over N items: m draws hold N·(1 − e^(−m/N)) distinct items in
    expectation, so want of them need m = −N·ln(1 − want/N) draws, want/(1 − q) when a share q
    of the draws lands on the row's labelled items; then the margin and 8 more, at most full."""
    n_items = 1000
    weights = np.ones(n_items)
    want = np.array([10, 100, 400, 100, 100])
    labelled = np.arange(200)  # the fourth row's 200 labelled items: a share q = 0.2 of the draws
    row_ptr = np.array([0, 0, 0, 0, 200, 200])
    full = np.array([10**6, 10**6, 10**6, 10**6, 60])
    got = negatives.first_round_draws(row_ptr, labelled, want, full, weights)
    need = want / np.array([1.0, 1.0, 1.0, 0.8, 1.0])
    exact = np.ceil(negatives.FIRST_ROUND_MARGIN * -n_items * np.log1p(-need / n_items)) + 8
    np.testing.assert_allclose(got[:4], exact[:4], rtol=0.03)  # the grid's interpolation
    assert got[4] == 60  # capped at the whole
    assert got[3] > got[1]  # the labelled share costs draws
    # Drawn: rows of 100 wanted items, of which few run short in the first round.
    keys = np.arange(2000)
    first = negatives.first_round_draws(np.zeros(2001, np.int64), np.empty(0, np.int64), np.full(2000, 100),
                                        np.full(2000, 10**6), weights)  # fmt: skip
    _, _, short = negatives._first_distinct(np.zeros(2001, np.int64), np.empty(0, np.int64), keys,
                                            np.full(2000, 100), first, weights, 3, 0)  # fmt: skip
    assert short.mean() < 0.05


def test_without_replacement_a_heavy_row_takes_its_items_by_weight():
    """Two draws of three items without replacement: the pair left out is, in share, the
    successive-sampling chance (w_a/W)(w_b/(W − w_a)) summed over orders."""
    weights = np.array([1.0, 2.0, 3.0])
    n = 3000
    ptr, items = fresh_negatives(
        np.zeros(n + 1, np.int64), np.empty(0, np.int64), np.arange(n), np.full(n, 2), weights, seed=5,
        iteration=1, replace=False,
    )  # fmt: skip
    assert np.all(np.diff(ptr) == 2)
    left_out = 3 - items.reshape(n, 2).sum(axis=1)  # the item not taken: 0 + 1 + 2 = 3
    total = weights.sum()

    def both(a: int, b: int) -> float:
        return weights[a] / total * weights[b] / (total - weights[a]) + weights[b] / total * weights[a] / (
            total - weights[b]
        )

    expected = [both(1, 2), both(0, 2), both(0, 1)]
    np.testing.assert_allclose(np.bincount(left_out, minlength=3) / n, expected, atol=0.03)


def _ratings(seed: int = 1, users: int = 40, items: int = 30):
    """A user block's ratings as CSR: labels of 1 and 0, item offsets, weights; every item rated."""
    rng = np.random.default_rng(seed)
    rated = rng.random((users, items)) < 0.2
    rated[np.arange(items) % users, np.arange(items)] = True
    rows, cols = np.nonzero(rated)
    row_ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=users))]
    item_offset = rng.normal(size=items)
    y = (rng.random(len(cols)) < 0.6).astype(np.float64)
    return row_ptr, cols, y, item_offset[cols], rng.uniform(1, 3, len(cols)), rng.integers(0, 2**62, users), items


def test_with_negatives_keeps_the_ratings_and_adds_unlabelled_zeros_carrying_offsets():
    row_ptr, cols, y, offset, weight, keys, n_items = _ratings()
    draws = Draws(per_label=3, weight=0.25, sampling="sqrt", seed=4, iteration=2)
    ptr, c, yy, off, w = with_negatives(draws, row_ptr, cols, y, offset, weight, keys, n_items, "user")
    item_offset = dict(zip(cols.tolist(), offset.tolist(), strict=True))
    added = 0
    for r in range(len(row_ptr) - 1):
        mine, new = slice(row_ptr[r], row_ptr[r + 1]), slice(ptr[r] + row_ptr[r + 1] - row_ptr[r], ptr[r + 1])
        first = slice(ptr[r], ptr[r] + row_ptr[r + 1] - row_ptr[r])
        np.testing.assert_array_equal(c[first], cols[mine])  # the row's ratings first, as they were
        np.testing.assert_array_equal(yy[first], y[mine]), np.testing.assert_array_equal(w[first], weight[mine])
        assert set(c[new].tolist()).isdisjoint(cols[mine].tolist())  # never a labelled item
        assert len(c[new]) <= 3 * (row_ptr[r + 1] - row_ptr[r]) and len(set(c[new].tolist())) == len(c[new])
        assert np.all(yy[new] == 0.0) and np.all(w[new] == 0.25)
        np.testing.assert_array_equal(off[new], [item_offset[i] for i in c[new]])  # the item's offset
        added += len(c[new])
    assert added > 1.5 * len(cols)
    again = with_negatives(draws, row_ptr, cols, y, offset, weight, keys, n_items, "user")
    for a, b in zip((ptr, c, yy, off, w), again, strict=True):
        np.testing.assert_array_equal(a, b)  # a pure function of its arguments
    later = with_negatives(
        Draws(3, 0.25, "sqrt", 4, iteration=3), row_ptr, cols, y, offset, weight, keys, n_items, "user"
    )
    assert not np.array_equal(later[1], c)  # another iteration draws afresh
    # An item block: a row's draws carry the row's own offset.
    ptr, c, yy, off, w = with_negatives(draws, row_ptr, cols, y, offset, weight, keys, n_items, "item")
    for r in range(len(row_ptr) - 1):
        np.testing.assert_array_equal(off[ptr[r] : ptr[r + 1]][yy[ptr[r] : ptr[r + 1]] == 0][-1:], offset[row_ptr[r]])


def _pair_draws(sampling: str, iterations: int = 8, replace: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How often each (user, item) pair is drawn as a 0-label by the user half-steps and by the
    item half-steps of the same skewed labels, over some iterations; and the items' label counts."""
    rng = np.random.default_rng(5)
    users, items = 120, 90
    popularity = 1.0 / np.arange(1, items + 1)  # a long tail: item 0 is labelled most
    activity = rng.uniform(0.2, 1.0, users)
    rated = rng.random((users, items)) < np.minimum(0.9, 0.6 * np.outer(activity, popularity) ** 0.5)
    rated[np.arange(users), np.arange(users) % items] = True
    by_user, by_item = np.nonzero(rated), np.nonzero(rated.T)
    user_keys, item_keys = rng.integers(0, 2**62, users), rng.integers(0, 2**62, items)
    counts = {"user": np.zeros((users, items)), "item": np.zeros((items, users))}
    for side, (rows, cols), n, n_other, keys in (
        ("user", by_user, users, items, user_keys),
        ("item", by_item, items, users, item_keys),
    ):
        row_ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
        for iteration in range(1, iterations + 1):
            draws = Draws(per_label=2, weight=0.5, sampling=sampling, seed=9, iteration=iteration, replace=replace)
            ptr, c, yy, _, _ = with_negatives(draws, row_ptr, cols, np.ones(len(cols)), None, None, keys, n_other, side)
            drawn_rows = np.repeat(np.arange(n), np.diff(ptr))
            np.add.at(counts[side], (drawn_rows[yy == 0], c[yy == 0]), 1.0)
    return counts["user"], counts["item"].T, rated.sum(axis=0)


@pytest.mark.parametrize("sampling", ["sqrt", "uniform", "popularity"])
def test_user_and_item_half_steps_draw_the_same_pairs_in_expectation(sampling):
    # Both half-steps must fit one objective: an item's 0-labels, and a user's, are as many in the
    # item half-step as in the user half-step. Items drawing K·n_i users each (a mirror image of
    # the user side) gave every item the same share of 0-labels, cancelling popularity out of
    # P(exposed) under sqrt sampling (NDCG@10 0.231 against 0.255 on ml-latest-small ≥ 4).
    from_users, from_items, item_labels = _pair_draws(sampling)
    per_item_u, per_item_i = from_users.sum(axis=0), from_items.sum(axis=0)
    head, tail = np.argsort(-item_labels)[:15], np.argsort(item_labels)[:30]
    for part in (head, tail):
        assert per_item_i[part].sum() == pytest.approx(per_item_u[part].sum(), rel=0.1)
    per_user_u, per_user_i = from_users.sum(axis=1), from_items.sum(axis=1)
    assert np.corrcoef(per_user_u, per_user_i)[0, 1] > 0.9
    assert per_user_i.sum() == pytest.approx(per_user_u.sum(), rel=0.05)


def test_a_blockwise_fit_draws_at_the_rates_of_one_task(spark):
    """With 2 user and 3 item blocks, every user's and item's expected draw count, and every
    drawable entity's relative chance, equal the one-task plan's exactly; counted inside each
    block (the labels it holds, its own N and Σg), they do not."""
    from cfspark.blocks import cache
    from cfspark.blocks.build import build_blocks
    from cfspark.train.sampled import draw_plan, with_totals
    from cfspark.train.step import StepConfig

    rng = np.random.default_rng(3)
    users, items = 60, 40
    rated = rng.random((users, items)) < 0.5 / np.arange(1, items + 1) ** 0.5  # a long tail of items
    rated[np.arange(users), np.arange(users) % items] = True
    u, i = np.nonzero(rated)
    n_user, n_item = rated.sum(axis=1), rated.sum(axis=0)
    targets = spark.createDataFrame(
        [(int(a), int(b), 1.0) for a, b in zip(u, i, strict=True)], "user long, item long, y double"
    ).selectExpr("*", "cast(null as double) as offset", "cast(null as double) as weight")
    baseline = spark.createDataFrame(
        [(int(b), 0.0, int(n)) for b, n in enumerate(n_item)], "item long, baseline double, ratings long"
    )
    blocks = build_blocks(targets, baseline, num_user_blocks=2, num_item_blocks=3, seed=1, label_counts=True)
    draws = Draws(per_label=3, weight=0.5, sampling="sqrt", seed=1)
    one = {"user": draw_plan(draws, n_user, n_item, "user"), "item": draw_plan(draws, n_item, n_user, "item")}
    local_differs = False
    for side, inblocks in (("user", blocks.users), ("item", blocks.items)):
        exact = with_totals(StepConfig(side=side, rank=2, loss="bce", reg=0.1, draws=draws), blocks.label_totals)
        table = inblocks.toArrow()
        assert table.num_rows == 2 + (side == "item")
        for r in range(table.num_rows):
            arrays = cache.decode(table, r)
            ids, col_ids = cell(table, "ids", r, np.int64), cell(table, "col_ids", r, np.int64)
            labels = np.diff(arrays["row_ptr"])
            counts, pool = draw_plan(exact.draws, labels, arrays["col_labels"], side)
            np.testing.assert_array_equal(counts, one[side][0][ids])  # integer ids are their own values
            np.testing.assert_array_equal(pool, one[side][1][col_ids])
            old_counts, old_pool = draw_plan(draws, labels, np.bincount(arrays["cols"], minlength=len(col_ids)), side)
            local_differs |= not np.array_equal(old_counts, counts) or not np.array_equal(old_pool, pool)
    assert local_differs
    blocks.unpersist()


def test_without_replacement_both_ways_draw_one_distribution(monkeypatch):
    """Light rows (first distinct draws with replacement) and heavy rows (smallest exponential
    keys) take each item with the same chance: 2 of 6 skewed items, 4000 rows each way."""
    from cfspark.data import negatives

    weights = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.5])
    n = 4000
    shares = []
    for light_share in (1.0, 0.0):  # every row light, then every row heavy
        monkeypatch.setattr(negatives, "LIGHT_SHARE", light_share)
        ptr, items = fresh_negatives(
            np.zeros(n + 1, np.int64), np.empty(0, np.int64), np.arange(n), np.full(n, 2), weights, seed=2,
            iteration=0, replace=False,
        )  # fmt: skip
        assert np.all(np.diff(ptr) == 2)
        shares.append(np.bincount(items, minlength=6) / n)
    np.testing.assert_allclose(shares[0], shares[1], atol=0.03)
    assert shares[0][0] > 0.6 and shares[0][5] < 0.15  # and not uniform


def test_the_guided_inverse_cdf_is_the_binary_search():
    from cfspark.data.negatives import inverse_cdf

    rng = np.random.default_rng(4)
    for weights in (
        rng.pareto(1.0, 500) + 0.01,  # heavy-tailed
        np.r_[np.zeros(40), rng.integers(0, 3, 200).astype(float), np.zeros(100), [5.0]],  # runs of zeros
        np.array([2.0]),
    ):
        u = np.r_[rng.random(20000), 0.0, 1.0 - 2.0**-53]
        cdf = np.cumsum(weights)
        expected = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(weights) - 1)
        np.testing.assert_array_equal(inverse_cdf(weights, u), expected)


@pytest.mark.parametrize("sampling", ["sqrt", "uniform", "popularity"])
def test_without_replacement_the_half_steps_draw_as_many_pairs_with_a_bounded_head_excess(sampling):
    # Without replacement a row's draws saturate (each pair at most once), differently on the two
    # sides: on these dense labels the item half-step puts 17–25 % more 0-labels on the 15 most
    # labelled items than the user half-step, and fewer on the tail (docs/binary-labels.md,
    # limitations). In all, and per user, the two sides still agree.
    from_users, from_items, item_labels = _pair_draws(sampling, replace=False)
    head = np.argsort(-item_labels)[:15]
    ratio = from_items.sum(axis=0)[head].sum() / from_users.sum(axis=0)[head].sum()
    assert 1.0 < ratio < 1.3
    assert from_items.sum() == pytest.approx(from_users.sum(), rel=0.05)
    assert np.corrcoef(from_users.sum(axis=1), from_items.sum(axis=1))[0, 1] > 0.9


@pytest.mark.parametrize("light_share", [0.5, 1.0])
def test_packed_first_draws_are_those_of_the_unpacked_dedup(monkeypatch, light_share):
    """The light rows' first distinct draws from packed (row, item, draw) keys and a plain sort
    are the draws np.unique's first indices give, byte for byte (rows short of items included)."""
    from cfspark.data import negatives

    row_ptr, labelled, keys, counts, weights = _block(seed=3, users=60, items=90)
    monkeypatch.setattr(negatives, "LIGHT_SHARE", light_share)
    packed = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=9, iteration=4, replace=False)
    monkeypatch.setattr(negatives, "PACKED_BITS", 0)  # every key too wide: the np.unique path
    unpacked = fresh_negatives(row_ptr, labelled, keys, counts, weights, seed=9, iteration=4, replace=False)
    for a, b in zip(packed, unpacked, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_heavy_rows_take_exactly_their_count_when_keys_tie(monkeypatch):
    """Exponential keys that tie at a row's threshold (coarse uniforms, equal weights) still
    give each heavy row exactly its count of distinct unlabelled items."""
    from cfspark.data import negatives

    real = negatives.hashed_uniforms
    monkeypatch.setattr(negatives, "hashed_uniforms", lambda *a, **k: np.floor(real(*a, **k) * 4) / 4)
    monkeypatch.setattr(negatives, "LIGHT_SHARE", 0.0)  # every row heavy
    row_ptr, labelled, keys, _, _ = _block(seed=4, users=30, items=40)
    weights = np.ones(40)
    want = np.minimum(12, 40 - np.diff(row_ptr))
    ptr, items = fresh_negatives(row_ptr, labelled, keys, want, weights, seed=1, iteration=2, replace=False)
    assert np.array_equal(np.diff(ptr), want)
    for r in range(len(want)):
        got = items[ptr[r] : ptr[r + 1]]
        assert len(np.unique(got)) == len(got)
        assert not np.isin(got, labelled[row_ptr[r] : row_ptr[r + 1]]).any()


def test_a_one_task_fit_that_draws_ahead_fits_the_draws_made_in_turn(monkeypatch):
    """The exposure loop draws each half-step's 0-labels in a second thread while the one
    before solves (sampled.DrawsAhead): the same arrays, so the same factors and losses to the
    bit as drawing in turn, at every iteration."""
    import dataclasses

    from cfspark.train import one_task, sampled
    from cfspark.train.step import StepConfig

    rng = np.random.default_rng(11)
    users, items = 70, 50
    rated = rng.random((users, items)) < 0.4 / np.arange(1, items + 1) ** 0.4
    rated[np.arange(users), np.arange(users) % items] = True
    u, i = np.nonzero(rated)
    draws = Draws(per_label=4, weight=0.5, sampling="sqrt", seed=3)
    sides = [StepConfig(side=s, rank=3, loss="bce", reg=0.05, init_scale=0.1, count_scaled=True, bias_reg=5.0,
                        draws=draws) for s in ("user", "item")]  # fmt: skip
    args = (u, i, np.ones(len(u)), None, None, np.arange(users) + 7, np.arange(items) + 10**6, *sides)
    ahead = one_task.fit_arrays(*args, max_iter=4, tol=0.0)
    monkeypatch.setattr(one_task, "draws_ahead", lambda *a: None)
    in_turn = one_task.fit_arrays(*args, max_iter=4, tol=0.0)
    np.testing.assert_array_equal(ahead[0], in_turn[0])
    np.testing.assert_array_equal(ahead[1], in_turn[1])
    assert [h["train_loss"] for h in ahead[2]] == [h["train_loss"] for h in in_turn[2]]
    # The equality is not vacuous: other draws (another seed's), handed out the same way, fit otherwise.
    real = sampled.draws_ahead
    shifted = [dataclasses.replace(cfg, draws=dataclasses.replace(draws, seed=draws.seed + 1)) for cfg in sides]
    monkeypatch.setattr(one_task, "draws_ahead", lambda halves, last: real(
        [(shifted[h], *rest) for h, (_, *rest) in enumerate(halves)], last))  # fmt: skip
    other = one_task.fit_arrays(*args, max_iter=4, tol=0.0)
    assert not np.allclose(other[0], in_turn[0], atol=1e-6)


def test_draws_ahead_hand_out_each_half_step_once_in_order_up_to_the_last_iteration():
    import threading

    from cfspark.train.sampled import DrawsAhead

    calls, lock, gate = [], threading.Lock(), threading.Event()

    def side(name: str):
        def drawn(iteration: int) -> tuple:
            gate.wait(5)
            with lock:
                calls.append((name, iteration))
            if iteration == 99:
                raise ValueError("a draw that fails")
            return name, iteration

        return drawn

    ahead = DrawsAhead([side("user"), side("item")], last_iteration=2)
    gate.set()
    taken = [ahead.take(it, half) for it in (1, 2) for half in (0, 1)]
    assert taken == [("user", 1), ("item", 1), ("user", 2), ("item", 2)]
    ahead.close()
    assert sorted(calls) == sorted(taken)  # nothing drawn past the last iteration, nothing twice
    # Out of order, the half-step asked for is drawn then and there; a failed draw raises in the taker.
    ahead = DrawsAhead([side("user"), side("item")], last_iteration=200)
    assert ahead.take(5, 1) == ("item", 5)
    with pytest.raises(ValueError, match="a draw that fails"):
        ahead.take(99, 0)
    ahead.close()
