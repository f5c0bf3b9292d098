"""The exposure part's automatic λ (fit/exposure_search.py): chosen on NDCG@10 of P(exposed)
over a validation fold, bracketed in log λ, carried over from a user sample, and the same
search on both of the fit's paths."""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_exposure
from pyspark.sql import functions as F
from tests_support import assert_bracketed

from cfspark import CollaborativeFilter
from cfspark.core.schema import ITEM, RATING, USER
from cfspark.data.split import split_ratings
from cfspark.fit.exposure_search import (
    MIN_FRACTION,
    REFERENCE,
    SEARCH_LABELS,
    exposure_fraction,
    exposure_plan,
    search_exposure,
)
from cfspark.kernels.ranking import ndcg_rows
from cfspark.train.bce_task import BceTaskConfig, fit_exposure
from cfspark.train.one_task import csr_by_row, fit_arrays
from cfspark.train.sampled import Draws, at_reg
from cfspark.train.search_task import OUTSIDE, transfer_factor
from cfspark.train.step import StepConfig

N_USERS, N_ITEMS = 500, 200
REG_STRONG = REFERENCE * 3  # the start grid's strong end
DRAWS = Draws(per_label=8, weight=0.5, sampling="sqrt", seed=3, coarse=2)


def _cfg(side: str) -> StepConfig:
    return StepConfig(side=side, rank=3, loss="bce", reg=REFERENCE, init_scale=0.1, count_scaled=True, bias_reg=5.0,
                      learn_bias=True, draws=DRAWS)  # fmt: skip


def _split(scale: float, seed: int):
    """Planted shown pairs (exposure by popularity alone at scale 0, by taste as well above it),
    a 20 % test split and a 10 % validation fold of the rest."""
    data, _ = planted_exposure(n_users=N_USERS, n_items=N_ITEMS, rank=3, shown=0.08, seed=seed, scale=scale)
    rng = np.random.default_rng(5)
    test = rng.random(len(data.users)) < 0.2
    held = rng.random(len(data.users)) < 0.1
    return data.users.astype(np.int64), data.items.astype(np.int64), test, held & ~test


def _search(users, items, fit_rows, held_rows):
    """search_exposure on the fit rows' dense ids, the held rows on them (−1: unseen there)."""
    kept_users, user_local = np.unique(users[fit_rows], return_inverse=True)
    kept_items, item_local = np.unique(items[fit_rows], return_inverse=True)
    dense_users, dense_items = np.full(N_USERS, -1), np.full(N_ITEMS, -1)
    dense_users[kept_users], dense_items[kept_items] = np.arange(len(kept_users)), np.arange(len(kept_items))
    held = {"user": dense_users[users[held_rows]], "item": dense_items[items[held_rows]]}
    fit = (user_local, item_local, np.ones(len(user_local)), None, None)
    return search_exposure(fit, held, kept_users, kept_items + 10**6, _cfg("user"), _cfg("item"),
                           exposure_plan(20, 0.002))  # fmt: skip


def _test_ndcg(users, items, test, reg: float) -> float:
    """NDCG@10 of P(exposed) on the test pairs of the exposure part fitted at reg on the rest."""
    train = ~test
    W, X, _, _ = fit_arrays(users[train], items[train], np.ones(train.sum()), None, None, np.arange(N_USERS),
                            np.arange(N_ITEMS) + 10**6, at_reg(_cfg("user"), reg), at_reg(_cfg("item"), reg),
                            max_iter=20, tol=0.002)  # fmt: skip
    seen = csr_by_row(users[train], items[train], N_USERS)[:2]
    held = csr_by_row(users[test], items[test], N_USERS)[:2]
    return float(ndcg_rows(W, X, np.arange(N_USERS), seen, held, 10).mean())


@pytest.mark.parametrize("seed", [1, 2])
def test_exposure_by_popularity_alone_gets_a_strong_lambda_that_ranks_better_than_the_reference(seed):
    # Who is shown what follows the items' popularity alone: the factors can only fit the sampled
    # 0-labels' noise, so the search widens past the start grid's strong end, where they shrink.
    users, items, test, held = _split(scale=0.0, seed=seed)
    found, params = _search(users, items, ~test & ~held, held)
    assert found["reg"] >= 3 * REG_STRONG and "up" in found["widened"]
    misses = [{"reg": p["reg"], "miss": 1.0 - p["ndcg"]} for p in found["path"]]
    assert_bracketed(misses, found["reg"], "miss", resolution=0.02)
    assert params is not None and np.all(np.isfinite(params[0]))
    chosen, reference = _test_ndcg(users, items, test, found["reg"]), _test_ndcg(users, items, test, REFERENCE)
    assert chosen > 1.1 * reference, (chosen, reference)


@pytest.mark.parametrize("seed", [1, 2])
def test_exposure_by_taste_keeps_a_lambda_that_ranks_as_the_reference_does(seed):
    # Who is shown what follows a planted taste: the factors carry it, and the search stays in
    # its start grid, where NDCG is flat, at no loss against the reference λ.
    users, items, test, held = _split(scale=3.0, seed=seed)
    found, _ = _search(users, items, ~test & ~held, held)
    assert found["reg"] <= REG_STRONG
    chosen, reference = _test_ndcg(users, items, test, found["reg"]), _test_ndcg(users, items, test, REFERENCE)
    assert chosen >= 0.98 * reference, (chosen, reference)


