"""The exposure model's coarse first iterations (train/sampled.py's Draws.coarse): fewer 0-labels
weighing as much in all, a stop rule that compares only the full iterations after them, and
the Param that sets them on both paths."""

from __future__ import annotations

import numpy as np
import pytest

from cfspark.train.sampled import COARSE_SHARE, Draws, at_iteration, coarse_iterations, with_negatives
from cfspark.train.step import StepConfig


def _block(users: int = 300, items: int = 400, seed: int = 5):
    """A user block as CSR: light rows naming most of many items (a block draws from the items
    its ratings name), so that no row runs out of unlabelled items to draw."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, users)
    cols = np.concatenate([rng.choice(items, c, replace=False) for c in counts])
    return np.r_[0, np.cumsum(counts)], cols, counts


@pytest.mark.parametrize("per_label", [32, 6, 3])
def test_a_coarse_iteration_draws_a_quarter_of_the_zeros_at_the_same_total_weight(per_label):
    row_ptr, cols, counts = _block()
    cfg = StepConfig(side="user", rank=2, loss="bce", reg=0.1,
                     draws=Draws(per_label=per_label, weight=0.5, sampling="uniform", seed=2, coarse=2))  # fmt: skip
    fewer = max(1, per_label // COARSE_SHARE)
    for iteration, drawn_per_label in ((1, fewer), (2, fewer), (3, per_label), (7, per_label)):
        draws = at_iteration(cfg, iteration).draws
        assert (draws.per_label, draws.iteration) == (drawn_per_label, iteration)
        ptr, _, y, _, weight = with_negatives(draws, row_ptr, cols, np.ones(len(cols)), None, None,
                                              np.arange(len(counts)) + 11, 400, "user")  # fmt: skip
        zeros = (y == 0).astype(float)
        per_row_zeros = np.add.reduceat(zeros, ptr[:-1])
        per_row_weight = np.add.reduceat(weight * zeros, ptr[:-1])
        np.testing.assert_array_equal(per_row_zeros, drawn_per_label * counts)
        # K·w per labelled pair in every iteration: the loss weighs the 0-labels alike throughout.
        np.testing.assert_allclose(per_row_weight, per_label * 0.5 * counts, rtol=1e-14)


def test_a_row_short_of_unlabelled_items_takes_them_all_at_its_iterations_weight():
    """20 items named in the block; the row of 5 labels would draw 40 (coarse) or 160 (after),
    and takes its 15 unlabelled items either way, at 4w in a coarse iteration and at w after."""
    row_ptr = np.array([0, 5, 25])
    cols = np.r_[np.arange(5), np.arange(20)]  # row 1 names all 20 items: none left for it to draw
    cfg = StepConfig(side="user", rank=2, loss="bce", reg=0.1,
                     draws=Draws(per_label=32, weight=0.5, sampling="uniform", seed=2, coarse=1))  # fmt: skip
    for iteration, weight in ((1, 2.0), (2, 0.5)):
        ptr, drawn_cols, y, _, w = with_negatives(at_iteration(cfg, iteration).draws, row_ptr, cols,
                                                  np.ones(25), None, None, np.array([11, 12]), 20, "user")  # fmt: skip
        zeros = np.flatnonzero(y == 0)
        assert sorted(drawn_cols[zeros].tolist()) == list(range(5, 20)) and ptr[-1] == 25 + 15
        np.testing.assert_array_equal(w[zeros], weight)


def test_without_coarse_iterations_every_iteration_draws_k():
    cfg = StepConfig(side="item", rank=2, loss="bce", reg=0.1, draws=Draws(per_label=32, weight=0.5,
                                                                            sampling="sqrt", seed=2))  # fmt: skip
    assert at_iteration(cfg, 1).draws.per_label == 32 and at_iteration(cfg, 1).draws.weight == 0.5
    assert coarse_iterations(cfg, StepConfig(side="user", rank=2, loss="bce", reg=0.1)) == 0


def _labels(users: int = 40, items: int = 60, seed: int = 8):
    rng = np.random.default_rng(seed)
    rated = rng.random((users, items)) < 0.3
    rated[np.arange(users), np.arange(users) % items] = True
    return np.nonzero(rated)


@pytest.mark.parametrize("coarse", [0, 2, 3])
def test_tol_compares_only_the_iterations_after_the_coarse_ones(coarse):
    """With tol = 1 any change stops a loop at its second comparable iteration: the second,
    or the second after the coarse ones."""
    from cfspark.train.one_task import fit_arrays

    u, i = _labels()
    draws = Draws(per_label=8, weight=0.5, sampling="sqrt", seed=3, coarse=coarse)
    sides = [StepConfig(side=s, rank=2, loss="bce", reg=0.05, count_scaled=True, bias_reg=5.0, draws=draws)
             for s in ("user", "item")]  # fmt: skip
    _, _, history, stop = fit_arrays(u, i, np.ones(len(u)), None, None, np.arange(40), np.arange(60) + 10**6,
                                     *sides, max_iter=10, tol=1.0)  # fmt: skip
    assert len(history) == coarse + 2 and stop.startswith("converged")


def test_a_warm_started_exposure_part_draws_k_from_its_first_iteration():
    from cfspark import CollaborativeFilter
    from cfspark.fit.exposure import exposure_settings, fresh_draws
    from cfspark.fit.settings import InitialModel

    settings = CollaborativeFilter(loss="bce", exposureCoarseIterations=3).fit_settings()
    assert fresh_draws(exposure_settings(settings), settings).draws.coarse == 3
    warm = exposure_settings(settings).replace(initialModel=InitialModel("earlier", lambda: None))
    assert fresh_draws(warm, settings).draws.coarse == 0


@pytest.mark.parametrize("blocks", [None, 2], ids=["one task", "blockwise"])
def test_the_param_reaches_the_exposure_fits_stop_rule_on_both_paths(spark, blocks):
    """exposureCoarseIterations = c: the exposure part, stopped by tol = 1, runs c + 2 iterations
    in the one job of small data and in the blockwise trainer (c = 2 alone there: without
    the skip it would stop after 2, as c = 0 does in the one job)."""
    from cfspark import CollaborativeFilter

    u, i = _labels()
    labels = spark.createDataFrame([(int(a), int(b), float((a + b) % 3 == 0)) for a, b in zip(u, i, strict=True)],
                                   "user long, item long, rating double")  # fmt: skip
    extra = {} if blocks is None else {"numUserBlocks": blocks, "numItemBlocks": blocks}
    for coarse in (0, 2) if blocks is None else (2,):
        cf = CollaborativeFilter(loss="bce", rank=2, regParam=0.1, maxIter=8, tol=1.0, exposureNegatives=4,
                                 exposureCoarseIterations=coarse, exposureRegParam=0.01, **extra)  # fmt: skip
        model = cf.fit(labels)
        assert len(model.summary["exposure"]["history"]) == coarse + 2
