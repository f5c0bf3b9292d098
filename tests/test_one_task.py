"""Small data fits in one task (train/one_task.py): the same model as the distributed fit.

The one-task fit indexes ids densely inside its task (Arrow's dictionary encoding); the
distributed fit hashes them into blocks. Both start from the same hashed factors and run
the same kernel, so the factors of every id agree to float rounding, for integer and
string ids, for ratings and labels.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from planted import planted_labels, planted_ratings
from pyspark.sql import functions as F
from tests_support import assert_same_path

from cfspark import CollaborativeFilter
from cfspark.core.schema import P_EXPOSED
from cfspark.fit import one_task as fit_one_task
from cfspark.fit import paths, reg_search
from cfspark.fit.one_task import runs_in_one_task
from cfspark.fit.paths import fit_ratings, settle_of
from cfspark.train import one_task
from cfspark.train.search_task import SETTLED

PARAMS = dict(rank=3, maxIter=6, tol=0.0, seed=5, regParam=0.05, regUnits="als")


def _factors(model, id_col):
    return {r[id_col]: np.r_[r.features, r.bias] for r in getattr(model, f"{id_col}_factors").collect()}


def _assert_same(a, b, tol=1e-8):
    for id_col in ("user", "item"):
        fa, fb = _factors(a, id_col), _factors(b, id_col)
        assert fa.keys() == fb.keys()
        for key in fa:
            np.testing.assert_allclose(fa[key], fb[key], rtol=tol, atol=tol, err_msg=f"{id_col} {key!r}")


@pytest.fixture(scope="module")
def planted(spark):
    p = planted_ratings(n_users=120, n_items=80, rank=3, density=0.25, noise=0.5, seed=2)
    ints = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    strings = spark.createDataFrame(
        [(f"u{u}", f"item-{i}", r) for u, i, r in p.rows()], "user string, item string, rating double"
    ).cache()
    yield ints, strings
    ints.unpersist(), strings.unpersist()


@pytest.mark.parametrize("ids", ["bigint", "string"])
@pytest.mark.slow
def test_one_task_fit_equals_the_distributed_fits(planted, ids):
    ratings = planted[0] if ids == "bigint" else planted[1]
    small = CollaborativeFilter(**PARAMS).fit_validated(ratings)
    assert small.summary["one_task"] and len(small.history) == PARAMS["maxIter"]
    # 3 × 2 blocks (tests/test_setup.py shows that 1 × 1 gives the same model as 3 × 2).
    spread = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_validated(ratings)
    assert "one_task" not in spread.summary
    _assert_same(small, spread)
    # The same J at every iteration: the loop and its loss are the trainer's.
    np.testing.assert_allclose(
        [h["train_loss"] for h in small.history], [h["train_loss"] for h in spread.history], rtol=1e-10
    )
    spread.unpersist()
    assert dict(small.user_factors.dtypes)["user"] == ids  # ids keep their type
    small.unpersist()


@pytest.mark.slow
def test_one_task_bce_and_the_stopping_rule_match(spark):
    """With the exposure model (the bce default) and a weight per label: both models agree."""
    p, _ = planted_labels(n_users=100, n_items=60, rank=2, density=0.3, seed=4)
    weights = np.random.default_rng(6).uniform(0.5, 3.0, len(p.users)).tolist()
    rows = [(*row, w) for row, w in zip(p.rows(), weights, strict=True)]
    labels = spark.createDataFrame(rows, "user int, item int, rating double, weight double").cache()
    params = dict(PARAMS, loss="bce", maxIter=30, tol=0.01)
    seen: dict[str, int] = {"small": 0, "spread": 0}

    def watch(name):
        def see(model):
            seen[name] += 1
            return {"seen": seen[name]}

        return see

    small = CollaborativeFilter(**params).fit_validated(labels, on_iteration=watch("small"))
    spread = CollaborativeFilter(numUserBlocks=2, numItemBlocks=2, **params).fit_validated(
        labels, on_iteration=watch("spread")
    )
    assert small.summary["one_task"]
    # on_iteration sees every iteration of a distributed fit, and a one-task fit's last only.
    assert [h["seen"] for h in spread.history] == list(range(1, len(spread.history) + 1))
    assert seen["small"] == 1 and small.history[-1]["seen"] == 1
    assert len(small.history) == len(spread.history) < 30  # tol stopped both at the same iteration
    assert small.summary["stop_reason"] == spread.summary["stop_reason"]
    _assert_same(small, spread, tol=1e-7)
    # The exposure model's 0s are drawn in each half-step from the block's own item list
    # (train/sampled.py), so 1 × 1 and 2 × 2 blocks draw other samples of one distribution:
    # its P(exposed) agrees closely, not to rounding.
    exposed = [
        np.array([r[P_EXPOSED] for r in m.exposure_model.transform(labels).orderBy("user", "item").collect()])
        for m in (small, spread)
    ]
    assert np.corrcoef(*exposed)[0, 1] > 0.95 and np.abs(exposed[0] - exposed[1]).mean() < 0.05
    for model in (small, spread):
        model.unpersist()
    labels.unpersist()


def test_the_one_task_limit_and_explicit_blocks_choose_the_path():
    cf = CollaborativeFilter(**PARAMS)
    settings = cf.fit_settings()
    # mse: one task up to the limit it was measured at.
    limit = fit_one_task.MSE_ONE_TASK_RATINGS
    assert runs_in_one_task(settings, limit) and not runs_in_one_task(settings, limit + 1)  # over the limit: blocks
    # bce keeps the limit it was measured at.
    bce = CollaborativeFilter(**{**PARAMS, "loss": "bce"}).fit_settings()
    limit = one_task.ONE_TASK_RATINGS
    assert runs_in_one_task(bce, limit) and not runs_in_one_task(bce, limit + 1)
    assert not runs_in_one_task(cf.copy({cf.numUserBlocks: 1}).fit_settings(), 10)  # a block count set by hand
    assert not runs_in_one_task(cf.copy({cf.maxBlockRatings: 5}).fit_settings(), 10)
    assert not runs_in_one_task(cf.copy({cf.initialModel: "/some/model"}).fit_settings(), 10)  # a warm start


@pytest.mark.parametrize("reg", ["auto", "fixed"])
@pytest.mark.slow
def test_past_the_search_limit_one_task_searches_a_sample_and_fits_every_rating(planted, monkeypatch, reg):
    """Past SEARCH_RATINGS and within the one-task limit, one task searches a hashed share of
    the users (automatic λ: its search, carried over to every user; a fixed λ: that λ alone,
    for λ_b), then fits every rating from the factors it ended with: the model the blockwise
    fit gives from the same sample, searched in its own task, warm-started from its factors.
    String ids; tol = 0, so both fits run maxIter iterations."""
    ratings = planted[1]
    monkeypatch.setattr(reg_search, "SEARCH_RATINGS", ratings.count() // 3)
    monkeypatch.setattr(fit_one_task, "SEARCH_RATINGS", ratings.count() // 3)
    dropped = ("regParam", "regUnits") if reg == "auto" else ()
    params = {k: v for k, v in PARAMS.items() if k not in dropped}
    one = CollaborativeFilter(**params).fit_validated(ratings)
    search = one.summary["reg_search"]
    assert one.summary["one_task"] and search["sample_fraction"] == reg_search.SEARCH_FRACTION
    assert search["task_seconds"].keys() == {"input", "search", "fit"}  # the search and the fit in one task
    users = len({r.user for r in ratings.select("user").collect()})
    assert 0 < search["sample"]["users"] < users / 2 and search["sample"]["ratings"] < ratings.count() / 2
    if reg == "auto":
        assert search["reg"] == pytest.approx(search["sample_reg"] * search["transfer"], rel=1e-12)
        assert search["transfer"] < 1  # the sample has more vectors per rating: it chose a larger λ
    else:  # the fixed λ itself, fitted on the sample for λ_b
        assert search["fixed"] and [p["reg"] for p in one.summary["reg_path"]] == [PARAMS["regParam"]]
        assert one.getRegParam() == PARAMS["regParam"] and one.getBiasReg() == search["bias_reg"]

    blocks = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **params).fit_validated(ratings)
    assert "one_task" not in blocks.summary
    apart = blocks.summary["reg_search"]
    assert apart["bias_reg"] == pytest.approx(search["bias_reg"], rel=1e-9)
    assert reg == "fixed" or apart["sample"] == search["sample"]  # the one task's sample is the search's own
    assert [p["reg"] for p in blocks.summary["reg_path"]] == [p["reg"] for p in one.summary["reg_path"]]
    assert [p["rmse"] for p in blocks.summary["reg_path"]] == pytest.approx(
        [p["rmse"] for p in one.summary["reg_path"]], rel=1e-9
    )
    assert blocks.getRegParam() == pytest.approx(one.getRegParam(), rel=1e-12)
    # The same sample, λ, λ_b and start: the same iterations and factors.
    np.testing.assert_allclose(
        [h["train_loss"] for h in one.history], [h["train_loss"] for h in blocks.history], rtol=1e-9
    )
    _assert_same(one, blocks)
    # The start is the search's: from the hashed init, the same λ, λ_b and rank begin far higher.
    chosen = {"regParam": one.getRegParam(), "regUnits": "als", "biasReg": one.getBiasReg(),
              "rank": search.get("rank", PARAMS["rank"])}  # fmt: skip
    cold = CollaborativeFilter(**{**params, **chosen}).fit_validated(ratings)
    assert cold.summary["one_task"] and cold.history[0]["train_loss"] > 1.5 * one.history[0]["train_loss"]
    assert one.history[-1]["train_loss"] < cold.history[-1]["train_loss"]  # and it is still ahead at maxIter
    if reg == "auto":
        # Under tol > 0 automatic λ's fit stops where its predictions settle, bounded at the
        # sample's own λ (the carried λ has no point of the path): each iteration reports its move.
        settled = CollaborativeFilter(**{k: v for k, v in params.items() if k != "tol"}).fit_validated(ratings)
        bound = SETTLED * [p["rmse"] for p in settled.summary["reg_path"] if p["reg"] == search["sample_reg"]][-1]
        moved, stop = [h["moved"] for h in settled.history], settled.summary["stop_reason"]
        assert stop.startswith("settled") and len(moved) < PARAMS["maxIter"]
        if "predictions moved" in stop:  # else the training RMSE stood still first
            assert moved[-1] <= bound < min(moved[:-1])
        else:
            assert min(moved) > bound
        settled.unpersist()
    one.unpersist(), blocks.unpersist(), cold.unpersist()


@pytest.mark.parametrize("reg", ["auto", 0.3])
def test_the_one_task_takes_the_targets_statistics_from_its_rows(planted, reg):
    """The one-task search and fit take g, m and the spread from their rows, with no
    target_stats job (regUnits = "spread": a fixed λ fitted as λ·s in ALS's units, the init
    scaled by √s): Spark's statistics, and the same model as with Spark's g given, to 1e-8."""
    ints, _ = planted
    df = ints.withColumn("weight", 1.0 + (F.col("user") % 3).cast("double"))
    settings = CollaborativeFilter(rank=3, maxIter=6, seed=5, regParam=reg).fit_settings()
    stats = paths.target_stats(settings, df)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "target_stats", lambda *a, **k: calls.append(1))
        in_task = fit_ratings(settings, df)  # the count unknown: counted, and the path is one task
        given = fit_ratings(settings, df, num_ratings=df.count(), global_mean=stats.global_mean)
    assert not calls
    for record in (in_task, given):
        assert record.summary["one_task"] and record.summary["spread"] == pytest.approx(stats.spread, rel=1e-11)
        assert record.summary["mean_prior"] == stats.mean_prior
        assert record.global_baseline == pytest.approx(stats.global_mean, rel=1e-12)
    assert given.global_baseline == stats.global_mean
    assert in_task.params["regParam"] == pytest.approx(given.params["regParam"], rel=1e-9)
    if reg != "auto":
        assert in_task.params["regParam"] == pytest.approx(reg * stats.spread, rel=1e-11)
        assert in_task.summary["reg_path"][0]["reg"] == in_task.params["regParam"]
    assert_same_path(in_task.summary["reg_path"], given.summary["reg_path"])
    for side in ("user_factors", "item_factors"):
        a, b = ({r[0]: np.r_[r.features, r.bias] for r in getattr(x, side).collect()} for x in (in_task, given))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-8, atol=1e-8)


def test_tol_zero_runs_max_iter_under_automatic_reg_too(planted):
    """Automatic λ's fit stops where its predictions settle (settle_of's bound), unless tol = 0,
    which runs maxIter iterations on every path: the search's task and its fit (one task) here,
    and settle_of's None for the blockwise and carried fits."""
    search = {"path": [{"reg": 0.1, "rmse": 0.9}, {"reg": 0.03, "rmse": 0.8}]}
    assert settle_of(search, 0.03, 0.002) == pytest.approx(SETTLED * 0.8, rel=1e-12)
    assert settle_of(search, 0.03, 0.0) is None and settle_of(search, 0.3, 0.002) is None
    params = {k: v for k, v in PARAMS.items() if k not in ("regParam", "regUnits")}  # tol = 0
    model = CollaborativeFilter(**{**params, "maxIter": 9}).fit_validated(planted[0])
    assert model.summary["one_task"] and "reg_search" in model.summary
    assert len(model.history) == 9 and model.summary["stop_reason"] == "reached max_iter = 9"
    model.unpersist()


