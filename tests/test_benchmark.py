"""The benchmark's code path at reduced size: 100k synthetic ratings, one split,
cfspark and Spark ALS side by side."""

from __future__ import annotations

import pytest

from cfspark.app.config import load_config
from cfspark.bench.benchmark import ratio_table, run_benchmark
from cfspark.data.synthetic import SyntheticSpec, write_synthetic

pytestmark = pytest.mark.slow

BENCH_SETTINGS: list[str] = []  # cfspark at its defaults


@pytest.fixture(scope="module")
def record(spark, tmp_path_factory):
    data = tmp_path_factory.mktemp("synth")
    write_synthetic(spark, SyntheticSpec(users=5_000, items=1_000, ratings=100_000, rank=10, seed=0), str(data))
    cfg = load_config(None, [
        f"input.path={data / 'ratings'}", "input.format=parquet", "input.user_col=user", "input.item_col=item",
        "compare.als_reg_grid=[0.1]", "compare.als_num_blocks=2", *BENCH_SETTINGS,
    ])  # fmt: skip
    return run_benchmark(spark, cfg, als_curve_iters=[3])


def test_cfspark_matches_als_accuracy_on_the_same_split(record):
    ours, als = record["cfspark"]["test"], record["als"]["test"]
    assert record["counts"]["ratings"] == 100_000
    assert ours["count"] == als["count"] == record["counts"]["test"]
    assert ours["rmse"] <= 1.02 * als["rmse"], (ours["rmse"], als["rmse"])


def test_record_has_timings_ranking_memory_and_curves(record):
    c, a = record["cfspark"], record["als"]
    for side in (c, a):
        assert side["fit_seconds"] > 0 and side["recommend_all_seconds"] > 0
        assert {"precision_at_k", "ndcg_at_k", "map_at_k"} <= side["test"].keys()
    assert [p["iterations"] for p in a["curve"]] == [3] and a["curve"][0]["rmse"] > 0
    # 100k ratings fit in one task, which has no model between iterations: its curve is its
    # last point, measured off the clock.
    assert c["params"]["oneTask"]
    assert [p["iterations"] for p in c["curve"]] == [len(c["iterations"])]
    assert 0 < c["curve"][-1]["fit_seconds"] <= c["fit_seconds"]
    assert c["curve"][-1]["rmse"] == pytest.approx(c["test"]["rmse"], rel=1e-9)
    assert record["memory"]["jvm_mib"] > 100 and record["memory"]["driver_python_mib"] > 10
    table = ratio_table(record)
    assert "| test RMSE |" in table and "| top-10 for all users, seconds |" in table


@pytest.fixture(scope="module")
def bce_record(spark, tmp_path_factory):
    data = tmp_path_factory.mktemp("synth_bce")
    write_synthetic(spark, SyntheticSpec(users=1_000, items=300, ratings=20_000, rank=4, binary=True, seed=1),
                    str(data))  # fmt: skip
    cfg = load_config(None, [
        f"input.path={data / 'ratings'}", "input.format=parquet", "input.user_col=user", "input.item_col=item",
        "model.loss=bce", "model.rank=4", "compare.als_reg_grid=[0.1]", "compare.als_alpha_grid=[1.0,3.0]",
        "compare.als_num_blocks=2", "model.exposure_reg=0.01",  # the exposure λ search is tested elsewhere
    ])  # fmt: skip
    return run_benchmark(spark, cfg, als_curve_iters=[2])


def test_a_bce_benchmark_sets_cfspark_beside_both_als_variants(bce_record):
    """bce: explicit ALS on the labels (AUC) and implicit ALS on the positives (NDCG@10, the
    better of its alphas), each in the table with its ratio; the curve refits explicit ALS alone."""
    c, explicit, implicit = bce_record["cfspark"], bce_record["als"]["explicit"], bce_record["als"]["implicit"]
    assert bce_record["loss"] == "bce"
    assert c["test"]["count"] == explicit["test"]["count"] == bce_record["counts"]["test"]
    assert [run["alpha"] for run in implicit["grid"]] == [1.0, 3.0]
    best = max(implicit["grid"], key=lambda run: run["test"]["ndcg_at_k"])
    assert implicit["params"]["alpha"] == best["alpha"] and implicit["test"] == best["test"]
    assert [p["iterations"] for p in bce_record["als"]["curve"]] == [2] and 0 < bce_record["als"]["curve"][0]["auc"] < 1
    table = ratio_table(bce_record)
    header, _, *rows = table.splitlines()
    assert header.count("|") == 7 and "Spark ALS explicit" in header and "Spark ALS implicit" in header
    fit = next(r for r in rows if r.startswith("| fit seconds |")).split("|")[2:-1]
    ours, ex, ex_ratio, im, im_ratio = (cell.strip() for cell in fit)
    assert ex_ratio == f"{c['fit_seconds'] / explicit['fit_seconds']:.2f}"
    assert im_ratio == f"{c['fit_seconds'] / implicit['fit_seconds']:.2f}"
    ndcg = next(r for r in rows if r.startswith("| NDCG@10 |")).split("|")[2:-1]
    assert ndcg[3].strip() == f"{implicit['test']['ndcg_at_k']:.4f}"
