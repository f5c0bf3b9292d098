"""Where a job's results go: the checks before a run, staging, and date partitions.

Everything is written into a staging folder beside output.path and moved into place
only once complete, so a failed run leaves no partial output and never touches an
existing result (local paths; other schemes are written in place). Every folder made here
carries cfspark's marker, and only such folders are replaced or removed
(cfspark.core.ownership).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.app.config import Config
from cfspark.app.guard import check_disjoint, check_writable, refuse_glob
from cfspark.core.errors import ConfigError
from cfspark.core.fs import is_local, local_path, normalise
from cfspark.core.ownership import (
    checkpoint_folder,
    is_empty_folder,
    is_owned,
    make_owned,
    mark,
    owned_or_refuse,
    remove_owned,
)
from cfspark.core.schema import RUN_DATE
from cfspark.data.read import default_ratings_path


def checkpoint_base(cfg: Config) -> str:
    """The checkpoint directory as configured: checkpoint.dir, or <output.path>_checkpoints."""
    return cfg["checkpoint"]["dir"] or cfg["output"]["path"].rstrip("/") + "_checkpoints"


def checkpoint_dir(cfg: Config) -> str:
    """Where the checkpoints go: the configured directory, or a subfolder of cfspark's own
    inside it when it is an existing folder that cfspark did not make."""
    return checkpoint_folder(checkpoint_base(cfg))


def remove_checkpoints(cfg: Config) -> None:
    """After success, unless checkpoint.keep: the checkpoint folder, only if cfspark made it."""
    if cfg["checkpoint"]["interval"] > 0 and not cfg["checkpoint"]["keep"]:
        ckpt = checkpoint_dir(cfg)
        if is_local(ckpt):
            remove_owned(local_path(ckpt), "the checkpoints of a run that succeeded")


def _holds_dates(folder: str) -> bool:
    """folder holds a table of date partitions: <table>/run_date=<date>/."""
    for table in os.listdir(folder):
        sub = os.path.join(folder, table)
        if os.path.isdir(sub) and any(n.startswith(f"{RUN_DATE}=") for n in os.listdir(sub)):
            return True
    return False


def _check_output(path: str, overwrite: bool, replace_table: bool) -> None:
    if not is_local(path):
        return
    p = local_path(path)
    if not os.path.exists(p) or is_empty_folder(p):
        return
    if not overwrite:
        raise ConfigError(f"output.path {path} already exists; choose another or set output.overwrite = true")
    owned_or_refuse("output.path", p, "output.overwrite = true")
    if os.path.isdir(p) and _holds_dates(p) and not replace_table:
        raise ConfigError(
            f"output.path {path} holds date partitions ({RUN_DATE}=…) and this run has no output.run_date; "
            "set output.run_date, or output.replace_table = true to replace the whole table with one undated result"
        )


@contextmanager
def _staging(path: str):
    """(a folder to write into, the final local path): a fresh <final>.partial-XXXXXXXX
    folder carrying cfspark's marker, removed if the body fails. Other schemes: (path, None),
    written in place."""
    if not is_local(path):
        yield path, None
        return
    final = normalise(path)
    stage = f"{final}.partial-{uuid.uuid4().hex[:8]}"
    make_owned(stage)
    try:
        yield stage, final
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def staged(path: str, overwrite: bool):
    """Yield a folder to write into; on success it becomes path, on failure it is removed.
    An existing path is replaced only if it is empty or carries cfspark's marker."""
    with _staging(path) as (stage, final):
        yield stage
    if final is None:
        return
    if is_empty_folder(final):
        os.rmdir(final)
    if os.path.exists(final):
        if not overwrite or not is_owned(final):
            shutil.rmtree(stage, ignore_errors=True)
            raise ConfigError(f"output.path {path} appeared while the job ran; results were not written")
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(stage, final)
        remove_owned(old, "the output this run replaced")
    else:
        make_owned(os.path.dirname(final))
        os.replace(stage, final)


def _check_partitioned_output(path: str, run_date: str) -> None:
    if not is_local(path):
        return
    p = local_path(path)
    if os.path.isfile(os.path.join(p, "metrics.json")):
        raise ConfigError(
            f"output.path {path} holds the results of a run without output.run_date; "
            "date partitions need an output.path of their own"
        )
    owned_or_refuse("output.path", p, "adding date partitions to it")
    if os.path.isdir(p):
        for table in sorted(os.listdir(p)):
            owned_or_refuse("output.path", os.path.join(p, table, f"{RUN_DATE}={run_date}"), "replacing that date")


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
    An existing partition is replaced only if it carries cfspark's marker.

    Other schemes are written in place, where Spark's dynamic partition overwrite
    replaces the date's recommendations.
    """
    with _staging(path) as (stage, final):
        yield stage
        if final is None:
            return
        tables = [t for t in sorted(os.listdir(stage)) if os.path.isdir(os.path.join(stage, t) + part)]
        for table in tables:  # metrics, model, recommendations: each complete by now
            mark(os.path.join(stage, table) + part)
            owned_or_refuse("output.path", os.path.join(final, table) + part, "replacing that date")
    aside = f"{final}.old-{uuid.uuid4().hex[:8]}"
    if is_empty_folder(final):  # an empty folder is taken over: marked as the table's root
        mark(final)
    make_owned(final)
    for table in tables:
        new, old = os.path.join(stage, table) + part, os.path.join(final, table) + part
        make_owned(os.path.dirname(old))
        if os.path.exists(old):
            make_owned(os.path.join(aside, table))
            os.replace(old, os.path.join(aside, table) + part)
        os.replace(new, old)
    shutil.rmtree(stage, ignore_errors=True)
    remove_owned(aside, "the date partitions this run replaced")


def check_paths(cfg: Config) -> None:
    """Before anything is read: the paths the job replaces or deletes (output.path, the
    checkpoint dir) name one place each, must not be, hold or sit in the input or each
    other, and must be writable."""
    out = cfg["output"]["path"]
    inp = cfg["input"]["path"] or default_ratings_path()
    refuse_glob("output.path", out)
    check_disjoint("output.path", out, "input.path", inp)
    check_writable("output.path", out)
    if cfg["checkpoint"]["interval"] > 0:
        base = checkpoint_base(cfg)  # as configured: a subfolder of cfspark's own below it changes nothing here
        refuse_glob("checkpoint.dir", base)
        check_disjoint("checkpoint.dir", base, "input.path", inp)
        check_disjoint("checkpoint.dir", base, "output.path", out)
        ck = checkpoint_dir(cfg)
        check_writable("checkpoint.dir", ck)
        if is_local(ck):
            owned_or_refuse("checkpoint.dir", local_path(ck), "checkpointing into it")


def check_output(cfg: Config) -> None:
    """Before anything is read: output.path may be written as configured (a fresh or empty
    folder, one of cfspark's with overwrite = true, or a table of date partitions), and
    dated and undated results never mix."""
    out = cfg["output"]
    if out["run_date"]:
        _check_partitioned_output(out["path"], out["run_date"])
    else:
        _check_output(out["path"], out["overwrite"], out["replace_table"])
