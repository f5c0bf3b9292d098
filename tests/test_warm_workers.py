"""Python workers started while the train job reads (app/warm.py): they import every module a
fit's tasks unpickle their bodies from, and the job's results do not depend on them."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys

import pytest
from planted import planted_labels, planted_ratings
from pyspark.sql.classic.dataframe import DataFrame
from pyspark.sql.pandas.group_ops import PandasCogroupedOps, PandasGroupedOpsMixin
from tests_support import REPO

from cfspark import CollaborativeFilter
from cfspark.app import warm
from cfspark.train import WORKER_MODULES


def _body_module(body) -> str:
    while isinstance(body, functools.partial):
        body = body.func
    return body.__module__


def _imported_by(modules: tuple[str, ...]) -> set[str]:
    """The cfspark modules that importing modules loads, in a fresh interpreter, as a fresh worker's."""
    script = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    script += "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cfspark'))))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_the_warmed_modules_hold_every_body_a_fit_sends_to_python(spark, monkeypatch):
    """Every body that a bce fit (both parts in one job), a blockwise mse fit with automatic λ
    (setup, the search's task beside it, the warm start from its factors, half-steps, factor
    tables) and a blockwise positive-only fit send to Python is defined in a module that
    importing WORKER_MODULES loads: a fit's workers import nothing after the warm-up's. A body
    module missing from the list fails it."""
    sent: set[str] = set()

    def recording(original):
        def record(self, body, *args, **kwargs):
            sent.add(_body_module(body))
            return original(self, body, *args, **kwargs)

        return record

    for owner, name in ((DataFrame, "mapInArrow"), (PandasGroupedOpsMixin, "applyInArrow"),
                        (PandasCogroupedOps, "applyInArrow")):  # fmt: skip
        monkeypatch.setattr(owner, name, recording(getattr(owner, name)))
    labels, _ = planted_labels(n_users=60, n_items=40, rank=2, density=0.3, seed=4)
    ratings = planted_ratings(n_users=60, n_items=40, rank=2, density=0.3, noise=0.3, seed=5)
    as_df = {
        name: spark.createDataFrame([tuple(r) for r in p.rows()], "user int, item int, rating double")
        for name, p in (("labels", labels), ("ratings", ratings))
    }
    as_df["positives"] = as_df["labels"].filter("rating = 1")
    fits = [
        (dict(loss="bce", rank=2, maxIter=3), "labels"),
        # automatic λ beside the blocks' setup, and the fit from the search's factors
        (dict(rank=2, maxIter=3, numUserBlocks=2, numItemBlocks=2), "ratings"),
        (dict(loss="bce", rank=2, maxIter=3, numUserBlocks=2, numItemBlocks=2), "positives"),  # all items
    ]
    for params, data in fits:
        CollaborativeFilter(**params).fit(as_df[data]).unpersist()
    fit_modules = {m for m in sent if m.startswith("cfspark")}
    assert {"cfspark.train.bce_task", "cfspark.train.search_task", "cfspark.blocks.build"} <= fit_modules, sent
    loaded = _imported_by(WORKER_MODULES)
    assert fit_modules <= loaded, sorted(fit_modules - loaded)
    assert not fit_modules <= _imported_by(("cfspark",))  # the package root alone misses them


def test_warm_workers_run_a_task_each_and_a_failed_warm_up_is_only_logged(spark, caplog, monkeypatch):
    started = warm.WarmWorkers(spark, 2).wait()
    assert started is not None and len(started) == 2 and all(pid > 0 for pid in started)
    assert warm.WarmWorkers(spark, 0).wait() is None  # off: no job
    monkeypatch.setattr(warm.train, "WORKER_MODULES", ("cfspark.no_such_module",))
    with caplog.at_level(logging.INFO, logger="cfspark"):
        assert warm.WarmWorkers(spark, 1).wait() is None
    assert "starting Python workers ahead of the fit failed" in caplog.text
    assert "cfspark.no_such_module" in caplog.text


@pytest.mark.slow
def test_the_train_job_gives_the_same_results_with_without_and_with_a_failed_warm_up(spark, tmp_path, monkeypatch):
    from test_bad_input import train_job

    p = planted_ratings(n_users=40, n_items=30, rank=2, density=0.5, noise=0.3, seed=9)
    lines = ["userId,movieId,rating", *(f"{u},{i},{r:.3f}" for u, i, r in p.rows())]
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    waited, wait = [], warm.WarmWorkers.wait
    monkeypatch.setattr(warm.WarmWorkers, "wait", lambda self, *a: waited.append(wait(self, *a)) or waited[-1])
    outputs, started = {}, {}
    for name, workers, modules in (("off", 0, None), ("on", 2, None), ("failed", 2, ("cfspark.no_such_module",))):
        waited.clear()
        if modules is not None:
            monkeypatch.setattr(warm.train, "WORKER_MODULES", modules)
        out = tmp_path / name
        args = ["--set", f"input.path={tmp_path / 'ratings.csv'}", "--set", f"output.path={out}",
                "--set", f"spark.warm_workers={workers}", "--set", "spark.shuffle_partitions=4",
                "--set", "model.max_iter=4", "--set", "model.rank=2"]  # fmt: skip
        assert train_job.main(args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        recs = spark.read.parquet(str(out / "recommendations")).orderBy("user", "rank").collect()
        outputs[name] = (metrics["test"], metrics["model"]["reg"], [tuple(r) for r in recs])
        started[name] = waited[0]  # what the run's wait before the fit found
    assert outputs["on"] == outputs["off"] == outputs["failed"]
    assert started["off"] is None and started["failed"] is None and len(started["on"]) == 2
