"""regParam = "auto": λ chosen on a validation fold carved out of the training split.

The test split must never reach the choice. The proof: poison every test rating and run
the job again; the chosen λ, and every validation score on the path, stay exactly the same.
"""

from __future__ import annotations

import pytest
from planted import planted_ratings

from cfspark import CollaborativeFilter
from cfspark.app.config import load_config
from cfspark.app.train import run_job
from cfspark.data.metrics import regression_metrics
from cfspark.data.split import split_ratings
from cfspark.fit.reg_search import PATH_SLACK, REG_PATH

pytestmark = pytest.mark.slow

SPLIT_SEED = 42


def _write(path, rows):
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r:.6f}\n" for u, i, r in rows))


def _job(spark, csv, out):
    cfg = load_config(
        None,
        [f"input.path={csv}", "input.user_col=user", "input.item_col=item", f"output.path={out}",
         "model.reg=auto", "model.rank=3", "checkpoint.interval=0", f"split.seed={SPLIT_SEED}"],
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
    fixed = CollaborativeFilter(rank=3, regParam=0.1).fit_validated(train)  # the default λ, on the job's split
    fixed_rmse = regression_metrics(fixed.predict_canonical(test))["rmse"]
    fixed.unpersist()
    poisoned = [(u, i, (10.0 - 3 * r if (u, i) in in_test else r)) for u, i, r in rows]
    _write(tmp / "poisoned.csv", poisoned)
    return (
        fixed_rmse,
        len(in_test),
        _job(spark, tmp / "clean.csv", tmp / "clean"),
        _job(spark, tmp / "poisoned.csv", tmp / "bad"),
    )


def test_auto_reg_walks_the_path_and_adapts_to_low_noise_data(runs):
    fixed_rmse, _, clean, _ = runs
    path = clean["model"]["reg_path"]
    # The walk goes from strong to weak λ and stops once validation gets worse than the best.
    assert [step["reg"] for step in path] == list(REG_PATH[: len(path)])
    best = min(path, key=lambda step: step["rmse"])
    assert clean["model"]["reg"] == best["reg"]
    assert len(path) == len(REG_PATH) or path[-1]["rmse"] > best["rmse"] * (1 + PATH_SLACK)
    # No earlier step was worse than the best before it, or the walk would have stopped there.
    for i in range(1, len(path) - 1):
        assert path[i]["rmse"] <= min(step["rmse"] for step in path[:i]) * (1 + PATH_SLACK)
    # Rank-3 data with σ = 0.5 wants less shrinkage than real ratings: the path finds it, and
    # the test RMSE beats the default λ's on the same split.
    assert clean["model"]["reg"] < 0.1
    assert clean["test"]["rmse"] < fixed_rmse, (clean["test"]["rmse"], fixed_rmse)


def test_auto_reg_never_reads_the_test_split(runs):
    _, test_rows, clean, poisoned = runs
    assert clean["counts"]["test"] == poisoned["counts"]["test"] == test_rows
    # The poison reached the test split...
    assert poisoned["test"]["rmse"] > 3 * clean["test"]["rmse"]
    # ...and nothing the choice saw changed.
    # (Equal to the last bits but for the order in which Spark sums the validation errors.)
    assert [(s["reg"], s["iterations"]) for s in poisoned["model"]["reg_path"]] == [
        (s["reg"], s["iterations"]) for s in clean["model"]["reg_path"]
    ]
    assert [s["rmse"] for s in poisoned["model"]["reg_path"]] == pytest.approx(
        [s["rmse"] for s in clean["model"]["reg_path"]], rel=1e-12
    )
    assert poisoned["model"]["reg"] == clean["model"]["reg"]
    assert poisoned["train"]["rmse"] == pytest.approx(clean["train"]["rmse"], rel=1e-12)
