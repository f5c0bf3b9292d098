"""Scheduled runs (output.run_date): date partitions of recommendations, metrics and model;
rerunning a date replaces that date only, idempotently."""

from __future__ import annotations

import json
import os

import pytest
from test_bad_input import GOOD, strict_json, train_job
from tests_support import file_bytes

# Each test runs the train job three or four times in this process (18 to 27 s on 2 cores).
pytestmark = pytest.mark.slow

MORE = GOOD + "u3,m1,2\nu3,m2,5\nu4,m3,4\nu4,m2,2\n"  # 4 users, 3 items


def _run(tmp_path, run_date: str, reg: float = 10.0, *extra: str) -> int:
    return train_job.main([
        "--set", f"input.path={tmp_path / 'ratings.csv'}", "--set", f"output.path={tmp_path / 'daily'}",
        "--set", f"output.run_date={run_date}", "--set", f"model.reg={reg}", "--set", "split.test_fraction=0.0",
        "--set", "model.max_iter=2", "--set", "spark.shuffle_partitions=2", "--set", "checkpoint.interval=0", *extra,
    ])  # fmt: skip


def _recs(spark, tmp_path, day: str) -> list[tuple]:
    table = spark.read.parquet(str(tmp_path / "daily" / "recommendations"))
    rows = table.filter(f"run_date = '{day}'").select("userId", "movieId", "rank", "score").collect()
    return sorted(tuple(r) for r in rows)


def test_rerunning_a_date_replaces_that_date_only(spark, tmp_path):
    (tmp_path / "ratings.csv").write_text(MORE)
    assert _run(tmp_path, "2026-11-01") == 0
    assert _run(tmp_path, "2026-11-02") == 0
    daily = tmp_path / "daily"
    assert sorted(os.listdir(daily)) == ["_cfspark", "metrics", "model", "recommendations"]  # cfspark's marker
    for table in ("metrics", "model"):
        assert sorted(os.listdir(daily / table)) == ["_cfspark", "run_date=2026-11-01", "run_date=2026-11-02"]
        assert all((daily / table / f"run_date=2026-11-0{d}" / "_cfspark").is_file() for d in (1, 2))
    second_day = file_bytes(daily / "recommendations" / "run_date=2026-11-02")
    first = _recs(spark, tmp_path, "2026-11-01")
    assert len(first) == 4 and first == _recs(spark, tmp_path, "2026-11-02")  # 3 items, 2 rated by each user

    # A rerun of the first date with another λ replaces it whole: none of the old rows is left.
    assert _run(tmp_path, "2026-11-01", reg=0.5) == 0
    assert file_bytes(daily / "recommendations" / "run_date=2026-11-02") == second_day  # the other date untouched
    replaced = _recs(spark, tmp_path, "2026-11-01")
    assert len(replaced) == 4 and not set(replaced) & set(first)  # new scores, no duplicates
    metrics = strict_json(daily / "metrics" / "run_date=2026-11-01" / "metrics.json")
    assert metrics["run_date"] == "2026-11-01" and metrics["counts"]["ratings"] == 8
    (text,) = [r.value for r in spark.read.text(str(daily / "model" / "run_date=2026-11-01" / "metadata")).collect()]
    assert json.loads(text)["cfspark"]["config"]["model"]["reg"] == 0.5

    # Idempotent: the same date and settings again give the same rows, no duplicates, no leftovers.
    assert _run(tmp_path, "2026-11-01", reg=0.5) == 0
    assert _recs(spark, tmp_path, "2026-11-01") == replaced
    assert spark.read.parquet(str(daily / "recommendations")).count() == 4 + 4
    assert sorted(os.listdir(tmp_path)) == ["daily", "ratings.csv"]  # no staging, no lock


def test_a_daily_run_starts_warm_from_yesterdays_model(spark, tmp_path):
    """model.warm_start: today's fit starts from yesterday's factors. On the same data, each
    Newton half-step minimises J exactly over its side, so the warm run's first loss cannot
    be above where yesterday's fit ended, while a cold start begins far above it."""
    (tmp_path / "ratings.csv").write_text(MORE)
    assert _run(tmp_path, "2026-11-01", 0.5) == 0
    yesterday = tmp_path / "daily" / "model" / "run_date=2026-11-01"
    assert _run(tmp_path, "2026-11-02", 0.5, "--set", f"model.warm_start={yesterday}") == 0
    cold, warm = (
        strict_json(tmp_path / "daily" / "metrics" / f"run_date={d}" / "metrics.json")["iterations"]
        for d in ("2026-11-01", "2026-11-02")
    )
    assert warm[0]["train_loss"] <= cold[-1]["train_loss"] * (1 + 1e-9) < cold[0]["train_loss"]
