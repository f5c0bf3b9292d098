"""Scale-free λ (regUnits = "spread", the default): λ = regParam·s with s the root mean square
of the normalised training ratings, and the initial factors' spread initScale·√s.

The algebra (docs/model.md): with targets y' × a, factors × √a and biases × a make every
residual × a, so the data term grows by a² and λ/2 Σ n‖w‖² by a·λ: λ × a keeps J × a².
s × a does that. So ratings × a + c give predictions × a + c, up to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_ratings

from cfspark import CollaborativeFilter
from cfspark.fit.targets import target_spread

PARAMS = dict(rank=3, maxIter=8, tol=0.0, seed=5, regParam=0.1)


@pytest.fixture(scope="module")
def planted(spark):
    p = planted_ratings(n_users=90, n_items=60, rank=3, density=0.3, noise=0.4, seed=8)
    rows = p.rows()
    test = [(u, i) for u in range(90) for i in (0, 7, 59)] + [(1000, 3), (2, 1000)]  # cold user, cold item
    return rows, spark.createDataFrame(test, "user long, item long")


def _frame(spark, rows, a=1.0, c=0.0, weight=None):
    if weight is None:
        return spark.createDataFrame([(u, i, a * r + c) for u, i, r in rows], "user long, item long, rating double")
    return spark.createDataFrame(
        [(u, i, a * r + c, w) for (u, i, r), w in zip(rows, weight, strict=True)],
        "user long, item long, rating double, weight double",
    )


def _predictions(model, test):
    return np.array([r.prediction for r in model.transform(test).orderBy("user", "item").collect()])


@pytest.mark.parametrize("prior", [20.0, 0.0])
def test_spread_is_the_rms_of_the_normalised_targets(spark, planted, prior):
    rows, _ = planted
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(rows))
    settings = CollaborativeFilter(meanPrior=prior).fit_settings()
    users, items, y = (np.array(col) for col in zip(*rows, strict=True))
    g = (w * y).sum() / w.sum()
    mu = {i: ((w * y)[items == i].sum() + prior * g) / (w[items == i].sum() + prior) for i in set(items.tolist())}
    residual = y - np.array([mu[i] for i in items])
    expected = np.sqrt((w * residual**2).sum() / w.sum())
    spread, count = target_spread(settings, _frame(spark, rows, weight=w.tolist()))
    # s is rounded to 12 significant digits (fit/targets.py says why): within 5e-12 of exact.
    assert spread == pytest.approx(expected, rel=1e-11) and count == len(rows)
    scaled, _ = target_spread(settings, _frame(spark, rows, 4.0, 3.0, weight=w.tolist()))
    assert scaled == pytest.approx(4 * expected, rel=1e-11)


def test_ratings_times_a_plus_c_give_predictions_times_a_plus_c_with_the_defaults(spark, planted):
    rows, test = planted
    cf = CollaborativeFilter()  # automatic λ, in units of the spread
    base, scaled = cf.fit_validated(_frame(spark, rows)), cf.fit_validated(_frame(spark, rows, 4.0, 3.0))
    np.testing.assert_allclose(_predictions(scaled, test), 4 * _predictions(base, test) + 3, rtol=1e-6)
    assert scaled.summary["reg_search"]["reg"] == base.summary["reg_search"]["reg"]
    assert [s["iterations"] for s in scaled.summary["reg_path"]] == [s["iterations"] for s in base.summary["reg_path"]]
    np.testing.assert_allclose([s["rmse"] for s in scaled.summary["reg_path"]],
                               [4 * s["rmse"] for s in base.summary["reg_path"]], rtol=1e-9)  # fmt: skip
    assert scaled.getRegParam() == pytest.approx(4 * base.getRegParam(), rel=2e-11)  # two roundings of s


@pytest.mark.parametrize("blocks", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_fixed_reg_in_spread_units_is_scale_free(spark, planted, blocks):
    rows, test = planted
    cf = CollaborativeFilter(numUserBlocks=blocks, numItemBlocks=blocks, **PARAMS)
    base, scaled = cf.fit_validated(_frame(spark, rows)), cf.fit_validated(_frame(spark, rows, 4.0, 3.0))
    p, q = _predictions(base, test), _predictions(scaled, test)
    np.testing.assert_allclose(q, 4 * p + 3, rtol=1e-6)
    assert scaled.summary["spread"] == pytest.approx(4 * base.summary["spread"], rel=2e-11)
    # The model keeps λ in ALS's units: regParam·s.
    assert base.getRegParam() == pytest.approx(0.1 * base.summary["spread"], rel=1e-15)
    assert scaled.getRegParam() == pytest.approx(4 * base.getRegParam(), rel=2e-11)  # two roundings of s
    if blocks:
        return  # the contrast below is about units, not the engine: once is enough
    # In ALS's units the same λ on scaled ratings is a different model (the reason for the units).
    als = CollaborativeFilter(regUnits="als", numUserBlocks=blocks, numItemBlocks=blocks, **PARAMS)
    r = _predictions(als.fit_validated(_frame(spark, rows, 4.0, 3.0)), test)
    assert np.abs(r - (4 * p + 3)).max() > 1e-3


def test_als_units_convert_by_the_spread(spark, planted):
    """reg_als = reg·s, with the init's spread √s: the same model in either units."""
    rows, test = planted
    ratings = _frame(spark, rows, 2.0, -1.0)
    spread_model = CollaborativeFilter(**PARAMS).fit_validated(ratings)
    s = spread_model.summary["spread"]
    als = CollaborativeFilter(**{**PARAMS, "regParam": 0.1 * s}, regUnits="als", initScale=0.1 * s**0.5)
    np.testing.assert_allclose(_predictions(als.fit_validated(ratings), test), _predictions(spread_model, test),
                               rtol=1e-12)  # fmt: skip
