"""regParam = "auto" (the default): λ chosen on a validation fold carved out of the training split.

The test split must never reach the choice. The proof: poison every test rating and run
the job again, on the one-task path and on the blockwise path; the chosen λ, and every
validation score on the path, stay exactly the same. The search always runs in one task,
on a hashed sample of users when the data is large, so both paths choose the same λ on
small data; on planted data a quarter of the users, their λ carried over, choose within 1.5 × of all of them.
"""

from __future__ import annotations

import math

import pytest
from planted import planted_ratings
from tests_support import assert_bracketed, assert_same_path

from cfspark import CollaborativeFilter
from cfspark.app.config import load_config
from cfspark.app.train import run_job
from cfspark.data.metrics import regression_metrics
from cfspark.data.split import split_ratings
from cfspark.fit.reg_search import SEARCH_FRACTION, START, choose_reg
from cfspark.fit.targets import target_spread
from cfspark.train.search_task import SETTLED

pytestmark = pytest.mark.slow

SPLIT_SEED = 42


def _write(path, rows):
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r:.6f}\n" for u, i, r in rows))


def _job(spark, csv, out, *extra):
    cfg = load_config(
        None,
        [f"input.path={csv}", "input.user_col=user", "input.item_col=item", f"output.path={out}",
         "model.rank=3", "checkpoint.interval=0", f"split.seed={SPLIT_SEED}", *extra],
    )  # fmt: skip
    return run_job(spark, cfg)


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    p = planted_ratings(n_users=200, n_items=150, rank=3, density=0.3, noise=0.5, seed=21)
    rows = [(u, i, round(r, 6)) for u, i, r in p.rows()]  # as the csv holds them
    _write(tmp / "clean.csv", rows)
    df = spark.createDataFrame(rows, "user long, item long, rating double")
    train, test = split_ratings(df, test_fraction=0.2, seed=SPLIT_SEED)
    in_test = {(r.user, r.item) for r in test.collect()}
    # ALS's regParam = 0.1, the fixed λ before automatic λ, on the job's split.
    fixed = CollaborativeFilter(rank=3, regParam=0.1, regUnits="als").fit_validated(train)
    fixed_rmse = regression_metrics(fixed.predict_canonical(test))["rmse"]
    fixed.unpersist()
    poisoned = [(u, i, (10.0 - 3 * r if (u, i) in in_test else r)) for u, i, r in rows]
    _write(tmp / "poisoned.csv", poisoned)
    blockwise = ("model.num_user_blocks=2", "model.num_item_blocks=2")
    return {
        "fixed_rmse": fixed_rmse,
        "test_rows": len(in_test),
        "clean": _job(spark, tmp / "clean.csv", tmp / "clean"),
        "poisoned": _job(spark, tmp / "poisoned.csv", tmp / "bad"),
        "clean_blocks": _job(spark, tmp / "clean.csv", tmp / "clean_b", *blockwise),
        "poisoned_blocks": _job(spark, tmp / "poisoned.csv", tmp / "bad_b", *blockwise),
    }


def test_auto_reg_brackets_its_choice_and_adapts_to_low_noise_data(runs):
    clean = runs["clean"]["model"]
    path, search = clean["reg_path"], clean["reg_search"]
    assert [step["reg"] for step in path[:3]] == list(START)  # the start grid, strong to weak
    # The search brackets λ at its first estimate of λ_b, then again at the one its factors give.
    first = [step for step in path if step["bias_reg"] == search["bias_reg_before"]]
    final = [step for step in path if step["bias_reg"] == search["bias_reg"] == clean["bias_reg"]
             and step["rank"] == search["rank"]]  # fmt: skip
    assert path[0] in first and path[-1] in final and search["bias_reg"] < search["bias_reg_before"]
    best = min(final, key=lambda step: step["rmse"])
    assert search["reg"] == best["reg"] and search["units"] == "spread" and search["sample_fraction"] == 1.0
    # Bracketed: a worse λ on both sides of the choice, or flat beyond it; not an end of the hard range.
    assert not search["at_limit"]
    assert_bracketed(final, best["reg"], "rmse", SETTLED)
    assert search["widened"] == ("down" if min(first, key=lambda step: step["rmse"])["reg"] < min(START) else "")
    # The model keeps λ in ALS's units: the chosen reg times the spread of the training targets.
    assert clean["reg"] == pytest.approx(best["reg"] * clean["spread"], rel=1e-12)
    assert best["reg_als"] == pytest.approx(clean["reg"], rel=1e-12)
    # Rank-3 data with σ = 0.5 wants less shrinkage than real ratings: the search finds it, and
    # the test RMSE beats ALS's regParam = 0.1 on the same split.
    assert clean["reg"] < 0.1
    assert runs["clean"]["test"]["rmse"] < runs["fixed_rmse"], (runs["clean"]["test"]["rmse"], runs["fixed_rmse"])


@pytest.mark.parametrize("path", ["", "_blocks"])
def test_auto_reg_never_reads_the_test_split(runs, path):
    clean, poisoned = runs["clean" + path], runs["poisoned" + path]
    assert clean["counts"]["test"] == poisoned["counts"]["test"] == runs["test_rows"]
    # The poison reached the test split...
    assert poisoned["test"]["rmse"] > 3 * clean["test"]["rmse"]
    # ...and nothing the choice saw changed.
    assert poisoned["model"]["reg_path"] == clean["model"]["reg_path"]
    assert poisoned["model"]["reg"] == clean["model"]["reg"]
    assert poisoned["train"]["rmse"] == pytest.approx(clean["train"]["rmse"], rel=1e-12)


def test_one_task_and_blockwise_fits_choose_the_same_reg(runs):
    one, blocks = runs["clean"]["model"], runs["clean_blocks"]["model"]
    # The one-task fit takes the global mean from its rows, the blockwise one from Spark's sums.
    assert_same_path(one["reg_path"], blocks["reg_path"])
    assert one["reg"] == blocks["reg"]
    # Both fits start from the search's factors at its choice (the blockwise one through a warm
    # start, new users from the hashed init) and stop on them settling: the same λ, fitted as far.
    assert runs["clean_blocks"]["test"]["rmse"] == pytest.approx(runs["clean"]["test"]["rmse"], rel=0.01)
    # From the same factors, the first iteration of the two fits is the same up to the order of
    # float sums (from the hashed init, the blockwise one's would be far above its last).
    losses = [h["train_loss"] for h in runs["clean_blocks"]["iterations"]]
    assert losses[0] == pytest.approx(runs["clean"]["iterations"][0]["train_loss"], rel=1e-9)
    assert losses[0] <= 1.01 * losses[-1], losses


def test_a_sample_of_the_users_chooses_within_one_and_a_half_times(spark):
    p = planted_ratings(n_users=900, n_items=120, rank=3, density=0.15, noise=0.8, seed=33)
    ratings = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    total = ratings.count()
    settings = CollaborativeFilter(rank=3).fit_settings()
    spread, _ = target_spread(settings, ratings)
    full, everyone = choose_reg(settings, ratings, spread, num_ratings=total)
    part, sample = choose_reg(settings, ratings, spread, num_ratings=total, max_ratings=total // 3)
    # Past max_ratings mse searches SEARCH_FRACTION of the users, and carries its λ over to all.
    assert everyone["sample_fraction"] == 1.0 and sample["sample_fraction"] == SEARCH_FRACTION
    assert part == pytest.approx(sample["sample_reg"] * sample["transfer"], rel=1e-12)
    assert abs(math.log(part / full)) <= math.log(1.5), (part, full)
    ratings.unpersist()
