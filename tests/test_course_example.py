"""The course's 5 movies × 5 users example: exact item means, exact normalised ratings,
and a user with no ratings (Eve) predicted at the item means."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_df_equality

from cfspark import COURSE_PARAMS, CollaborativeFilter
from cfspark.data.normalise import item_means, normalise
from cfspark.kernels.priors import prior_from_rows

USERS = ["Alice", "Bob", "Carol", "Dave", "Eve"]
TABLE = {  # movie: ratings by Alice, Bob, Carol, Dave, Eve (None = not rated)
    "Love at last": [5, 5, 0, 0, None],
    "Romance forever": [5, None, None, 0, None],
    "Cute puppies of love": [None, 4, 0, None, None],
    "Nonstop car chases": [0, 0, 5, 4, None],
    "Swords vs. karate": [0, 0, 5, 0, None],
}
MEANS = {
    "Love at last": 2.5,
    "Romance forever": 2.5,
    "Cute puppies of love": 2.0,
    "Nonstop car chases": 2.25,
    "Swords vs. karate": 1.25,
}


def course_rows():
    return [
        (user, movie, float(r))
        for movie, rs in TABLE.items()
        for user, r in zip(USERS, rs, strict=True)
        if r is not None
    ]


@pytest.fixture(scope="module")
def ratings(spark):
    return spark.createDataFrame(course_rows(), "user string, item string, rating double")


def test_item_means_are_exact(spark, ratings):
    # The course's table: Eve rated nothing; Love at last, for one, has 4 ratings.
    counts = {m: sum(r is not None for r in rs) for m, rs in TABLE.items()}
    assert counts["Love at last"] == 4
    expected = spark.createDataFrame(
        [(m, mean, counts[m]) for m, mean in MEANS.items()], "item string, item_mean double, ratings long"
    )
    assert_df_equality(item_means(ratings), expected, ignore_row_order=True, ignore_nullable=True)


def test_normalised_ratings_are_exact(spark, ratings):
    expected = spark.createDataFrame(
        [(item, user, r, MEANS[item], r - MEANS[item]) for user, item, r in course_rows()],
        "item string, user string, rating double, item_mean double, y double",
    )
    got = normalise(ratings, item_means(ratings))
    assert_df_equality(got, expected, ignore_row_order=True, ignore_column_order=True, ignore_nullable=True)
    assert sorted(r.y for r in got.filter("user = 'Alice'").collect()) == [-2.25, -1.25, 2.5, 2.5]


def test_shrunk_means_equal_the_hand_computed_values(spark, ratings):
    # 33 over 16 ratings: g = 33/16. With m = 2 pseudo-ratings at g, Love at last
    # (10 over 4 ratings) gets (10 + 2·33/16) / (4 + 2) = 113/48.
    sums = {"Love at last": 10, "Romance forever": 5, "Cute puppies of love": 4, "Nonstop car chases": 9}
    sums["Swords vs. karate"] = 5
    counts = {m: sum(r is not None for r in rs) for m, rs in TABLE.items()}
    g = 33 / 16
    assert sum(sums.values()) == 33 and sum(counts.values()) == 16
    got = {r.item: r.item_mean for r in item_means(ratings, prior=2.0, global_mean=g).collect()}
    assert got["Love at last"] == pytest.approx(113 / 48, rel=1e-12)
    assert got == pytest.approx({m: (sums[m] + 2 * g) / (counts[m] + 2) for m in TABLE}, rel=1e-12)
    # A prior of 0 is the course's plain mean, and the fit's own global mean is the same g.
    assert {r.item: r.item_mean for r in item_means(ratings, prior=0.0, global_mean=g).collect()} == MEANS


@pytest.mark.slow
def test_eve_is_predicted_at_the_item_means(spark, ratings):
    # The course's model: plain item means, no item bias, sum-form λ, Adam.
    course = CollaborativeFilter(rank=3, maxIter=5, regParam=0.1, numUserBlocks=2, numItemBlocks=2, **COURSE_PARAMS)
    model = course.fit(ratings)
    eve = spark.createDataFrame([("Eve", movie) for movie in TABLE], "user string, item string")
    got = {r.item: r.prediction for r in model.transform(eve).collect()}
    assert got == MEANS
    assert got["Love at last"] == 2.5
    # Everyone who rated gets a recommendation for each movie they did not rate, and no other.
    recs = model.recommendForAllUsers(5).collect()
    rated = {(u, m) for u, m, _ in course_rows()}
    assert not {(r.user, r.item) for r in recs} & rated
    assert sorted((r.user, r.item) for r in recs) == sorted(
        (u, m) for u in USERS[:4] for m in TABLE if (u, m) not in rated
    )
    model.unpersist()


@pytest.mark.slow
def test_with_the_defaults_eve_gets_each_items_shrunk_mean_plus_its_learned_bias(spark, ratings):
    model = CollaborativeFilter(rank=3, numUserBlocks=2, numItemBlocks=2).fit(ratings)
    eve = spark.createDataFrame([("Eve", movie) for movie in TABLE], "user string, item string")
    got = {r.item: r.prediction for r in model.transform(eve).collect()}
    mean = {r.item: r.item_mean for r in model.item_stats.collect()}
    bias = {r.item: r.bias for r in model.item_factors.collect()}
    assert got == pytest.approx({m: mean[m] + bias[m] for m in TABLE}, rel=1e-12)
    # m, estimated: the five items' means differ by less than their 0-or-5 ratings' noise
    # explains, so the prior count reaches its cap, all 16 ratings (kernels/priors.py).
    rows = course_rows()
    index = {movie: k for k, movie in enumerate(TABLE)}
    m = prior_from_rows(np.array([index[i] for _, i, _ in rows]), np.array([r for *_, r in rows]), None, len(TABLE))
    assert model.summary["mean_prior"] == m == 16
    assert mean["Love at last"] == pytest.approx((10 + m * 33 / 16) / (4 + m), rel=1e-12)
    assert any(abs(b) > 1e-6 for b in bias.values())
    model.unpersist()
