"""Where a job's results go: the checks before a run, staging, and date partitions.

Everything is written into a staging folder beside output.path and moved into place
only once complete, so a failed run leaves no partial output and never touches an
existing result (local paths; other schemes are written in place).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.app.config import Config
from cfspark.app.guard import check_disjoint, check_writable
from cfspark.core.errors import ConfigError
from cfspark.core.fs import is_local, local_path
from cfspark.core.schema import RUN_DATE
from cfspark.data.read import default_ratings_path


def checkpoint_dir(cfg: Config) -> str:
    return cfg["checkpoint"]["dir"] or cfg["output"]["path"].rstrip("/") + "_checkpoints"


def _check_output(path: str, overwrite: bool) -> None:
    if is_local(path):
        p = local_path(path)
        if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p)) and not overwrite:
            raise ConfigError(f"output.path {path} already exists; choose another or set output.overwrite = true")


@contextmanager
def _staging(path: str):
    """(a folder to write into, the final local path): a fresh <final>.partial-XXXXXXXX
    folder, removed if the body fails. Other schemes: (path, None), written in place."""
    if not is_local(path):
        yield path, None
        return
    final = os.path.abspath(local_path(path))
    stage = f"{final}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield stage, final
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def staged(path: str, overwrite: bool):
    """Yield a folder to write into; on success it becomes path, on failure it is removed."""
    with _staging(path) as (stage, final):
        yield stage
    if final is None:
        return
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
    with _staging(path) as (stage, final):
        yield stage
    if final is None:
        return
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


def check_output(cfg: Config) -> None:
    """Before anything is read: output.path may be written as configured (a fresh folder,
    overwrite = true, or an output of date partitions)."""
    out_path = cfg["output"]["path"]
    if cfg["output"]["run_date"]:
        _check_partitioned_output(out_path)
    else:
        _check_output(out_path, cfg["output"]["overwrite"])
