"""Distributed training against a planted model and against Spark ALS; determinism;
checkpoint resume; and plans that stay one size, as cut lineage keeps them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from planted import planted_ratings

from cfspark import COURSE_PARAMS, CollaborativeFilter
from cfspark.bench.compare import compare_als
from cfspark.data.metrics import regression_metrics
from cfspark.data.split import split_ratings
from cfspark.fit.blockwise import setup
from cfspark.fit.paths import fit_ratings

RANK = 3
# The defaults for exactly 15 iterations, with a count-scaled λ for this low-noise rank-3 data.
# Every test here fits blockwise, most of them several times (18 to 45 s each on 2 cores).
pytestmark = pytest.mark.slow

PARAMS = dict(rank=RANK, maxIter=15, tol=0.0, seed=11, regParam=0.02, regUnits="als")


@pytest.fixture(scope="module")
def planted_split(spark):
    p = planted_ratings(n_users=400, n_items=300, rank=RANK, density=0.3, noise=0.5, seed=1)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    train, test = split_ratings(df, test_fraction=0.2, seed=3)
    yield p, train.cache(), test.cache()
    train.unpersist(), test.unpersist()


@pytest.fixture(scope="module")
def fitted(planted_split):
    _, train, _ = planted_split
    model = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_validated(train)
    yield model
    model.unpersist()


def _factors(model):
    users = {r.user: (tuple(r.features), r.bias) for r in model.user_factors.collect()}
    items = {r.item: tuple(r.features) for r in model.item_factors.collect()}
    return users, items


def test_planted_model_is_recovered_to_the_noise_floor(planted_split, fitted):
    p, _, test = planted_split
    rmse = regression_metrics(fitted.predict_canonical(test))["rmse"]
    assert abs(rmse - p.noise) <= 0.1 * p.noise, rmse
    losses = [h["train_loss"] for h in fitted.history]
    assert len(losses) == 15 and losses[-1] < losses[0]


def test_beats_spark_als_on_the_same_split(planted_split, fitted):
    _, train, test = planted_split
    ours = regression_metrics(fitted.predict_canonical(test))["rmse"]
    relevant = test.filter("rating >= 3.5").select("user", "item")
    als = compare_als(
        train,
        test,
        fitted.item_stats,
        loss="mse",
        rank=RANK,
        reg_grid=[0.01, 0.05, 0.2],
        max_iter=15,
        seed=1,
        relevant=relevant,
        k=10,
        num_blocks=2,
    )
    assert len(als["grid"]) == 3 and als["test"]["count"] == test.count()
    assert ours <= 1.02 * als["test"]["rmse"], (ours, als["test"])


def test_same_seeds_give_identical_factors(planted_split):
    """Bit for bit: any order-dependent sum would already differ after the first half-step."""
    _, train, _ = planted_split
    a, b = (CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **{**PARAMS, "maxIter": 3}).fit_validated(train)
            for _ in range(2))  # fmt: skip
    assert _factors(a) == _factors(b) and len(a.history) == 3
    a.unpersist(), b.unpersist()


@pytest.fixture(scope="module")
def tiny(spark):
    p = planted_ratings(n_users=30, n_items=20, rank=2, density=0.5, noise=0.1, seed=5)
    return spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny, tmp_path):
    # maxBlockRatings splits the 2 blocks asked for: the checkpoint records the request, which
    # with the data and settings places every entity, not the blocks it ended in.
    params = dict(rank=2, regParam=0.5, regUnits="als", numUserBlocks=2, numItemBlocks=2, checkpointInterval=2, tol=0.0,
                  maxBlockRatings=tiny.count() // 3 + 1)  # fmt: skip
    first = CollaborativeFilter(maxIter=2, checkpointDir=str(tmp_path / "ck"), **params).fit_validated(tiny)
    assert (tmp_path / "ck" / "latest.json").is_file() and (tmp_path / "ck" / "iter-000002").is_dir()
    assert first.summary["num_user_blocks"] > 2 and first.summary["num_item_blocks"] > 2
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["blocks"] == [2, 2]
    resumed = CollaborativeFilter(maxIter=3, checkpointDir=str(tmp_path / "ck"), **params).fit_validated(tiny)
    fresh = CollaborativeFilter(maxIter=3, checkpointDir=str(tmp_path / "other"), **params).fit_validated(tiny)
    assert resumed.summary["resumed_from"] == 2 and fresh.summary["resumed_from"] == 0
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3]
    assert _factors(resumed) == _factors(fresh)
    # A checkpoint made with other settings is not reused.
    changed = CollaborativeFilter(maxIter=3, checkpointDir=str(tmp_path / "ck"), **{**params, "regParam": 0.6})
    assert changed.fit_validated(tiny).summary["resumed_from"] == 0
    for m in (first, resumed, fresh):
        m.unpersist()


def test_the_plan_stays_the_same_size_from_iteration_to_iteration(tiny, tmp_path, monkeypatch):
    """Lineage is cut at every half-step: each half-step's output, which the next one reads,
    has a plan (and an RDD lineage) of one size at every iteration, through two storage
    checkpoints. Uncut, each would hold both previous half-steps' plans, doubling every
    iteration, until serialising a task overflows the stack."""
    from cfspark.train import trainer

    sizes: list[tuple[int, int]] = []
    run_half_step = trainer.run_half_step

    def measured(*args, **kwargs):
        out, report = run_half_step(*args, **kwargs)
        execution = out._jdf.queryExecution()
        sizes.append((len(execution.logical().treeString().splitlines()),
                      len(execution.toRdd().toDebugString().splitlines())))  # fmt: skip
        return out, report

    monkeypatch.setattr(trainer, "run_half_step", measured)
    iterations = 12
    model = CollaborativeFilter(
        rank=2, maxIter=iterations, tol=0.0, regParam=0.5, regUnits="als", numUserBlocks=2, numItemBlocks=2,
        checkpointDir=str(tmp_path / "ck"), checkpointInterval=5,  # storage is written at 5 and at 10
    ).fit_validated(tiny)
    losses = [h["train_loss"] for h in model.history]
    assert len(losses) == iterations and losses[-1] < losses[0]
    assert (tmp_path / "ck" / "iter-000010").is_dir()
    assert len(sizes) == 2 * iterations
    # One size at every half-step, both sides', and a small one: a scan of the checkpointed rows.
    assert len(set(sizes)) == 1 and max(sizes[0]) <= 10, sizes
    model.unpersist()


def test_the_defaults_reach_the_course_models_accuracy_in_fewer_iterations(planted_split, fitted):
    _, train, test = planted_split
    course = CollaborativeFilter(**{**PARAMS, **COURSE_PARAMS, "regParam": 1.0, "maxIter": 30}).fit_validated(train)
    quick = CollaborativeFilter(**{**PARAMS, "maxIter": 8}).fit_validated(train)
    a, b, c = (regression_metrics(m.predict_canonical(test))["rmse"] for m in (course, quick, fitted))
    assert len(quick.history) == 8 and b <= 1.01 * a and c <= 1.005 * a, (a, b, c)
    course.unpersist(), quick.unpersist()


def test_tol_stops_a_converged_fit_early_and_says_why(planted_split, fitted):
    _, train, _ = planted_split
    model = CollaborativeFilter(**{**PARAMS, "tol": 1e-4}).fit_validated(train)
    history, full = model.history, [h["train_loss"] for h in fitted.history]
    stopped = len(history)
    assert 3 <= stopped < 15
    # The same trajectory as the 15-iteration fit, up to where the loss stopped moving.
    assert [h["train_loss"] for h in history] == pytest.approx(full[:stopped], rel=1e-9)
    change = abs(full[stopped - 2] - full[stopped - 1]) / full[stopped - 2]
    assert change < 1e-4 < abs(full[stopped - 3] - full[stopped - 2]) / full[stopped - 3]
    assert history[-1]["stop"] == model.summary["stop_reason"] and model.summary["stop_reason"].startswith("converged")
    assert "stop" not in history[-2] and fitted.summary["stop_reason"] == "reached max_iter = 15"
    model.unpersist()


def test_a_settle_bound_stops_a_blockwise_fit_where_its_predictions_stop_moving(planted_split, fitted):
    """The blockwise fit under automatic λ stops as the one-task fit does, on the predictions'
    move, which the half-steps report themselves (no job of its own)."""
    _, train, _ = planted_split
    # fitted's path: λ_b from the search's task, the fit started from that task's factors.
    settings = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_settings()
    record = fit_ratings(settings, train, num_ratings=train.count(), settle=2e-3)
    history, full = record.summary["history"], [h["train_loss"] for h in fitted.history]
    stopped = len(history)
    assert 3 <= stopped < 15 and record.summary["stop_reason"].startswith("settled")
    assert [h["train_loss"] for h in history] == pytest.approx(full[:stopped], rel=1e-9)
    assert history[-1]["moved"] <= 2e-3 < history[-2]["moved"]
    record.user_factors.unpersist(), record.item_factors.unpersist()


def test_without_item_effects_the_defaults_match_als(spark):
    """Purely low-rank data: the fixed item means and biases are parameters the data does not
    need. Shrunk means and λ_b-regularised biases must cost nothing against ALS at the same rank
    (with the raw μ_i and free b of the course's model they cost about 4 %)."""
    p = planted_ratings(n_users=300, n_items=200, rank=RANK, density=0.25, noise=0.5, seed=4, item_sd=0.0, user_sd=0.0)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double")
    train, test = (t.cache() for t in split_ratings(df, test_fraction=0.2, seed=3))
    model = CollaborativeFilter(rank=RANK, seed=11).fit_validated(train)
    ours = regression_metrics(model.predict_canonical(test))["rmse"]
    als = compare_als(
        train, test, model.item_stats, loss="mse", rank=RANK, reg_grid=[0.02, 0.05, 0.1, 0.2],
        max_iter=15, seed=1, relevant=None, k=10, num_blocks=2,
    )  # fmt: skip
    assert ours <= 1.01 * als["test"]["rmse"], (ours, als["test"]["rmse"])
    model.unpersist(), train.unpersist(), test.unpersist()


def test_a_block_over_max_block_ratings_is_split_and_the_model_is_unchanged(tiny):
    params = dict(
        rank=2,
        maxIter=5,
        regParam=0.5,
        regUnits="als",
        optimizer="newton",
        innerSteps=1,
        numUserBlocks=1,
        numItemBlocks=1,
    )
    whole = CollaborativeFilter(**params).fit_validated(tiny)
    split = CollaborativeFilter(maxBlockRatings=60, **params).fit_validated(tiny)
    ratings = tiny.count()
    assert (whole.summary["num_user_blocks"], whole.summary["num_item_blocks"]) == (1, 1)
    assert split.summary["num_user_blocks"] >= ratings / 60 and split.summary["num_item_blocks"] >= ratings / 60
    blocks, stats, _ = setup(CollaborativeFilter(maxBlockRatings=60, **params).fit_settings(), tiny)
    for inblocks, count in ((blocks.users, split.summary["num_user_blocks"]), (blocks.items, None)):
        loads = [int(np.frombuffer(r.row_ptr, dtype=np.int64)[-1]) for r in inblocks.select("row_ptr").collect()]
        assert sum(loads) == ratings and max(loads) <= 60
        assert count is None or len(loads) <= count
    (ua, ia), (ub, ib) = _factors(whole), _factors(split)
    assert ua.keys() == ub.keys() and ia.keys() == ib.keys()
    np.testing.assert_allclose([ua[k][0] for k in ua], [ub[k][0] for k in ua], atol=1e-9)
    np.testing.assert_allclose([ia[k] for k in ia], [ib[k] for k in ia], atol=1e-9)
    whole.unpersist(), split.unpersist(), blocks.unpersist(), stats.unpersist()
