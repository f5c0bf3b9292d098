"""bce with exposure in one Spark job (fit/exposure_task.py): the same models, λ search and
records as the exposure fit, the search and the preference fit run one after the other; and
the job's two tasks (train/bce_task.py), one per part, fit what fit_both fits on its arrays."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from planted import planted_exposure, planted_labels
from pyspark.sql import functions as F

from cfspark import CollaborativeFilter
from cfspark.core.plans import separate_unions
from cfspark.core.schema import (
    BIAS,
    FEATURES,
    ITEM,
    ITEM_OFFSET,
    LABELLED,
    OFFSET,
    POSITIVE_RATE,
    POSITIVES,
    RATING,
    TARGET,
    USER,
    WEIGHT,
)
from cfspark.data.offsets import global_rate, item_offsets, refused_rate
from cfspark.data.split import split_ratings
from cfspark.fit.exposure import exposure_settings, fresh_draws
from cfspark.fit.reg_search import search_plan, search_settings
from cfspark.kernels.layout import bias_col
from cfspark.train.bce_task import (
    EXPOSURE,
    PART,
    PREFERENCE,
    BceTaskConfig,
    _body,
    fit_both,
    fit_both_one_task,
    item_table,
    search_offsets,
)
from cfspark.train.one_task import ITEM_KEY, KIND, RECORD_COL, USER_KEY, keyed_rows
from cfspark.train.search_task import HELD


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

    cf = CollaborativeFilter(loss="bce", rank=2, maxIter=4, exposureNegatives=3, regParam=reg, exposureRegParam=0.01)
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
    # The task's item table is the one item_offsets sums in Spark: 0/1 labels without weights
    # sum to whole numbers, so the counts and rates are equal, not close; the offsets differ
    # only in the last bit that numpy's log and the JVM's give.
    assert_df_equality(one.item_stats.drop(ITEM_OFFSET), three.item_stats.drop(ITEM_OFFSET), ignore_row_order=True,
                       ignore_nullable=True)  # fmt: skip
    logits = [m.item_stats.toPandas().sort_values(ITEM) for m in (one, three)]
    assert list(logits[0].columns) == list(logits[1].columns) == [ITEM, POSITIVES, LABELLED, POSITIVE_RATE, ITEM_OFFSET]
    np.testing.assert_allclose(logits[0][ITEM_OFFSET], logits[1][ITEM_OFFSET], rtol=1e-14, atol=1e-15)
    assert one.global_baseline == pytest.approx(three.global_baseline, rel=1e-14)


def _task_config(settings, exposed: bool) -> BceTaskConfig:
    """The task's half-steps as fit/exposure_task.py sets them, λ searched."""
    part = fresh_draws(exposure_settings(settings), settings)
    searching = search_settings(settings, 1.0)
    return BceTaskConfig(
        user=searching.step_config("user"), item=searching.step_config("item"),
        exposure_user=part.step_config("user") if exposed else None,
        exposure_item=part.step_config("item") if exposed else None, plan=search_plan(settings, 1.0, None),
        offset_prior=settings.offsetPrior, item_offset=True, max_iter=settings.maxIter, tol=settings.tol,
    )  # fmt: skip


