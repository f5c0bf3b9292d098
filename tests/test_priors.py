"""Prior counts from the data (kernels/priors.py): the method of moments' σ²/τ², its worked
example, its limits, planted effects recovered, and the Spark aggregation equal to numpy's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from tests_support import assert_bracketed

from cfspark import CollaborativeFilter
from cfspark.data.priors import moments_of
from cfspark.fit.targets import target_stats
from cfspark.kernels.baseline import target_moments
from cfspark.kernels.layout import bias_col, const_col
from cfspark.kernels.priors import group_moments, prior_count, prior_from_rows
from cfspark.train.one_task import fit_arrays
from cfspark.train.search_task import SETTLED, SearchPlan, bias_prior_after_factors, search_arrays
from cfspark.train.step import StepConfig


def test_the_worked_example():
    # Two items of two ratings, {1, 3} and {4, 6}: σ² = 2, τ² = 2.25 − 1 = 1.25.
    assert prior_from_rows(np.array([0, 0, 1, 1]), np.array([1.0, 3, 4, 6]), None, 2) == 1.6


@pytest.mark.parametrize("sigma,tau", [(1.0, 0.5), (0.8, 0.2), (2.0, 1.0)])
def test_planted_effects_give_sigma2_over_tau2(sigma, tau):
    rng = np.random.default_rng(3)
    groups, per = 4000, rng.integers(2, 40, 4000)
    group = np.repeat(np.arange(groups), per)
    y = 3.0 + rng.normal(0, tau, groups)[group] + rng.normal(0, sigma, len(group))
    m = prior_from_rows(group, y, None, groups)
    assert m == pytest.approx(sigma**2 / tau**2, rel=0.1)


def test_groups_that_differ_only_by_noise_are_held_near_the_grand_mean():
    # With no effect τ² is 0 up to chance: the cap (Σa, all the data) or a prior so heavy that
    # every group keeps under a tenth of its own mean's deviation (20 ratings each).
    for seed in range(6):
        rng = np.random.default_rng(seed)
        group = np.repeat(np.arange(500), 20)
        m = prior_from_rows(group, rng.normal(0, 1, len(group)), None, 500)
        assert 20 / (20 + m) < 0.1
        assert m <= len(group)


def test_scale_and_shift_free_and_weights_count_as_repeats():
    rng = np.random.default_rng(5)
    group = np.repeat(np.arange(300), 7)
    y = rng.normal(0, 0.5, 300)[group] + rng.normal(0, 1, len(group))
    m = prior_from_rows(group, y, None, 300)
    assert prior_from_rows(group, 4 * y + 3, None, 300) == m
    # A weight of 2 is the row written twice.
    twice = prior_from_rows(np.concatenate([group, group[:50]]), np.concatenate([y, y[:50]]), None, 300)
    weights = np.ones(len(y))
    weights[:50] = 2
    assert prior_from_rows(group, y, weights, 300) == twice


def test_degenerate_groups():
    # One rating per group leaves no within-group variance to estimate: the cap.
    assert prior_count(group_moments([1.0, 1.0, 1.0], [1.0, 2.0, 5.0], [1.0, 4.0, 25.0])) == 3.0
    # Constant groups hold no noise: nothing to shrink, 0.
    assert prior_count(group_moments([2.0, 2.0], [2.0, 8.0], [2.0, 32.0])) == 0.0


def test_the_spark_aggregation_equals_numpy(spark):
    rng = np.random.default_rng(6)
    a, s = rng.uniform(1, 9, 50), rng.normal(0, 5, 50)
    q = s * s / a + rng.uniform(0, 3, 50)
    rows = [(float(x), float(y), float(z)) for x, y, z in zip(a, s, q, strict=True)]
    got = moments_of(spark.createDataFrame(rows, "A double, S double, Q double"), "A", "S", "Q")
    want = group_moments(a, s, q)
    assert got.groups == want.groups
    for name in ("weight", "total", "within", "mean_sq", "mean_sum", "inv_weight"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_tasks_target_statistics_equal_sparks(spark, weighted):
    """target_moments (a one-task fit's g, m and s, from the rows it holds) against
    target_stats' aggregation over the item sums in Spark, weighted as the loss is."""
    rng = np.random.default_rng(8)
    item = rng.integers(0, 40, 3000) ** 2  # sparse ids: the kernel takes dense ones
    effect = rng.normal(0, 0.7, 1600)
    y = 3.2 + effect[item] + rng.normal(0, 1.1, 3000)
    a = rng.uniform(0.5, 3.0, 3000) if weighted else None
    rows = [(k, int(item[k]), float(y[k]), float(a[k]) if weighted else None) for k in range(3000)]
    df = spark.createDataFrame(rows, "user long, item long, rating double, weight double")
    df = df if weighted else df.drop("weight")
    stats = target_stats(CollaborativeFilter().fit_settings(), df)
    dense = np.unique(item, return_inverse=True)[1]
    g, m, spread, *_ = target_moments(dense, y, a, int(dense.max()) + 1, prior=None, global_mean=None)
    assert 0 < m < 100 and spread > 1
    assert (g, m) == (pytest.approx(stats.global_mean, rel=1e-12), stats.mean_prior)
    assert spread == pytest.approx(stats.spread, rel=1e-11)
    # Given, g and m are kept; at m = 0 the targets are y less each item's own weighted mean.
    g2, m2, spread2, *_ = target_moments(dense, y, a, int(dense.max()) + 1, prior=0.0, global_mean=0.0)
    w = np.ones(3000) if a is None else a
    own = np.bincount(dense, w * y) / np.bincount(dense, w)
    assert (g2, m2) == (0.0, 0.0) and spread2 == pytest.approx(math.sqrt(np.average((y - own[dense]) ** 2, weights=w)))
    # Constant ratings have no spread to scale by: 1.
    assert target_moments(dense, np.full(3000, 4.0), a, int(dense.max()) + 1, prior=None, global_mean=None)[2] == 1.0


def test_ratings_with_no_user_or_item_effect_are_predicted_by_the_global_mean(spark):
    # Every rating is 3 + noise: no user, item or interaction effect. The estimated prior
    # counts ("auto") hold the item means and biases at the grand mean, so the fit predicts as
    # well as the training mean does; constants (m = 20, λ_b = 5, the defaults before) let
    # each item and user fit its noise.
    rng = np.random.default_rng(11)
    users, items, n = 400, 300, 16_000
    pairs = rng.choice(users * items, n, replace=False)
    rows = [(int(p // items), int(p % items), float(3.0 + rng.normal())) for p in pairs]
    train, test = rows[: n * 4 // 5], rows[n * 4 // 5 :]
    schema = "user int, item int, rating double"
    train_df, test_df = spark.createDataFrame(train, schema), spark.createDataFrame(test, schema)
    mean = np.mean([r for _, _, r in train])
    constant = float(np.sqrt(np.mean([(r - mean) ** 2 for _, _, r in test])))

    def test_rmse(**params) -> tuple:
        model = CollaborativeFilter(**params).fit(train_df)
        got = model.transform(test_df).select("rating", "prediction").toPandas()
        model.unpersist()
        return float(np.sqrt(np.mean((got.rating - got.prediction) ** 2))), model

    estimated, model = test_rmse()  # the defaults: both "auto"
    per_item, per_user = len(train) / items, len(train) / users
    assert model.summary["mean_prior"] >= 5 * per_item  # an item keeps under a sixth of its mean's noise
    assert model.getBiasReg() >= 5 * per_user  # the fitted model carries the number
    assert estimated <= constant * 1.002
    fixed, _ = test_rmse(biasReg=5.0, meanPrior=20.0)
    assert fixed > constant * 1.01


def _planted_with_user_biases(seed: int):
    """y − μ_i = w·x + b + c + ε: a strong rank-3 term (variance 1), user biases of variance
    0.09 and noise of 0.36, so that the users' prior count σ²/τ² is 4."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n, rank = 600, 300, 60_000, 3
    pairs = rng.choice(n_users * n_items, n, replace=False)
    u, i = pairs // n_items, pairs % n_items
    W, X = rng.normal(size=(n_users, rank)), rng.normal(scale=rank**-0.5, size=(n_items, rank))
    b, c = rng.normal(0, 0.3, n_users), rng.normal(0, 0.2, n_items)
    y = (W[u] * X[i]).sum(1) + b[u] + c[i] + rng.normal(0, 0.6, n)
    return u, i, y, (W, X, b, c)


def _fitted(u, i, y, rank: int, reg: float):
    """Factors fitted to (u, i, y) at reg (times the ratings' RMS, count-scaled), λ_b 4: the
    params and the item half-step's config they were fitted with."""
    s = float(np.sqrt(np.mean(y**2)))
    cfg = [StepConfig(side=side, rank=rank, loss="mse", reg=reg * s, init_scale=0.1 * math.sqrt(s),
                      count_scaled=True, bias_reg=4.0) for side in ("user", "item")]  # fmt: skip
    users, items, _, _ = fit_arrays(u, i, y, None, None, np.arange(u.max() + 1), np.arange(i.max() + 1) + 10**6,
                                    *cfg, max_iter=25, tol=1e-6)  # fmt: skip
    return (users, items), cfg[1]


def test_after_the_factors_the_users_prior_is_the_noise_over_the_bias_spread():
    u, i, y, (W, X, b, c) = _planted_with_user_biases(4)
    rank = W.shape[1]
    users, items = np.zeros((len(W), rank + 2)), np.zeros((len(X), rank + 2))
    users[:, :rank], users[:, bias_col(rank, "user")], users[:, const_col(rank, "user")] = W, b, 1.0
    items[:, :rank], items[:, bias_col(rank, "item")], items[:, const_col(rank, "item")] = X, c, 1.0
    # The planted terms themselves were not fitted to this noise: a prior that holds them
    # (λ = λ_b = ∞, in effect) spends no degree of freedom.
    held = StepConfig(side="item", rank=rank, loss="mse", reg=1e12, count_scaled=True, bias_reg=1e12)
    after = bias_prior_after_factors((u, i, y, None, None), (users, items), held)
    assert after == pytest.approx(0.36 / 0.09, rel=0.1)
    # Before the factors their signal counts as noise: (0.36 + 1) / 0.09, about 15.
    assert prior_from_rows(u, y, None, len(W)) > 3 * after


@pytest.mark.parametrize("reg", [0.003, 0.03])
def test_factors_fitted_at_a_weak_lambda_leave_the_noise_on_the_degrees_they_leave(reg):
    # Rank 10 on a rank-3 truth at a λ 3–30 × weaker than its best: the seven spare directions
    # fit the noise. Divided by the ratings alone, the residual gives λ_b 3.3–3.5 for the
    # planted 4; on the degrees the factors leave, within 10 % of it.
    u, i, y, _ = _planted_with_user_biases(4)
    params, step = _fitted(u, i, y, 10, reg)
    assert bias_prior_after_factors((u, i, y, None, None), params, step) == pytest.approx(4.0, rel=0.1)
    blind = dataclasses.replace(step, reg=1e12, bias_reg=1e12)  # as if the factors spent nothing
    assert bias_prior_after_factors((u, i, y, None, None), params, blind) < 3.6


def _sparse_planted(seed: int):
    """The same effects as _planted_with_user_biases on 3,000 users × 1,500 items with 30,000
    ratings, 10 a user: a rank-10 fit at a weak λ can fit almost every rating."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n, rank = 3000, 1500, 30_000, 3
    pairs = rng.choice(n_users * n_items, n, replace=False)
    u, i = np.unique(pairs // n_items, return_inverse=True)[1], np.unique(pairs % n_items, return_inverse=True)[1]
    W, X = rng.normal(size=(u.max() + 1, rank)), rng.normal(scale=rank**-0.5, size=(i.max() + 1, rank))
    b, c = rng.normal(0, 0.3, u.max() + 1), rng.normal(0, 0.2, i.max() + 1)
    return u, i, (W[u] * X[i]).sum(1) + b[u] + c[i] + rng.normal(0, 0.6, n)


def test_where_the_factors_spend_every_degree_the_estimate_before_them_stands():
    u, i, y = _sparse_planted(5)
    before = prior_from_rows(u, y, None, u.max() + 1)
    # At a λ 30 × weaker than its best the factors fit nearly every rating (residual σ² 0.015
    # for a planted 0.36, which gave λ_b 0.2): no estimate of the noise is left in it.
    params, step = _fitted(u, i, y, 10, 0.003)
    assert bias_prior_after_factors((u, i, y, None, None), params, step) == before
    # Nearer its best λ, the degrees they leave hold the noise again: the planted 4 within
    # 30 % (0.4 and 0.9 on the ratings alone).
    for reg in (0.06, 0.1):
        params, step = _fitted(u, i, y, 10, reg)
        assert bias_prior_after_factors((u, i, y, None, None), params, step) == pytest.approx(4.0, rel=0.3)
        blind = dataclasses.replace(step, reg=1e12, bias_reg=1e12)
        assert bias_prior_after_factors((u, i, y, None, None), params, blind) < 1.0


def test_the_search_estimates_the_bias_prior_again_once_its_factors_fit_and_brackets_lambda_there():
    fit, held, s, cfg = _search_case(5)
    plan = SearchPlan(start=(0.3, 0.1, 0.03), unit=s, low=1e-4, high=1e2, step=3.0, tol_log=math.log(1.3),
                      first_iter=20, point_iter=6, tol=0.002, bias_prior=True)  # fmt: skip
    record, _ = search_arrays(fit, held, np.arange(600), np.arange(300) + 10**6, *cfg, plan)
    before, after = record["bias_reg_before"], record["bias_reg"]
    assert before > 3 * after  # the first estimate counted the factors as noise
    assert after == pytest.approx(4.0, rel=0.25)  # fitted factors leave a little less than the noise
    assert record["path"][0]["bias_reg"] == before and record["path"][-1]["bias_reg"] == after
    # λ is bracketed again at the new λ_b: its best point there is the choice, with a worse
    # point on each side or a flat end.
    again = [p for p in record["path"] if p["bias_reg"] == after]
    best = min(again, key=lambda p: p["rmse"])
    assert best["reg"] == pytest.approx(record["reg"], rel=1e-9)
    assert_bracketed(again, best["reg"], "rmse", SETTLED)
    # and it predicts the validation fold better than the search's best at the first estimate.
    assert best["rmse"] < min(p["rmse"] for p in record["path"] if p["bias_reg"] == before)


def _search_case(seed: int):
    """The planted set split into a fit part and a validation fold, its spread s, and the
    half-step configs of a rank-3 search in spread units."""
    u, i, y, _ = _planted_with_user_biases(seed)
    held_rows = np.random.default_rng(7).random(len(y)) < 0.1
    fit = (u[~held_rows], i[~held_rows], y[~held_rows], None, None)
    held = {"user": u[held_rows], "item": i[held_rows], "y": y[held_rows], "offset": None}
    s = float(np.sqrt(np.mean(fit[2] ** 2)))
    cfg = [StepConfig(side=side, rank=3, loss="mse", reg=1.0, init_scale=0.1 * math.sqrt(s), count_scaled=True)
           for side in ("user", "item")]  # fmt: skip
    return fit, held, s, cfg


def test_a_fixed_lambda_is_fitted_for_the_bias_prior_and_not_searched():
    fit, held, s, cfg = _search_case(5)
    plan = SearchPlan(start=(0.05,), unit=s, low=1e-4, high=1e2, step=3.0, tol_log=math.log(1.3),
                      first_iter=20, point_iter=6, tol=0.002, bias_prior=True, fixed=True)  # fmt: skip
    record, params = search_arrays(fit, held, np.arange(600), np.arange(300) + 10**6, *cfg, plan, choose_rank=True)
    before, after = record["bias_reg_before"], record["bias_reg"]
    # One point, at the fixed λ and λ_b from y − μ_i; what its factors leave gives the planted
    # σ²/τ² = 4, not the first estimate's ~15.
    assert [p["reg"] for p in record["path"]] == [0.05] and record["reg"] == 0.05 and record["fixed"]
    assert record["path"][0]["bias_reg"] == before
    assert before > 3 * after and after == pytest.approx(4.0, rel=0.25)
    assert "rank_path" not in record and params[0].shape[1] == cfg[0].width  # the rank is the caller's too


def test_a_lambda_fixed_at_zero_is_fitted_as_the_limit_of_small_ones():
    """reg = 0 (no penalty on the factors) is a valid choice: its one point is fitted, keyed
    below every other λ, and scores as a λ a million times below the data's best does."""
    fit, held, s, cfg = _search_case(5)
    found = []
    for reg in (0.0, 1e-8):
        plan = SearchPlan(start=(reg,), unit=s, low=1e-4, high=1e2, step=3.0, tol_log=math.log(1.3),
                          first_iter=20, point_iter=6, tol=0.002, bias_prior=True, fixed=True)  # fmt: skip
        record, params = search_arrays(fit, held, np.arange(600), np.arange(300) + 10**6, *cfg, plan)
        assert [p["reg"] for p in record["path"]] == [reg] and record["reg"] == reg
        assert all(np.isfinite(side).all() for side in params)
        found.append((record["path"][0]["rmse"], record["bias_reg"], params))
    (rmse0, bias0, params0), (rmse1, bias1, params1) = found
    assert rmse0 == pytest.approx(rmse1, rel=1e-6) and bias0 == pytest.approx(bias1, rel=1e-6)
    # Without a penalty the factors are determined up to an invertible map; their scores are not.
    np.testing.assert_allclose(params0[0] @ params0[1].T, params1[0] @ params1[1].T, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_with_lambda_fixed_the_bias_prior_comes_from_its_factors_alike_on_both_paths(spark):
    # reg fixed, biasReg "auto": the search's task fits that λ alone and takes λ_b from what its
    # factors leave, before the one-task fit and beside the blockwise setup alike; both fits
    # start from those factors and stop on tol, so they take the same steps.
    u, i, y, _ = _planted_with_user_biases(6)
    df = spark.createDataFrame([(int(a), int(b), float(c)) for a, b, c in zip(u, i, y, strict=True)],
                               "user int, item int, rating double")  # fmt: skip
    estimates, losses = [], []
    for blocks in (0, 2):
        model = CollaborativeFilter(regParam=0.05, numUserBlocks=blocks, numItemBlocks=blocks).fit(df)
        found = model.summary["reg_search"]
        assert model.getRegParam() == pytest.approx(0.05 * model.summary["spread"], rel=1e-12)  # als units
        assert found["fixed"] and [p["reg"] for p in model.summary["reg_path"]] == [model.getRegParam()]
        assert found["bias_reg_before"] > 3 * found["bias_reg"]
        assert found["bias_reg"] == pytest.approx(4.0, rel=0.25) and model.getBiasReg() == found["bias_reg"]
        assert model.rank == 10  # no rank step under a fixed λ
        estimates.append(found["bias_reg"])
        losses.append([h["train_loss"] for h in model.history])
        model.unpersist()
    assert estimates[0] == estimates[1]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-9)