def test_the_search_is_deterministic():
    users, items, test, held = _split(scale=0.0, seed=1)
    (first, a), (second, b) = (_search(users, items, ~test & ~held, held) for _ in range(2))
    assert first == second
    np.testing.assert_array_equal(a[1], b[1])


def test_the_share_of_users_searched():
    assert exposure_fraction(SEARCH_LABELS) == 1.0
    assert exposure_fraction(4 * SEARCH_LABELS) == pytest.approx(0.25)
    assert exposure_fraction(100 * SEARCH_LABELS) == MIN_FRACTION


def test_a_sample_of_the_users_carries_its_lambda_over_to_all_of_them():
    # fit_exposure (train/bce_task.py) with half the users OUTSIDE the search: its λ is the
    # sample's choice times transfer_factor of the sample's sizes against the whole's, and the
    # fit runs at it; all users searched, λ is the search's own choice.
    users, items, _, held = _split(scale=0.0, seed=1)
    user_codes, user_keys = np.unique(users, return_inverse=True)[1], np.unique(users)
    in_sample = np.random.default_rng(9).random(len(user_keys)) < 0.5
    fold = np.where(in_sample[user_codes], held.astype(int), OUTSIDE)
    item_codes, item_keys = np.unique(items, return_inverse=True)[1], np.unique(items) + 10**6

    def config(sample: float) -> BceTaskConfig:
        return BceTaskConfig(user=_cfg("user"), item=_cfg("item"), exposure_user=_cfg("user"),
                             exposure_item=_cfg("item"), plan=None, offset_prior=2.0, item_offset=False,
                             max_iter=20, tol=0.002, exposure_plan=exposure_plan(20, 0.002, sample),
                             exposure_search=search_exposure)  # fmt: skip

    _, record = fit_exposure(user_codes, item_codes, None, user_keys, item_keys, config(0.5), fold)
    found = record["search"]
    searched = fold != OUTSIDE
    assert found["sample"] == {"ratings": int(searched.sum()), "users": int(in_sample.sum()),
                               "items": len(np.unique(item_codes[searched]))}  # fmt: skip
    factor = transfer_factor(found["sample"], 0.5, len(users), len(item_keys))
    assert 0 < factor < 1  # a sample has more factor vectors per label: it chose a stronger λ
    assert found["transfer"] == factor and found["reg"] == pytest.approx(found["sample_reg"] * factor, rel=1e-12)
    _, whole = fit_exposure(user_codes, item_codes, None, user_keys, item_keys, config(1.0),
                            np.where(held, 1, 0))  # fmt: skip
    assert "sample_reg" not in whole["search"] and "transfer" not in whole["search"]


@pytest.fixture(scope="module")
def popular(spark):
    """Labels whose exposure is popularity alone, as a DataFrame's training split."""
    data, _ = planted_exposure(n_users=300, n_items=120, rank=2, shown=0.1, seed=4, scale=0.0)
    rows = [(int(u), int(i), float(y)) for u, i, y in data.rows()]
    ratings = spark.createDataFrame(rows, [USER, ITEM, RATING])
    return split_ratings(ratings, test_fraction=0.2, seed=3)[0].cache()


@pytest.mark.slow
def test_one_job_and_the_separate_fits_search_the_same_exposure_lambda(spark, popular, monkeypatch):
    # The one Spark job of small data searches in its exposure task; the separate fits search
    # in a task of their own, then fit from its factors: the same fold, points and choice.
    from cfspark.fit import exposure

    cf = CollaborativeFilter(loss="bce", rank=2, maxIter=6, exposureNegatives=4, regParam=0.1)
    one = cf.fit(popular)
    monkeypatch.setattr(exposure, "runs_in_one_task", lambda *args: False)
    separate = cf.fit(popular)
    paths = [model.summary["exposure"]["reg_path"] for model in (one, separate)]
    assert [(p["reg"], p["iterations"]) for p in paths[0]] == [(p["reg"], p["iterations"]) for p in paths[1]]
    assert [p["ndcg"] for p in paths[0]] == pytest.approx([p["ndcg"] for p in paths[1]], abs=1e-9)
    chosen = [model.summary["exposure"]["reg"] for model in (one, separate)]
    assert chosen[0] == chosen[1] == one.summary["exposure"]["reg_search"]["reg"]
    assert chosen[0] > REFERENCE  # popularity alone: a stronger λ than the reference
    assert one.exposure_model.getRegParam() == chosen[0]
    assert separate.exposure_model.getRegParam() == chosen[0]
    # Both fits start from the search's factors at its choice: the one job's in its task, the
    # separate one blockwise (a warm start), whose 0-labels are drawn per block; their losses
    # agree to the draws' noise from the first iteration on.
    losses = [[h["train_loss"] for h in model.summary["exposure"]["history"]] for model in (one, separate)]
    assert len(losses[0]) == len(losses[1])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)


def test_a_fixed_exposure_lambda_is_not_searched(spark, popular):
    model = CollaborativeFilter(loss="bce", rank=2, maxIter=3, exposureNegatives=4, regParam=0.1,
                                exposureRegParam=0.05).fit(popular)  # fmt: skip
    assert model.summary["exposure"]["reg"] == 0.05 and "reg_search" not in model.summary["exposure"]
    assert model.exposure_model.getRegParam() == 0.05
    assert popular.filter(F.col(RATING) == 1).count() > 0
