"""The train job: read → validate → split → fit → evaluate → recommend → write.

Everything is written into a staging folder beside output.path and moved into place
only once complete, so a failed run leaves no partial output and never touches an
existing result (local paths; other schemes are written in place).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager

import pyspark
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.compare import compare_als
from cfspark.config import Config
from cfspark.data.read import Columns, default_ratings_path, spark_message
from cfspark.errors import CfsparkError, ConfigError, InputError, OutputError, TrainingError
from cfspark.estimator import CollaborativeFilter
from cfspark.evaluate import pointwise_metrics, ranking_metrics, relevant_pairs
from cfspark.fs import is_local, local_path, write_json
from cfspark.guard import RunLock, check_disjoint, check_writable, remove_stale_staging
from cfspark.model import TRAINING
from cfspark.params import CONFIG_PARAMS
from cfspark.run import load_ratings, split_for_training
from cfspark.schema import ITEM, RATING, RUN_DATE, USER

log = logging.getLogger("cfspark")


def estimator_from_config(cfg: Config, columns: Columns) -> CollaborativeFilter:
    """The job's [model] and [checkpoint] keys as the estimator's Params (CONFIG_PARAMS maps them)."""
    values = {param: cfg[section][key] for (section, key), param in CONFIG_PARAMS.items()}
    if cfg["checkpoint"]["interval"] > 0:
        values["checkpointDir"] = checkpoint_dir(cfg)
    else:
        del values["checkpointInterval"]  # 0 turns checkpoints off: no checkpointDir
    if cfg["model"]["warm_start"]:
        values["initialModel"] = cfg["model"]["warm_start"]
    return CollaborativeFilter(userCol=columns.user, itemCol=columns.item, ratingCol=columns.rating, **values)


def exclusions(train: DataFrame, exclude: str) -> DataFrame | str | None:
    """output.exclude as recommendations take it: every training pair, the positives only, or none."""
    return {"labelled": TRAINING, "positives": train.filter(F.col(RATING) == 1.0), "none": None}[exclude]


def checkpoint_dir(cfg: Config) -> str:
    return cfg["checkpoint"]["dir"] or cfg["output"]["path"].rstrip("/") + "_checkpoints"


class Timer:
    """Named wall-clock sections, reported in metrics.json under timings."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - began, 3)


@contextmanager
def failure_is(cls: type[CfsparkError], what: str):
    """An unexpected error in this section becomes cls (its exit code), traceback logged."""
    try:
        yield
    except CfsparkError:
        raise
    except Exception as e:
        log.exception("%s failed", what)
        raise cls(f"{what} failed: {type(e).__name__}: {spark_message(e)}") from e


def _check_output(path: str, overwrite: bool) -> None:
    if is_local(path):
        p = local_path(path)
        if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p)) and not overwrite:
            raise ConfigError(f"output.path {path} already exists; choose another or set output.overwrite = true")


@contextmanager
def _stage_beside(final: str):
    """A fresh <final>.partial-XXXXXXXX folder to write into, removed if the body fails."""
    stage = f"{final}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def staged(path: str, overwrite: bool):
    """Yield a folder to write into; on success it becomes path, on failure it is removed."""
    if not is_local(path):
        yield path
        return
    final = os.path.abspath(local_path(path))
    with _stage_beside(final) as stage:
        yield stage
    if os.path.exists(final):
        if not overwrite:
            shutil.rmtree(stage, ignore_errors=True)
            raise ConfigError(f"output.path {path} appeared while the job ran; results were not written")
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        os.replace(stage, final)


def _check_partitioned_output(path: str) -> None:
    if is_local(path) and os.path.isfile(os.path.join(local_path(path), "metrics.json")):
        raise ConfigError(
            f"output.path {path} holds the results of a run without output.run_date; "
            "date partitions need an output.path of their own"
        )


def write_recommendations(recs: DataFrame, path: str, run_date: str) -> None:
    """The recommendations table; with run_date, only that date's partition is replaced."""
    if not run_date:
        recs.write.mode("overwrite").parquet(path)
        return
    dated = recs.withColumn(RUN_DATE, F.lit(run_date))
    dated.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(RUN_DATE).parquet(path)