@pytest.mark.parametrize("exposed", [True, pytest.param(False, marks=pytest.mark.slow)])  # without: one task, as before
def test_the_job_fits_in_one_task_per_part_what_fit_both_fits_on_its_arrays(spark, labels, exposed):
    # With an exposure part the job is two tasks, one per part, each indexing every row; the
    # models are fit_both's on the arrays one task over the rows builds, to the bit.
    frame = labels.toPandas()
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # an order of the test's own
    user, user_ids = pd.factorize(frame[USER])  # first appearance, as Arrow's dictionary encoding
    item, item_ids = pd.factorize(frame[ITEM])
    y = frame[RATING].to_numpy(np.float64)
    held = np.random.default_rng(4).random(len(y)) < 0.1
    settings = CollaborativeFilter(loss="bce", rank=2, maxIter=4, exposureNegatives=3).fit_settings()
    offset = search_offsets(item, y, None, np.ones(len(y), bool), len(item_ids), settings.offsetPrior)[0][item]
    columns = {USER: frame[USER], ITEM: frame[ITEM], TARGET: y, OFFSET: offset, HELD: held.astype(np.int32)}
    rows = spark.createDataFrame(pd.DataFrame(columns)).withColumn(WEIGHT, F.lit(None).cast("double"))
    keyed = keyed_rows(rows, settings.seed).toPandas()
    assert (keyed[USER].to_numpy() == frame[USER].to_numpy()).all()  # the rows in the test's order
    keys = [np.empty(len(ids), np.int64) for ids in (user_ids, item_ids)]
    keys[0][user], keys[1][item] = keyed[USER_KEY], keyed[ITEM_KEY]
    cfg = _task_config(settings, exposed)
    (W, X), exposure, record = fit_both(user, item, y, offset, None, held, *keys, cfg)
    (users, items, _), exposure_tables, job = fit_both_one_task(rows, cfg, seed=settings.seed)

    def table(factors, key, ids):
        got = factors.toPandas().set_index(key).loc[ids]
        return np.c_[np.stack(got[FEATURES]), got[BIAS]]

    models = [((users, items), (W, X))] + ([(exposure_tables, exposure)] if exposed else [])
    for (user_table, items_table), (W, X) in models:
        np.testing.assert_array_equal(table(user_table, USER, user_ids), W[:, [0, 1, bias_col(2, "user")]])
        np.testing.assert_array_equal(table(items_table, ITEM, item_ids), X[:, [0, 1, bias_col(2, "item")]])
    assert [h["train_loss"] for h in job["history"]] == [h["train_loss"] for h in record["history"]]
    assert job["search"]["path"] == record["search"]["path"] and job["stop"] == record["stop"]
    if exposed:
        losses = [[h["train_loss"] for h in found["exposure"]["history"]] for found in (job, record)]
        assert losses[0] == losses[1] and job["exposure"]["stop"] == record["exposure"]["stop"]
        # Each part's record comes from a task of its own: two partitions of the one job.
        assert job["tasks"] == {"exposure": 0, "preference": 1}
        assert set(job["task_seconds"]) == {"exposure", "search", "fit"}
    else:
        assert exposure_tables is None and job["exposure"] is None and job["tasks"] == {"preference": 0}
        assert set(job["task_seconds"]) == {"search", "fit"}
    assert all(seconds > 0 for seconds in job["task_seconds"].values())


def test_a_task_given_both_parts_rows_fits_each_on_its_own_rows():
    # Were the two inputs planned as one task, its body sees every row twice, once per part:
    # it still fits each part on its own rows, as fit_both does (no Spark: the body on Arrow).
    data, _ = planted_exposure(n_users=50, n_items=30, rank=2, shown=0.3, seed=5)
    u, i, y = data.users.astype(np.int64), data.items.astype(np.int64), data.ratings
    user, user_ids = pd.factorize(u)
    item, item_ids = pd.factorize(i)
    held = np.random.default_rng(6).random(len(y)) < 0.1
    settings = CollaborativeFilter(loss="bce", rank=2, maxIter=3, exposureNegatives=3).fit_settings()
    cfg = _task_config(settings, exposed=True)
    offset = search_offsets(item, y, None, np.ones(len(y), bool), len(item_ids), settings.offsetPrior)[0][item]
    keys = (user_ids * 7 + 1, item_ids * 11 + 3)
    rows = pa.table({USER: u, ITEM: i, TARGET: y, OFFSET: offset, WEIGHT: pa.nulls(len(y), pa.float64()),
                     HELD: held.astype(np.int32), USER_KEY: keys[0][user], ITEM_KEY: keys[1][item]})  # fmt: skip
    both = pa.concat_tables([rows.append_column(PART, pa.array([part] * len(y))) for part in (EXPOSURE, PREFERENCE)])
    batches = list(_body(cfg)(iter(both.to_batches(max_chunksize=97))))
    (W, X), exposure, record = fit_both(user, item, y, offset, None, held, *keys, cfg)
    assert len(batches) == 2
    for batch, (UW, IX), kinds in ((batches[0], exposure, (3, 4)), (batches[1], (W, X), (0, 1))):
        kind = batch.column(KIND).to_numpy()
        features = batch.column(FEATURES).to_pylist()
        for k, params, ids, side in ((kinds[0], UW, user_ids, "user"), (kinds[1], IX, item_ids, "item")):
            rows_of = np.flatnonzero(kind == k)
            assert batch.column(USER if side == "user" else ITEM).take(rows_of).to_pylist() == list(ids)
            np.testing.assert_array_equal(np.array([features[r] for r in rows_of]), params[:, :2])
            np.testing.assert_array_equal(batch.column(BIAS).to_numpy()[rows_of], params[:, bias_col(2, side)])
    found = [json.loads(batch.column(RECORD_COL)[batch.num_rows - 1].as_py()) for batch in batches]
    assert found[0][PART] == EXPOSURE and found[1][PART] == PREFERENCE
    assert [h["train_loss"] for h in found[0]["exposure"]["history"]] == [
        h["train_loss"] for h in record["exposure"]["history"]
    ]
    assert [h["train_loss"] for h in found[1]["history"]] == [h["train_loss"] for h in record["history"]]


