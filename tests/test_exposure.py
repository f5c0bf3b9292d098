"""Exposure-aware bce: weighted sampled negatives, the exposure model on a planted exposure
process, count weights, and what an exposure-aware model predicts, recommends and saves."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_approx_df_equality
from planted import planted_exposure
from pyspark.sql import functions as F

from cfspark import CFModel, CollaborativeFilter
from cfspark.core.errors import InputError
from cfspark.core.schema import ITEM, P_EXPOSED, P_LIKE, RATING, SCORE, USER, WEIGHT
from cfspark.data.exposure import exposure_labels
from cfspark.data.metrics import pointwise_metrics, ranking_metrics, relevant_pairs
from cfspark.data.negatives import add_negatives, sampling_weights
from cfspark.data.read import Columns
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings
from cfspark.data.weights import confidence

K = 10


@pytest.fixture(scope="module")
def planted(spark):
    """Labels of a planted exposure process, split 80/20, and the truth P(like | shown)."""
    data, like = planted_exposure(n_users=300, n_items=150, rank=3, shown=0.1, seed=5)
    ratings = spark.createDataFrame([(int(u), int(i), float(y)) for u, i, y in data.rows()], [USER, ITEM, RATING])
    train, test = split_ratings(ratings, test_fraction=0.2, seed=11)
    return train.cache(), test.cache(), like


def _ndcg(model, train, test) -> float:
    recs = model.recommend_canonical(K)
    return ranking_metrics(recs, relevant_pairs(test, model.user_factors, loss="bce", threshold=0.5), k=K)["ndcg_at_k"]


@pytest.mark.slow
def test_exposure_model_recovers_p_like_and_ranks_better_than_plain_bce(spark, planted):
    train, test, like = planted
    base = dict(loss="bce", rank=3, maxIter=15, regParam=0.1, regUnits="als")
    exposure_aware = CollaborativeFilter(**base, exposureNegatives=8, negativeWeight=0.5, negativeSampling="uniform")
    model = exposure_aware.fit_validated(train)
    plain = CollaborativeFilter(**base, exposure=False).fit_validated(train)
    # Plain bce with sampled negatives: the sampled zeros taught as if they had been shown and skipped.
    sampled = add_negatives(train, per_positive=4, sampling="uniform", seed=3, only_new=True)
    with_negatives = CollaborativeFilter(**base, exposure=False).fit_validated(train.unionByName(sampled))

    # P(like | shown) on the observed test pairs: the exposure-aware model's predictions are it.
    logloss = {name: pointwise_metrics(m, test)["logloss"] for name, m in
               (("exposure", model), ("plain", plain), ("sampled", with_negatives))}  # fmt: skip
    assert logloss["exposure"] < logloss["sampled"] - 0.05
    assert logloss["exposure"] == pytest.approx(logloss["plain"], abs=1e-9)  # the same preference fit
    # Ranking every unlabelled item: the score, P(exposed)·P(like | shown), finds the test positives.
    ndcg_exposure, ndcg_plain = _ndcg(model, train, test), _ndcg(plain, train, test)
    assert ndcg_exposure > 1.5 * ndcg_plain and ndcg_exposure > 0.2


def test_exposure_labels_are_the_labelled_pairs_alone_with_their_weights(spark):
    """The exposure fit materialises one row per label: its 0s are drawn inside the half-steps
    (train/sampled.py), where K + 1 = 33 times as many rows used to be built before the fit."""
    labelled = spark.createDataFrame(
        [(1, 10, 1.0, 3.0), (1, 11, 0.0, 1.0), (2, 10, 1.0, 1.0)], [USER, ITEM, RATING, WEIGHT]
    )
    out = exposure_labels(labelled).toPandas().sort_values([USER, ITEM])
    # every labelled pair is exposed (a 0-label too), with its own weight, and there is nothing else
    assert out[[USER, ITEM]].values.tolist() == [[1, 10], [1, 11], [2, 10]]
    assert out[RATING].tolist() == [1.0, 1.0, 1.0] and out[WEIGHT].tolist() == [3.0, 1.0, 1.0]


def test_a_count_weighs_one_plus_alpha_times_it_and_a_zero_count_is_refused(spark):
    cols = Columns("u", "i", "clicked", "plays")
    rows = spark.createDataFrame([(1, 10, 1, 1), (1, 11, 1, 2), (2, 10, 1, 4)], ["u", "i", "clicked", "plays"])
    valid = validate_ratings(rows, cols, id_type="long", duplicates="error", labels=True)
    weighted = valid.withColumn(WEIGHT, confidence(F.col(WEIGHT), 0.5, "linear"))
    expected = spark.createDataFrame(
        [(1, 10, 1.0, 1.5), (1, 11, 1.0, 2.0), (2, 10, 1.0, 3.0)],
        f"{USER} long, {ITEM} long, {RATING} double, {WEIGHT} double",
    )
    # doubling a count (1 → 2, 2 → 4) adds α·c to its weight: 1.5 → 2.0 → 3.0
    assert_approx_df_equality(weighted, expected, precision=1e-12, ignore_row_order=True)
    zero = spark.createDataFrame([(1, 10, 1, 3), (2, 11, 1, 0), (3, 12, 1, 0)], ["u", "i", "clicked", "plays"])
    refused = (
        r"column 'plays' \(input.weight_col\) has 2 count\(s\) that are not above 0 out of 3 rows, e.g. .*'plays': 0"
    )
    with pytest.raises(InputError, match=refused):
        validate_ratings(zero, cols, id_type="long", duplicates="error", labels=True)


def test_positive_only_counts_fit_the_exposure_model_alone(spark):
    """Plays as counts, no 0-labels: P(like | shown) cannot be learnt, P(exposed) can; heavier
    counts pull an item up for the users who played it."""
    rng = np.random.default_rng(4)
    rows = [(int(u), int(i), 1, int(rng.integers(1, 5))) for u in range(60) for i in rng.choice(40, 6, replace=False)]
    plays = spark.createDataFrame(rows, ["listener", "track", "played", "plays"])
    cf = CollaborativeFilter(userCol="listener", itemCol="track", ratingCol="played", weightCol="plays", alpha=0.5,
                             loss="bce", rank=2, maxIter=5, exposureNegatives=4, implicit="sampled",
                             exposureRegParam=0.01)  # fmt: skip  # the λ search has tests of its own
    model = cf.fit(plays)
    assert model.summary["positive_only"] and model.exposure_model is None
    recs = model.recommendForAllUsers(3).toPandas()
    assert list(recs.columns) == ["listener", "track", "rank", SCORE, P_LIKE, P_EXPOSED]
    assert recs[P_LIKE].isna().all() and np.allclose(recs[P_EXPOSED], recs[SCORE]) and len(recs) == 180
    # Its 0s are drawn in the half-steps from (seed, iteration, user): the same seed, the same model.
    again = cf.fit(plays).item_factors.toPandas().sort_values(ITEM)
    first = model.item_factors.toPandas().sort_values(ITEM)
    np.testing.assert_array_equal(np.stack(again.features), np.stack(first.features))
    other = cf.copy({cf.seed: 5}).fit(plays).item_factors.toPandas().sort_values(ITEM)
    assert np.abs(np.stack(other.features) - np.stack(first.features)).max() > 1e-3


@pytest.mark.slow
def test_exposure_aware_model_predicts_recommends_and_saves(spark, planted, tmp_path):
    train, _, _ = planted
    model = CollaborativeFilter(loss="bce", rank=2, maxIter=3, exposureNegatives=3).fit_validated(train)
    pairs = train.limit(5)
    predicted = model.transform(pairs).toPandas()
    exposed = model.exposure_model.transform(pairs).toPandas()
    np.testing.assert_allclose(predicted[P_EXPOSED], exposed[P_EXPOSED], rtol=1e-12)
    np.testing.assert_allclose(predicted[SCORE], predicted["prediction"] * predicted[P_EXPOSED], rtol=1e-12)

    recs = model.recommend_canonical(4).toPandas().sort_values([USER, "rank"])
    # the score is the product of the two probabilities, and ranks every row
    np.testing.assert_allclose(recs[SCORE], recs[P_LIKE] * recs[P_EXPOSED], rtol=1e-9)
    assert (recs.groupby(USER)[SCORE].diff().dropna() <= 1e-15).all()
    dense = model.predict_canonical(recs[[USER, ITEM]].pipe(spark.createDataFrame)).toPandas()
    assert len(dense) == len(recs)

    model.write().save(str(tmp_path / "model"))
    loaded = CFModel.load(str(tmp_path / "model"))
    again = loaded.recommend_canonical(4).toPandas().sort_values([USER, "rank"])
    np.testing.assert_allclose(again[SCORE], recs[SCORE].to_numpy(), rtol=1e-12)
    assert (again[ITEM].to_numpy() == recs[ITEM].to_numpy()).all()
    with pytest.raises(ValueError, match="foldIn does not fold users into an exposure model"):
        loaded.foldIn(train.limit(1))


def test_sampling_weights_are_the_counts_their_square_roots_or_equal():
    counts = np.array([0.0, 1.0, 4.0, 100.0])
    np.testing.assert_array_equal(sampling_weights(counts, "popularity"), [0.0, 1.0, 4.0, 100.0])
    np.testing.assert_array_equal(sampling_weights(counts, "sqrt"), [0.0, 1.0, 2.0, 10.0])
    np.testing.assert_array_equal(sampling_weights(counts, "uniform"), [1.0, 1.0, 1.0, 1.0])
