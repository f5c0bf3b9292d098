"""bce with exposure in one Spark job (fit/exposure_task.py): the same models, λ search and
records as the exposure fit, the search and the preference fit run one after the other."""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_exposure, planted_labels

from cfspark import CollaborativeFilter
from cfspark.core.schema import ITEM, RATING, USER
from cfspark.data.split import split_ratings
from cfspark.train.bce_task import search_offsets


@pytest.fixture(scope="module")
def labels(spark):
    data, _ = planted_exposure(n_users=120, n_items=60, rank=2, shown=0.15, seed=8)
    ratings = spark.createDataFrame([(int(u), int(i), float(y)) for u, i, y in data.rows()], [USER, ITEM, RATING])
    return split_ratings(ratings, test_fraction=0.2, seed=3)[0].cache()


def _features(table, key):
    frame = table.toPandas().sort_values(key)
    return np.c_[np.stack(frame.features), frame.bias]


@pytest.mark.parametrize("reg", ["auto", pytest.param(0.05, marks=pytest.mark.slow)])
def test_one_job_fits_the_models_the_three_fits_give(spark, labels, monkeypatch, reg):
    from cfspark.fit import exposure

    cf = CollaborativeFilter(loss="bce", rank=2, maxIter=4, exposureNegatives=3, regParam=reg)
    one = cf.fit_validated(labels)
    assert "one_job" in one.summary
    monkeypatch.setattr(exposure, "runs_in_one_task", lambda *args: False)  # the three fits, one job each
    three = cf.fit_validated(labels)
    assert "one_job" not in three.summary
    assert one.summary["reg"] == three.summary["reg"]
    if reg == "auto":
        assert [p["reg"] for p in one.summary["reg_path"]] == [p["reg"] for p in three.summary["reg_path"]]
        np.testing.assert_allclose([p["logloss"] for p in one.summary["reg_path"]],
                                   [p["logloss"] for p in three.summary["reg_path"]], rtol=1e-12)  # fmt: skip
        # The same search, apart from how long it took (the separate search times itself).
        def searched(model):
            return {k: v for k, v in model.summary["reg_search"].items() if k not in ("seconds", "task_seconds")}

        assert searched(one) == {**searched(three), "sample_fraction": 1.0}
    for a, b in ((one, three), (one.exposure_model, three.exposure_model)):
        np.testing.assert_allclose(_features(a.user_factors, USER), _features(b.user_factors, USER), atol=1e-9)
        np.testing.assert_allclose(_features(a.item_factors, ITEM), _features(b.item_factors, ITEM), atol=1e-9)
        assert [h["train_loss"] for h in a.history] == pytest.approx([h["train_loss"] for h in b.history], rel=1e-12)
    assert one.summary["exposure"]["stop_reason"] == three.summary["exposure"]["stop_reason"]
    pairs = labels.limit(20)
    scores = [m.transform(pairs).toPandas().sort_values([USER, ITEM]).score for m in (one, three)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-9)


def test_search_offsets_are_the_smoothed_rates_logits():
    """o_i = logit((Σa·y + m·p) / (Σa + m)) over the fit rows only, p their weighted rate."""
    item = np.array([0, 0, 1, 1, 1, 2])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    weight = np.array([1.0, 2.0, 1.0, 1.0, 1.0, 5.0])
    fit_rows = np.array([True, True, True, True, True, False])
    offsets, glob = search_offsets(item, y, weight, fit_rows, 3, prior=2.0)
    p = 3.0 / 6.0
    rates = [(1 + 2 * p) / (3 + 2), (2 + 2 * p) / (3 + 2), p]  # item 2 has no fit row: the global rate
    np.testing.assert_allclose(offsets, np.log(np.divide(rates, np.subtract(1, rates))), rtol=1e-14)
    assert glob == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="one value"):
        search_offsets(item, np.ones(6), None, fit_rows, 3, prior=2.0)


@pytest.mark.slow
def test_bce_fits_at_the_automatic_reg_from_the_searchs_factors_on_both_paths(spark):
    # Without exposure, the one-task fit runs the search and the fit in one job and the
    # blockwise fit warm-starts from the factors the search's task returns: both start from
    # the search's factors at its choice (ids outside its fit part from the hashed init), so
    # their first iterations agree up to the order of float sums, well below a fit at the same
    # λ from the hashed init, which near the collapse stops beside the zero-factor saddle.
    data, _ = planted_labels(n_users=300, n_items=150, rank=3, density=0.3, seed=4)
    ratings = spark.createDataFrame([(int(u), int(i), float(y)) for u, i, y in data.rows()], [USER, ITEM, RATING])
    train = split_ratings(ratings, test_fraction=0.2, seed=3)[0].cache()
    cf = CollaborativeFilter(loss="bce", rank=3, exposure=False)
    one = cf.fit_validated(train)
    blocks = cf.copy({cf.numUserBlocks: 2, cf.numItemBlocks: 2}).fit_validated(train)
    assert "one_job" not in one.summary and one.summary["reg_search"]["task_seconds"]["fit"] >= 0
    assert [p["reg"] for p in one.summary["reg_path"]] == [p["reg"] for p in blocks.summary["reg_path"]]
    assert one.summary["reg"] == blocks.summary["reg"]
    first = [model.history[0]["train_loss"] for model in (one, blocks)]
    assert first[1] == pytest.approx(first[0], rel=1e-9)
    cold = CollaborativeFilter(loss="bce", rank=3, exposure=False, regParam=one.summary["reg"]).fit_validated(train)
    assert first[0] < cold.history[0]["train_loss"], (first, cold.history[0]["train_loss"])