def test_separate_unions_makes_each_one_partition_input_a_task_and_restores_the_session(spark):
    # The union of two one-partition inputs: under Spark's default one task reads both; planned
    # inside separate_unions, each input is a partition of its own, its rows in their order.
    def tasks() -> dict[int, list[tuple[str, int]]]:
        rows = spark.range(0, 6, 1, 3).coalesce(1)
        union = rows.withColumn("part", F.lit("a")).union(rows.withColumn("part", F.lit("b")))
        found = union.select(F.spark_partition_id().alias("task"), "part", "id").localCheckpoint(eager=False)
        got: dict[int, list[tuple[str, int]]] = {}
        for row in found.collect():
            got.setdefault(row.task, []).append((row.part, row.id))
        return got

    key = "spark.sql.unionOutputPartitioning"
    before = spark.conf.get(key, None)
    with separate_unions(spark):
        apart = tasks()
    assert apart == {0: [("a", i) for i in range(6)], 1: [("b", i) for i in range(6)]}
    assert spark.conf.get(key, None) == before
    assert len(tasks()) == (2 if before == "false" else 1)


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


def test_the_tasks_item_table_is_global_rate_and_item_offsets_over_the_labels(spark):
    """item_table sums in numpy what global_rate and item_offsets sum in Spark: with weights
    the sums differ only in the order of float additions."""
    rng = np.random.default_rng(11)
    item = rng.integers(0, 40, 600)
    y = (rng.random(600) < 0.3).astype(np.float64)
    weight = rng.uniform(0.5, 3.0, 600)
    frame = spark.createDataFrame(pd.DataFrame({ITEM: item, RATING: y, WEIGHT: weight}))
    (columns, p) = item_table(item, y, weight, 40, prior=2.0, item_offset=True)
    assert p == pytest.approx(global_rate(frame), rel=1e-13)
    expected = item_offsets(frame, prior=2.0, rate=global_rate(frame)).toPandas().set_index(ITEM).sort_index()
    assert (expected.index.to_numpy() == np.arange(40)).all()
    for name, values in columns.items():
        np.testing.assert_allclose(values, expected[name].to_numpy(), rtol=1e-12, err_msg=name)
        assert values.dtype == (np.int64 if name in ("positives", "labelled") else np.float64)
    plain, _ = item_table(item, y, weight, 40, prior=2.0, item_offset=False)
    assert (plain["item_offset"] == 0).all() and (plain["positive_rate"] == columns["positive_rate"]).all()


def test_the_task_refuses_labels_as_global_rate_does():
    """All one label, or weights that round the share of 1s to 1: item_table gives the words
    of global_rate's InputError, which the job raises from the task's record."""
    item = np.array([0, 1, 1])
    assert item_table(item, np.ones(3), None, 2, prior=2.0, item_offset=True) == refused_rate(3, 1.0, (1, 1), (1, 1))
    assert "all 3 training labels are 1; bce needs both 0 and 1" in refused_rate(3, 1.0, (1, 1), (1, 1))
    swamped = item_table(item, np.array([1.0, 0.0, 1.0]), np.array([1e100, 1.0, 1e100]), 2, prior=2.0,
                         item_offset=True)  # fmt: skip
    assert swamped == refused_rate(3, 1.0, (0, 1), (1.0, 1e100))
    assert "weighted share of 1s is 1 in float64: the rows' weights range from 1 to 1e+100" in swamped
    assert refused_rate(3, 2 / 3, (0, 1), (1.0, 1.0)) is None


def test_a_refused_task_raises_the_input_error_before_any_table(spark):
    """Labels all 0 reach the one-task job (not positive-only): its preference task refuses,
    and fit_both_one_task raises global_rate's message, whichever task ends first."""
    from cfspark.core.errors import InputError

    rows = spark.createDataFrame([(1, 1, 0.0, 0), (1, 2, 0.0, 0), (2, 1, 0.0, 0)], [USER, ITEM, TARGET, HELD])
    rows = rows.withColumn(WEIGHT, F.lit(None).cast("double"))
    settings = CollaborativeFilter(loss="bce", rank=2, maxIter=2, exposureNegatives=2).fit_settings()
    with pytest.raises(InputError, match="all 3 training labels are 0; bce needs both 0 and 1 labels"):
        fit_both_one_task(rows, _task_config(settings, exposed=True), seed=settings.seed)


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