@contextmanager
def staged_partition(path: str, part: str):
    """Yield a folder to write one date's tables into (<table>/run_date=<date>/); on success
    each replaces the same partition under path, leaving every other date as it was.

    Other schemes are written in place, where Spark's dynamic partition overwrite
    replaces the date's recommendations.
    """
    if not is_local(path):
        yield path
        return
    final = os.path.abspath(local_path(path))
    with _stage_beside(final) as stage:
        yield stage
    aside = f"{final}.old-{uuid.uuid4().hex[:8]}"
    for table in sorted(os.listdir(stage)):  # metrics, model, recommendations: each complete by now
        new, old = os.path.join(stage, table) + part, os.path.join(final, table) + part
        if not os.path.isdir(new):
            continue
        os.makedirs(os.path.dirname(old), exist_ok=True)
        if os.path.exists(old):
            os.makedirs(os.path.join(aside, table))
            os.replace(old, os.path.join(aside, table) + part)
        os.replace(new, old)
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def check_paths(cfg: Config) -> None:
    """Before anything is read: the paths the job replaces or deletes (output.path, the
    checkpoint dir) must not be, hold or sit in the input or each other, and must be writable."""
    out = cfg["output"]["path"]
    inp = cfg["input"]["path"] or default_ratings_path()
    check_disjoint("output.path", out, "input.path", inp)
    check_writable("output.path", out)
    if cfg["checkpoint"]["interval"] > 0:
        ck = checkpoint_dir(cfg)
        check_disjoint("checkpoint.dir", ck, "input.path", inp)
        check_disjoint("checkpoint.dir", ck, "output.path", out)
        check_writable("checkpoint.dir", ck)


def run(spark: SparkSession, cfg: Config) -> dict:
    """Run the whole job, holding output.path's lock; return the metrics written to metrics.json."""
    check_paths(cfg)
    locked = [("output.path", cfg["output"]["path"])]
    if cfg["checkpoint"]["dir"] and cfg["checkpoint"]["interval"] > 0:
        locked.append(("checkpoint.dir", cfg["checkpoint"]["dir"]))
    with RunLock(locked):
        remove_stale_staging(cfg["output"]["path"])
        return _run_locked(spark, cfg)


def _run_locked(spark: SparkSession, cfg: Config) -> dict:
    out_path, overwrite = cfg["output"]["path"], cfg["output"]["overwrite"]
    if cfg["output"]["run_date"]:
        _check_partitioned_output(out_path)
    else:
        _check_output(out_path, overwrite)
    timer = Timer()
    with timer("read_validate"):
        ratings, cols = load_ratings(spark, cfg)
    with timer("split"):
        train, test = split_for_training(ratings, cfg)
        counts = {"ratings": ratings.count(), "train": train.count(), "test": test.count()}
    if counts["train"] == 0:
        raise InputError(f"the split left no training ratings out of {counts['ratings']}; lower split.test_fraction")

    estimator = estimator_from_config(cfg, cols)
    with timer("fit"), failure_is(TrainingError, "training"):
        model = estimator.fit_validated(train)
    counts["users"] = model.user_factors.count()
    counts["items"] = model.item_factors.count()
    top_n = cfg["output"]["top_n"]
    recs = model.recommend_canonical(top_n, exclude=exclusions(train, cfg["output"]["exclude"])).cache()
    relevant = relevant_pairs(
        test, model.user_factors, loss=model.getLoss(), threshold=cfg["eval"]["relevance_threshold"]
    ).cache()
    with timer("evaluate"), failure_is(TrainingError, "evaluation"):
        metrics = {
            "loss": cfg["model"]["loss"],
            "train": pointwise_metrics(model, train),
            "test": {**pointwise_metrics(model, test), **ranking_metrics(recs, relevant, k=top_n)},
            "iterations": model.history,
            "counts": counts,
            "model": fitted_summary(model),
        }
    if cfg["compare"]["als"]:
        with timer("als"), failure_is(TrainingError, "the ALS comparison"):
            c = cfg["compare"]
            metrics["als"] = compare_als(
                train, test, model.item_stats, loss=model.getLoss(), rank=cfg["model"]["rank"],
                reg_grid=c["als_reg_grid"], max_iter=c["als_max_iter"], seed=cfg["model"]["seed"],
                relevant=relevant, k=top_n, alpha_grid=c["als_alpha_grid"], clip_eps=c["als_clip_eps"],
            )  # fmt: skip

    metadata = {
        "config": cfg,
        "fitted": fitted_summary(model),
        "counts": counts,
        "cfspark_version": _version(),
        "spark_version": spark.version,
        "pyspark_version": pyspark.__version__,
    }
    run_date = cfg["output"]["run_date"]
    part = f"/{RUN_DATE}={run_date}" if run_date else ""
    staging = staged_partition(out_path, part) if run_date else staged(out_path, overwrite)
    with failure_is(OutputError, "writing the results"), staging as stage:
        with timer("recommend_write"):
            named = recs.withColumnRenamed(USER, cols.user).withColumnRenamed(ITEM, cols.item)
            write_recommendations(named, f"{stage}/recommendations", run_date)
        with timer("model_write"):
            model.write().metadata(metadata).save(f"{stage}/model{part}")
        metrics["timings"] = timer.seconds
        if is_local(stage):
            folder = os.path.join(local_path(stage), f"metrics{part}") if run_date else local_path(stage)
            os.makedirs(folder, exist_ok=True)
            write_json(os.path.join(folder, "metrics.json"), {**metrics, **({RUN_DATE: run_date} if run_date else {})})
    ckpt = estimator.getCheckpointDir()
    if not cfg["checkpoint"]["keep"] and ckpt and is_local(ckpt):
        shutil.rmtree(local_path(ckpt), ignore_errors=True)
    model.unpersist()
    for df in (ratings, train, test, recs, relevant):
        df.unpersist()
    return metrics