def test_float32_in_one_task_fits_as_float64_does(planted):
    """The float32 Param reaches the one-task loop's half-steps: float32 gathers and products
    give other factors, and a training RMSE within 1e-4 relative of float64's."""
    ratings = planted[0]

    def fit(single: bool):
        model = CollaborativeFilter(float32=single, **PARAMS).fit_validated(ratings)
        assert model.summary["one_task"]
        rmse = model.transform(ratings).selectExpr("sqrt(avg(pow(prediction - rating, 2)))").first()[0]
        factors = _factors(model, "user")
        model.unpersist()
        return rmse, factors

    (rmse64, f64), (rmse32, f32) = fit(False), fit(True)
    assert 0.3 < rmse64 < 0.6  # a real fit: the planted noise is 0.5
    assert abs(rmse32 - rmse64) <= 1e-4 * rmse64
    assert any(not np.array_equal(f32[k], f64[k]) for k in f64)  # the float32 path ran


def test_the_tables_of_a_factor_tasks_output_are_stored_in_one_job(spark):
    """kind_tables: every (kind, columns) table of a task's output, each holding its kind's
    rows, filled in one Spark job and stored there: read twice, a table gives the values its
    job drew both times, where the output itself draws afresh at every read."""
    from tests_support import jobs_of

    from cfspark.train.trainer import checkpoint_level

    def random_kinds(batches):  # nested, so that Spark's workers get it by value
        """Each input row as a row of kind 1 or 2 (by parity) with a fresh random bias, so that
        a table computed again would differ from the one stored."""
        for batch in batches:
            ids = batch.column("id").to_numpy()
            kind, bias = (1 + ids % 2).astype(np.int32), np.random.default_rng().random(len(ids))
            yield pa.RecordBatch.from_pydict({"kind": kind, "user": ids, "bias": bias})

    out = spark.range(0, 40, 1, 3).mapInArrow(random_kinds, "kind int, user long, bias double")
    assert out.collect() != out.collect()  # not stored: each read draws again
    kinds = [(1, ("user", "bias")), (2, ("user",)), (1, ("bias",))]
    tables, jobs = jobs_of(spark, lambda: one_task.kind_tables(out, kinds, checkpoint_level(spark)))
    assert jobs == 1
    evens, odds, biases = (t.collect() for t in tables)  # kind 1 holds the even ids
    assert sorted(r.user for r in evens) == list(range(0, 40, 2))
    assert sorted(r.user for r in odds) == list(range(1, 40, 2)) and odds[0].asDict().keys() == {"user"}
    assert tables[0].collect() == evens and tables[2].collect() == biases  # stored, not drawn again
    assert len(biases) == 20 and biases[0].asDict().keys() == {"bias"}


