"""The synthetic generator: deterministic, exact counts, no repeated pairs, the planted model."""

from __future__ import annotations

import numpy as np
import pytest

from cfspark.data.synthetic import SyntheticSpec, generate, write_synthetic

SPEC = SyntheticSpec(users=300, items=120, ratings=6000, rank=3, noise=0.5, seed=3)


@pytest.fixture(scope="module")
def generated(spark):
    ratings, users, items = generate(spark, SPEC)
    return ratings.toPandas(), users.toPandas(), items.toPandas()


def test_counts_and_no_repeated_pairs(generated):
    ratings, users, items = generated
    assert len(ratings) == SPEC.ratings
    assert not ratings.duplicated(["user", "item"]).any()
    assert ratings.user.between(0, SPEC.users - 1).all() and ratings.item.between(0, SPEC.items - 1).all()
    assert len(users) == SPEC.users and len(items) == SPEC.items
    assert len(users.factors.iloc[0]) == SPEC.rank


def test_same_seed_same_data_whatever_the_partitioning(spark, generated):
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        again = generate(spark, SPEC)[0].toPandas()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
    key = ["user", "item"]
    a, b = generated[0].sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    assert a.equals(b)
    other = generate(spark, SyntheticSpec(**{**SPEC.__dict__, "seed": 4}))[0].toPandas()
    assert not other.sort_values(key).reset_index(drop=True)[key].equals(a[key])


def test_ratings_follow_the_planted_model(generated):
    ratings, users, items = generated
    u = np.stack(users.set_index("user").loc[ratings.user].factors.to_numpy())
    v = np.stack(items.set_index("item").loc[ratings.item].factors.to_numpy())
    signal = (
        items.set_index("item").loc[ratings.item].effect.to_numpy()
        + users.set_index("user").loc[ratings.user].effect.to_numpy()
        + (u * v).sum(1)
    )
    residual = ratings.rating.to_numpy() - signal
    assert abs(residual.mean()) < 0.03 and residual.std() == pytest.approx(SPEC.noise, rel=0.05)
    # Popularity skew: the most popular tenth of items holds far more than a tenth of ratings.
    counts = ratings.item.value_counts()
    assert counts.nlargest(SPEC.items // 10).sum() > 0.2 * SPEC.ratings  # uniform would give 0.1


def test_binary_labels_are_zero_or_one(spark):
    labels = generate(spark, SyntheticSpec(users=100, items=50, ratings=1000, rank=2, binary=True, seed=1))[0]
    values = {r.rating for r in labels.select("rating").distinct().collect()}
    assert values == {0.0, 1.0}


def test_too_many_ratings_for_the_pairs_is_refused(spark):
    from cfspark.core.errors import ConfigError

    with pytest.raises(ConfigError, match="1001 ratings do not fit in 100 × 10 distinct pairs"):
        generate(spark, SyntheticSpec(users=100, items=10, ratings=1001))


def test_writing_replaces_its_own_folders_and_refuses_the_users(spark, tmp_path):
    """The ownership rule: a second write over the first replaces it; a ratings/ folder of the
    user's own is refused before anything is written, and left as it was."""
    from cfspark.core.errors import ConfigError

    small = SyntheticSpec(users=40, items=20, ratings=200, rank=2, seed=5)
    write_synthetic(spark, small, str(tmp_path / "ours"))
    write_synthetic(spark, small, str(tmp_path / "ours"))
    again = spark.read.parquet(str(tmp_path / "ours" / "ratings"))
    assert sorted(again.collect()) == sorted(generate(spark, small)[0].collect())
    (tmp_path / "theirs" / "ratings").mkdir(parents=True)
    (tmp_path / "theirs" / "ratings" / "mine.csv").write_text("user,item,rating\n")
    with pytest.raises(ConfigError, match="ratings exists and was not made by cfspark"):
        write_synthetic(spark, small, str(tmp_path / "theirs"))
    assert sorted(p.name for p in (tmp_path / "theirs").rglob("*")) == ["mine.csv", "ratings"]


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("noise", -1.0, "--noise"), ("item_sigma", float("nan"), "--item-sigma"), ("users", 0, "--users")],
)
def test_a_negative_spread_or_an_empty_size_is_refused(spark, field, value, flag):
    from dataclasses import replace

    from cfspark.core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{flag} must be"):
        generate(spark, replace(SPEC, **{field: value}))


def test_lognormal_popularity_follows_its_closed_form(spark):
    """The top fraction p of indices holds Φ(σ + Φ⁻¹(p)) of the draws, and Φ is erf's."""
    from statistics import NormalDist

    from pyspark.sql import functions as F

    from cfspark.data.synthetic import _lognormal, _phi

    xs = [-3.0, -1.2, -0.1, 0.0, 0.4, 2.5]
    got = spark.createDataFrame([(x,) for x in xs], "x double").select(_phi(F.col("x"))).collect()
    assert [r[0] for r in got] == pytest.approx([NormalDist().cdf(x) for x in xs], abs=2e-7)

    n, sigma, draws = 1000, 1.5, 200_000
    index = spark.range(draws).select(_lognormal(n, sigma, F.col("id"), F.lit(5), F.lit("i")).alias("i"))
    counts = np.bincount(index.toPandas().i.to_numpy(), minlength=n)
    assert len(counts) == n and counts[0] > counts[n // 10] > counts[n // 2] > counts[-1]
    for p in (0.01, 0.1, 0.5):
        share = counts[: int(p * n)].sum() / draws
        assert share == pytest.approx(NormalDist().cdf(sigma + NormalDist().inv_cdf(p)), abs=0.01)