def fitted_summary(model) -> dict:
    """What the fit decided by itself: λ (and, for reg = "auto", the path that chose it) and why it stopped."""
    return {k: model.summary.get(k) for k in ("reg", "reg_path", "stop_reason")}


def summary(metrics: dict, out_path: str) -> str:
    """A few lines for the console."""
    c, t = metrics["counts"], metrics["test"]
    k = t.get("k")
    ranking = f"P@{k} {_fmt(t.get('precision_at_k'))}  NDCG@{k} {_fmt(t.get('ndcg_at_k'))}"
    pointwise = ("rmse", "mae") if metrics["loss"] == "mse" else ("logloss", "auc")
    lines = [
        f"cfspark ({metrics['loss']}): {c['ratings']} rows ({c['train']} train, {c['test']} test), {c['users']} users, "
        f"{c['items']} items, {len(metrics['iterations'])} iterations, λ = {metrics['model']['reg']:g}",
        "  test " + "  ".join(f"{m} {_fmt(t[m])}" for m in pointwise) + "  " + ranking,
    ]
    als = metrics.get("als", {})
    for name, run in [("Spark ALS", als)] if "params" in als else [(f"Spark ALS {n}", r) for n, r in als.items()]:
        a = run["test"]
        lines.append(
            f"  {name}: test "
            + "  ".join(f"{m} {_fmt(a.get(m))}" for m in pointwise)
            + f"  P@{k} {_fmt(a.get('precision_at_k'))}  NDCG@{k} {_fmt(a.get('ndcg_at_k'))}"
            + f"  (fit {run['fit_seconds']:.1f} s)"
        )
    lines.append(f"  fit {metrics['timings']['fit']:.1f} s; results in {out_path}")
    if metrics["loss"] == "mse" and "params" in als and t["rmse"] and als["test"]["rmse"]:
        ours, theirs = t["rmse"], als["test"]["rmse"]
        verdict = "cfspark wins" if ours <= theirs else "Spark ALS wins"
        lines.append(
            f"  {verdict} on test RMSE: {ours:.4f} against {theirs:.4f} ({ours / theirs:.3f} ×), ALS's best of "
            f"regParam {als['params']['regParam']:g} over {len(als['grid'])} tried on the test split"
        )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _version() -> str:
    from cfspark import __version__

    return __version__


__all__ = ["run", "summary"]
