"""The all-items model in the blockwise engine (train/all_items.py) is the one-task model.

Both start from the same hashed factors and take the same exact half-steps; the blockwise
one sums the other side's Gramian over its blocks. So the factors of every id agree to float
rounding after several iterations, with 2 user and 2 item blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from tests_support import jobs_of

from cfspark import CollaborativeFilter
from cfspark.data.weights import REFERENCE_ALPHA
from cfspark.fit import implicit
from cfspark.fit.reg_search import SEARCH_FRACTION

PARAMS = dict(loss="bce", rank=3, maxIter=4, tol=0.0, seed=7, exposureRegParam=0.05)


def _positive_counts(spark, n_users: int = 60, n_items: int = 40, seed: int = 3):
    """Positive-only (user, item, 1, confidence) rows with heavy-tailed confidences."""
    rng = np.random.default_rng(seed)
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.15)
    confidence = 1.0 + np.log1p(np.floor(np.exp(rng.normal(0.5, 1.5, len(users)))).clip(1))
    rows = [(int(u), int(i), 1.0, float(c)) for u, i, c in zip(users, items, confidence, strict=True)]
    return spark.createDataFrame(rows, "user long, item long, rating double, weight double")


def _factors(model, id_col):
    return {r[id_col]: np.r_[r.features, r.bias] for r in getattr(model, f"{id_col}_factors").collect()}


@pytest.mark.slow
def test_blockwise_all_items_fit_equals_the_one_task_fit(spark):
    ratings = _positive_counts(spark).cache()
    small = CollaborativeFilter(**PARAMS).fit_validated(ratings)
    spread = CollaborativeFilter(numUserBlocks=2, numItemBlocks=2, **PARAMS).fit_validated(ratings)
    assert small.summary["implicit"] == spread.summary["implicit"] == "all"
    assert small.summary["one_task"] and "one_task" not in spread.summary
    assert (spread.summary["num_user_blocks"], spread.summary["num_item_blocks"]) == (2, 2)
    for id_col in ("user", "item"):
        a, b = _factors(small, id_col), _factors(spread, id_col)
        assert a.keys() == b.keys() and len(a) > 30
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=f"{id_col} {key}")
        assert max(np.abs(v[:-1]).max() for v in a.values()) > 0.01  # the factors moved off 0
    # The same J at every iteration: the blockwise data loss counts every (user, item) pair once.
    np.testing.assert_allclose(
        [h["train_loss"] for h in small.history], [h["train_loss"] for h in spread.history], rtol=1e-10
    )
    small.unpersist(), spread.unpersist(), ratings.unpersist()


def _scores(model) -> np.ndarray:
    """w·x of every (user, item) pair, ids in order."""
    users, items = _factors(model, "user"), _factors(model, "item")
    return np.array([users[k] for k in sorted(users)])[:, :-1] @ np.array([items[k] for k in sorted(items)])[:, :-1].T


@pytest.mark.slow
def test_the_fits_beside_the_search_train_at_the_chosen_alpha(spark):
    # Under automatic λ and α the confidences are made with α₀ and the half-steps rescale them
    # to the chosen α, so the blockwise setup runs beside the search. Both paths search the
    # same rows and start from the items its choice ended with: the same choice, the same model.
    ratings = _positive_counts(spark, seed=10).cache()  # data whose chosen α is not α₀
    auto = {**PARAMS, "regParam": "auto", "alpha": "auto", "maxIter": 6}
    auto.pop("exposureRegParam")
    small = CollaborativeFilter(**auto).fit_validated(ratings)
    spread = CollaborativeFilter(numUserBlocks=2, numItemBlocks=2, **auto).fit_validated(ratings)
    assert small.summary["one_task"] and "one_task" not in spread.summary
    reg, alpha = small.summary["reg_search"]["reg"], small.summary["alpha"]
    assert spread.summary["reg_search"]["reg"] == reg and spread.summary["alpha"] == alpha
    assert alpha != REFERENCE_ALPHA  # so the half-steps' rescaling is exercised
    for id_col in ("user", "item"):
        a, b = _factors(small, id_col), _factors(spread, id_col)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=f"{id_col} {key}")
    np.testing.assert_allclose(
        [h["train_loss"] for h in small.history], [h["train_loss"] for h in spread.history], rtol=1e-10
    )
    # The fit with λ and α fixed at the choice, on confidences made with α itself (fit_validated
    # takes them as made), starts from the hashed init: its first iteration's J is higher, and
    # run on, both reach the same optimum (the scores w·x, which no rotation of the factors moves).
    made_with_alpha = ratings.withColumn("weight", 1.0 + alpha / REFERENCE_ALPHA * (F.col("weight") - 1.0))
    fixed = {**auto, "regParam": reg, "exposureRegParam": reg, "alpha": alpha}
    first = CollaborativeFilter(**fixed).fit_validated(made_with_alpha)
    assert "reg_search" not in first.summary
    assert small.history[0]["train_loss"] < first.history[0]["train_loss"]
    searched = CollaborativeFilter(**{**auto, "maxIter": 80}).fit_validated(ratings)
    reg, alpha = searched.summary["reg_search"]["reg"], searched.summary["alpha"]  # its first point ran 80 too
    made_with_alpha = ratings.withColumn("weight", 1.0 + alpha / REFERENCE_ALPHA * (F.col("weight") - 1.0))
    fixed = {**auto, "regParam": reg, "exposureRegParam": reg, "alpha": alpha, "maxIter": 80}
    long = CollaborativeFilter(**fixed).fit_validated(made_with_alpha)
    np.testing.assert_allclose(_scores(searched), _scores(long), rtol=0, atol=0.01)
    assert abs(searched.history[-1]["train_loss"] / long.history[-1]["train_loss"] - 1) < 1e-3
    for model in (small, spread, first, long, searched):
        model.unpersist()
    ratings.unpersist()


def test_the_one_task_search_and_its_fit_share_one_job(spark):
    # The search and the fit at its choice read the pairs into Python once, in one task: the
    # automatic fit starts no more Spark jobs than the fit with λ and α fixed, which has no search.
    ratings = _positive_counts(spark).cache()
    ratings.count()
    auto = {**PARAMS, "regParam": "auto", "alpha": "auto"}
    small, searched = jobs_of(spark, lambda: CollaborativeFilter(**auto).fit_validated(ratings))
    reg, alpha = small.summary["reg_search"]["reg"], small.summary["alpha"]
    fixed = {**PARAMS, "regParam": reg, "exposureRegParam": reg, "alpha": alpha}
    _, unsearched = jobs_of(spark, lambda: CollaborativeFilter(**fixed).fit_validated(ratings))
    assert small.summary["one_task"] and len(small.summary["reg_path"]) >= 6
    assert searched == unsearched, (searched, unsearched)
    ratings.unpersist()


@pytest.mark.slow
def test_past_the_search_limit_one_task_searches_a_sample_and_fits_every_pair(spark, monkeypatch):
    """Past SEARCH_RATINGS and within the one-task limit, one task searches a hashed share of
    the users, then fits every pair from the factors it ended with: the blockwise fit from the
    same sample, searched in its own task beside the setup, iteration for iteration."""
    ratings = _positive_counts(spark, n_users=120, n_items=60).cache()
    monkeypatch.setattr(implicit, "SEARCH_RATINGS", ratings.count() // 3)
    auto = {**PARAMS, "regParam": "auto", "alpha": "auto", "maxIter": 6}
    auto.pop("exposureRegParam")
    one = CollaborativeFilter(**auto).fit_validated(ratings)
    search = one.summary["reg_search"]
    assert one.summary["one_task"] and search["sample_fraction"] == SEARCH_FRACTION
    assert search["task_seconds"].keys() == {"input", "search", "fit"}  # the search and the fit in one task
    users = ratings.select("user").distinct().count()
    assert 0 < search["sample"]["users"] < users / 2 and search["sample"]["ratings"] < ratings.count() / 2
    blocks = CollaborativeFilter(numUserBlocks=2, numItemBlocks=2, **auto).fit_validated(ratings)
    assert "one_task" not in blocks.summary and blocks.summary["reg_search"]["sample"] == search["sample"]
    assert [(p["reg"], p["alpha"]) for p in blocks.summary["reg_path"]] == [
        (p["reg"], p["alpha"]) for p in one.summary["reg_path"]
    ]
    assert [p["ndcg"] for p in blocks.summary["reg_path"]] == pytest.approx(
        [p["ndcg"] for p in one.summary["reg_path"]], rel=1e-9
    )
    np.testing.assert_allclose(
        [h["train_loss"] for h in one.history], [h["train_loss"] for h in blocks.history], rtol=1e-9
    )
    for id_col in ("user", "item"):
        a, b = _factors(one, id_col), _factors(blocks, id_col)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=f"{id_col} {key}")
    # The start is the search's: from the hashed init at the same λ and α (on confidences made
    # with α, as a fixed α takes them) the first loss is higher.
    reg, alpha = one.summary["reg_search"]["reg"], one.summary["alpha"]
    made_with_alpha = ratings.withColumn("weight", 1.0 + alpha / REFERENCE_ALPHA * (F.col("weight") - 1.0))
    fixed = {**auto, "regParam": reg, "exposureRegParam": reg, "alpha": alpha}
    cold = CollaborativeFilter(**fixed).fit_validated(made_with_alpha)
    assert cold.summary["one_task"] and cold.history[0]["train_loss"] > one.history[0]["train_loss"]
    one.unpersist(), blocks.unpersist(), cold.unpersist(), ratings.unpersist()
