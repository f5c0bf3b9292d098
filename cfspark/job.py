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
from pyspark.sql import SparkSession

from cfspark.compare import compare_als
from cfspark.config import Config
from cfspark.data.read import read_ratings
from cfspark.data.split import split_ratings
from cfspark.data.validate import ITEM, USER, validate_ratings
from cfspark.errors import ConfigError, InputError
from cfspark.estimator import CollaborativeFilter
from cfspark.evaluate import regression_metrics
from cfspark.fs import is_local, local_path, write_json

log = logging.getLogger("cfspark")


def estimator_from_config(cfg: Config, columns) -> CollaborativeFilter:
    m, ck = cfg["model"], cfg["checkpoint"]
    return CollaborativeFilter(
        rank=m["rank"],
        maxIter=m["max_iter"],
        regParam=m["reg"],
        loss=m["loss"],
        optimizer=m["optimizer"],
        learningRate=m["learning_rate"],
        innerSteps=m["inner_steps"],
        numUserBlocks=m["num_user_blocks"],
        numItemBlocks=m["num_item_blocks"],
        seed=m["seed"],
        initScale=m["init_scale"],
        checkpointDir=checkpoint_dir(cfg) if ck["interval"] > 0 else "",
        checkpointInterval=ck["interval"],
        userCol=columns.user,
        itemCol=columns.item,
        ratingCol=columns.rating,
    )


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


def _check_output(path: str, overwrite: bool) -> None:
    if is_local(path):
        p = local_path(path)
        if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p)) and not overwrite:
            raise ConfigError(f"output.path {path} already exists; choose another or set output.overwrite = true")


@contextmanager
def staged(path: str, overwrite: bool):
    """Yield a folder to write into; on success it becomes path, on failure it is removed."""
    if not is_local(path):
        yield path
        return
    final = os.path.abspath(local_path(path))
    stage = f"{final}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
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


def run(spark: SparkSession, cfg: Config) -> dict:
    """Run the whole job; return the metrics written to metrics.json."""
    out_path, overwrite = cfg["output"]["path"], cfg["output"]["overwrite"]
    _check_output(out_path, overwrite)
    timer = Timer()
    with timer("read_validate"):
        raw, cols = read_ratings(spark, cfg["input"])
        ratings = validate_ratings(
            raw, cols, id_type=cfg["input"]["id_type"], duplicates=cfg["input"]["duplicates"]
        ).cache()
    with timer("split"):
        train, test = split_ratings(ratings, test_fraction=cfg["split"]["test_fraction"], seed=cfg["split"]["seed"])
        train, test = train.cache(), test.cache()
        counts = {"ratings": ratings.count(), "train": train.count(), "test": test.count()}
    if counts["train"] == 0:
        raise InputError(f"the split left no training ratings out of {counts['ratings']}; lower split.test_fraction")

    estimator = estimator_from_config(cfg, cols)
    with timer("fit"):
        model = estimator.fit_validated(train)
    counts["users"] = model.user_factors.count()
    counts["items"] = model.item_factors.count()
    with timer("evaluate"):
        metrics = {
            "loss": cfg["model"]["loss"],
            "train": regression_metrics(model.predict_canonical(train)),
            "test": regression_metrics(model.predict_canonical(test)),
            "iterations": model.history,
            "counts": counts,
        }
    if cfg["compare"]["als"]:
        with timer("als"):
            metrics["als"] = compare_als(
                train,
                test,
                model.blocks,
                model.item_means,
                model.global_mean,
                rank=cfg["model"]["rank"],
                reg_grid=cfg["compare"]["als_reg_grid"],
                max_iter=cfg["compare"]["als_max_iter"],
                seed=cfg["model"]["seed"],
            )

    metadata = {
        "config": cfg,
        "counts": counts,
        "cfspark_version": _version(),
        "spark_version": spark.version,
        "pyspark_version": pyspark.__version__,
    }
    with staged(out_path, overwrite) as stage:
        with timer("recommend_write"):
            recs = model.recommend_canonical(cfg["output"]["top_n"])
            recs.withColumnRenamed(USER, cols.user).withColumnRenamed(ITEM, cols.item).write.mode("overwrite").parquet(
                f"{stage}/recommendations"
            )
        with timer("model_write"):
            model.save(f"{stage}/model", metadata)
        metrics["timings"] = timer.seconds
        if is_local(stage):
            write_json(os.path.join(local_path(stage), "metrics.json"), metrics)
    if not cfg["checkpoint"]["keep"] and estimator.checkpointDir and is_local(estimator.checkpointDir):
        shutil.rmtree(local_path(estimator.checkpointDir), ignore_errors=True)
    model.unpersist()
    for df in (ratings, train, test):
        df.unpersist()
    return metrics


def summary(metrics: dict, out_path: str) -> str:
    """A few lines for the console."""
    c, t = metrics["counts"], metrics["test"]
    lines = [
        f"cfspark: {c['ratings']} ratings ({c['train']} train, {c['test']} test), {c['users']} users, "
        f"{c['items']} items, {len(metrics['iterations'])} iterations",
        f"  train rmse {_fmt(metrics['train']['rmse'])}  test rmse {_fmt(t['rmse'])}  test mae {_fmt(t['mae'])}",
    ]
    if "als" in metrics:
        a = metrics["als"]
        lines.append(
            f"  Spark ALS (regParam {a['params']['regParam']}): test rmse {_fmt(a['test']['rmse'])}  "
            f"test mae {_fmt(a['test']['mae'])}"
        )
    lines.append(f"  fit {metrics['timings']['fit']:.1f} s; results in {out_path}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _version() -> str:
    from cfspark import __version__

    return __version__


__all__ = ["run", "summary"]
