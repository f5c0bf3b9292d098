"""Binary labels: the course's binary table, item offsets, a planted logistic model,
negative sampling, and the ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from planted import auc, planted_labels

from cfspark import COURSE_PARAMS, CollaborativeFilter
from cfspark.data.metrics import classification_metrics, ranking_metrics
from cfspark.data.negatives import add_negatives, draw_negatives
from cfspark.data.offsets import global_rate, item_offsets
from cfspark.data.read import Columns
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings

USERS = ["Alice", "Bob", "Carol", "Dave"]
# The course's binary version of the movie table: 1 = engaged, 0 = shown, not engaged, None = not shown.
TABLE = {
    "Love at last": ["1", "1", "0", "0"],
    "Romance forever": ["true", None, None, "0"],
    "Cute puppies of love": [None, "1", "false", None],
    "Nonstop car chases": ["0", "0", "1", "1"],
    "Swords vs. karate": ["0", "0", "1", None],
}
PRIOR = 2.0


def course_labels():
    return [(u, m, v) for m, vs in TABLE.items() for u, v in zip(USERS, vs, strict=True) if v is not None]


def as_label(v: str) -> float:
    return 1.0 if v in ("1", "true") else 0.0


@pytest.fixture(scope="module")
def labels(spark):
    raw = spark.createDataFrame(course_labels(), "u string, m string, seen string")
    return validate_ratings(raw, Columns("u", "m", "seen"), id_type="auto", duplicates="error", labels=True).cache()


def test_course_labels_table_is_exact(spark, labels):
    expected = spark.createDataFrame(
        [(u, m, as_label(v)) for u, m, v in course_labels()], "user string, item string, rating double"
    )
    assert_df_equality(labels, expected, ignore_row_order=True, ignore_nullable=True)


def test_course_offsets_table_is_exact(spark, labels):
    p = global_rate(labels)
    assert p == 7 / 15  # 7 positives among 15 labels
    rows = []
    for movie, vs in TABLE.items():
        seen = [as_label(v) for v in vs if v is not None]
        rate = (sum(seen) + PRIOR * p) / (len(seen) + PRIOR)
        rows.append((movie, int(sum(seen)), len(seen), rate, math.log(rate / (1 - rate))))
    expected = spark.createDataFrame(
        rows, "item string, positives long, labelled long, positive_rate double, item_offset double"
    )
    got = item_offsets(labels, prior=PRIOR, rate=p)
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)
    plain = item_offsets(labels, prior=PRIOR, rate=p, enabled=False)
    assert {r.item_offset for r in plain.collect()} == {0.0}


@pytest.mark.slow
def test_user_without_labels_gets_item_positive_rates(spark, labels):
    # The course's model (the plain bce model): no item bias, so a user without labels gets σ(o_i) exactly.
    model = CollaborativeFilter(
        rank=2, maxIter=5, regParam=0.5, loss="bce", numUserBlocks=2, numItemBlocks=2, exposure=False, **COURSE_PARAMS
    ).fit_validated(labels)
    rates = {r.item: r.positive_rate for r in model.item_stats.collect()}
    eve = spark.createDataFrame([("Eve", m) for m in TABLE], "user string, item string")
    got = {r.item: r.prediction for r in model.predict_canonical(eve).collect()}
    assert got.keys() == rates.keys()
    for movie in TABLE:
        assert got[movie] == pytest.approx(rates[movie], rel=1e-12)
    recs = model.recommendForAllUsers(5).collect()
    labelled = {(u, m) for u, m, _ in course_labels()}
    assert all(0.0 < r.score < 1.0 for r in recs)
    assert sorted((r.user, r.item) for r in recs) == sorted(
        (u, m) for u in USERS for m in TABLE if (u, m) not in labelled
    )
    # With exclude = positives, items labelled 0 may come back; items labelled 1 never do.
    positives = {(u, m) for u, m, v in course_labels() if as_label(v) == 1.0}
    again = {(r.user, r.item) for r in model.recommendForAllUsers(5, exclude=labels.filter("rating = 1")).collect()}
    assert not again & positives and again > {(r.user, r.item) for r in recs}
    model.unpersist()


@pytest.mark.slow
def test_planted_logistic_model_reaches_the_true_auc(spark):
    p, prob = planted_labels(n_users=350, n_items=250, rank=2, density=1.0, seed=4)
    rows = [(u, i, y, q) for (u, i, y), q in zip(p.rows(), prob.tolist(), strict=True)]
    df = spark.createDataFrame(rows, "user long, item long, rating double, truth double")
    train, test = split_ratings(df, test_fraction=0.2, seed=3)
    # λ as before the factor prior was tripled (FACTOR_PRIOR): on this dense rank-2 set (250 labels
    # per user) the default prior costs 0.026 AUC against the truth (docs/binary-labels.md).
    cf = CollaborativeFilter(
        rank=2, loss="bce", numUserBlocks=2, numItemBlocks=2, regParam=0.1 / 3, regUnits="als", exposure=False
    )
    model = cf.fit_validated(train.drop("truth").cache())
    scored = model.predict_canonical(test).toPandas()
    true_auc = auc(scored.rating.to_numpy(), scored.truth.to_numpy())
    ours = classification_metrics(model.predict_canonical(test.drop("truth")))
    assert ours["auc"] == pytest.approx(auc(scored.rating.to_numpy(), scored.prediction.to_numpy()), abs=1e-9)
    assert true_auc - ours["auc"] <= 0.02, (ours, true_auc)
    assert np.isfinite(ours["logloss"]) and ours["logloss"] < math.log(2)
    model.unpersist()


def test_draw_negatives_avoids_labelled_items_and_is_seeded():
    weights = np.array([5.0, 1.0, 0.0, 3.0, 2.0, 8.0, 1.0, 1.0, 4.0, 2.0] * 20)
    labelled = np.array([0, 5, 17, 33])
    a = draw_negatives(labelled, 30, weights, np.random.default_rng([1, 2]))
    b = draw_negatives(labelled, 30, weights, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 30 and len(set(a.tolist())) == 30 and not set(a.tolist()) & set(labelled.tolist())
    assert not {i for i in a.tolist() if weights[i] == 0}  # zero-popularity items are never drawn
    small = draw_negatives(np.arange(195), 10, np.ones(200), np.random.default_rng(0))
    np.testing.assert_array_equal(small, [195, 196, 197, 198, 199])  # capped at what is left
    # More requested than items with weight: all of those, then unweighted ones uniformly.
    sparse = np.zeros(50)
    sparse[[3, 7, 9]] = 1.0
    topped = draw_negatives(np.array([7]), 6, sparse, np.random.default_rng(1))
    assert len(topped) == 6 and {3, 9} <= set(topped.tolist()) and 7 not in topped
    assert len(draw_negatives(np.array([1]), 0, weights, np.random.default_rng(2))) == 0  # a user with no positives


def test_add_negatives_gives_the_requested_count_and_no_positive(spark):
    rows = [(f"u{u}", i, 1.0) for u in range(12) for i in range(40) if (u * 7 + i) % 9 == 0]
    df = spark.createDataFrame(rows, "user string, item long, rating double")
    out = add_negatives(df, per_positive=2, sampling="popularity", seed=5)
    again = add_negatives(df.repartition(3), per_positive=2, sampling="popularity", seed=5)
    got = sorted(map(tuple, out.collect()))
    assert got == sorted(map(tuple, again.collect()))
    positives = {(u, i) for u, i, _ in rows}
    negatives = [(u, i) for u, i, y in got if y == 0.0]
    assert not set(negatives) & positives and len(set(negatives)) == len(negatives)
    for u in {u for u, _, _ in rows}:
        assert sum(1 for n in negatives if n[0] == u) == 2 * sum(1 for p in positives if p[0] == u)
    assert {i for _, i in negatives} <= {i for _, i in positives}  # popularity: only items with positives
    other = add_negatives(df, per_positive=2, sampling="popularity", seed=6).collect()
    assert sorted(map(tuple, other)) != got


def test_ranking_metrics_match_hand_computed_values(spark):
    recs = spark.createDataFrame(
        [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "w", 2)],
        "user string, item string, rank int",
    )
    relevant = spark.createDataFrame([("a", "y"), ("a", "q"), ("b", "x"), ("c", "x")], "user string, item string")
    got = ranking_metrics(recs, relevant, k=2)
    # a: hit at rank 2 of 2 relevant; b: hit at rank 1 of 1; c: no list, counts as zero.
    assert got["users"] == 3
    assert got["precision_at_k"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert got["recall_at_k"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    ndcg_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg_at_k"] == pytest.approx((ndcg_a + 1 + 0) / 3)
    assert got["map_at_k"] == pytest.approx(((1 / 2) / 2 + 1 + 0) / 3)


@pytest.mark.slow
def test_the_job_excludes_only_positives_when_asked(spark, tmp_path):
    """output.exclude = "positives" with the job's default column names (userId, movieId)."""
    from cfspark.app.config import load_config
    from cfspark.app.train import run_job

    rows = course_labels()
    (tmp_path / "labels.csv").write_text("userId,movieId,rating\n" + "".join(f"{u},{m},{v}\n" for u, m, v in rows))
    cfg = load_config(None, [
        f"input.path={tmp_path / 'labels.csv'}", f"output.path={tmp_path / 'out'}", "model.loss=bce",
        "model.rank=2", "model.max_iter=3", "split.test_fraction=0.0", "checkpoint.interval=0",
        "output.exclude=positives", "output.top_n=5",
    ])  # fmt: skip
    run_job(spark, cfg)
    recs = {(r.userId, r.movieId) for r in spark.read.parquet(str(tmp_path / "out" / "recommendations")).collect()}
    positives = {(u, m) for u, m, v in rows if as_label(v) == 1.0}
    negatives = {(u, m) for u, m, v in rows if as_label(v) == 0.0}
    assert recs and not recs & positives and recs & negatives
