"""Factor checkpoints: cut lineage every N iterations and let a stopped run resume.

A checkpoint is the two half-step output tables (state and messages) written as
Parquet, plus latest.json written last, so a checkpoint without it never counts.
The fingerprint ties a checkpoint to the data and the config that shape the model;
a run whose fingerprint differs starts afresh and never reuses stale factors. The folder
carries cfspark's marker (cfspark.core.ownership): an existing folder without it is the
user's, and checkpoints then go to a subfolder of cfspark's own inside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.core.fs import finite_json, is_local, local_path
from cfspark.core.ownership import checkpoint_folder, make_owned, remove_owned
from cfspark.data.read import spark_message

log = logging.getLogger("cfspark")

MARKER = "latest.json"


@dataclass
class Resumed:
    iteration: int
    user_out: DataFrame
    item_out: DataFrame
    history: list[dict]


class Checkpointer:
    """Writes and finds the latest checkpoint under one directory."""

    def __init__(self, spark: SparkSession, directory: str, interval: int, fingerprint: str):
        # An existing folder that cfspark did not make is used through a subfolder of its own.
        self.spark, self.directory, self.interval, self.fingerprint = (
            spark,
            checkpoint_folder(directory.rstrip("/")),
            interval,
            fingerprint,
        )

    def due(self, iteration: int) -> bool:
        return self.interval > 0 and iteration % self.interval == 0

    def _marker(self) -> str:
        return os.path.join(local_path(self.directory), MARKER)

    def save(
        self, iteration: int, user_out: DataFrame, item_out: DataFrame, history: list[dict], blocks: tuple[int, int]
    ) -> Resumed:
        """Write the state tables, then the marker; blocks, the (user, item) block counts the
        fit's setup was asked for, which with the fingerprint lay out its state rows."""
        name = f"iter-{iteration:06d}"
        path = f"{self.directory}/{name}"
        if is_local(self.directory):
            make_owned(local_path(self.directory))  # the marker first: a folder cfspark made
        user_out.write.mode("overwrite").parquet(f"{path}/users")
        item_out.write.mode("overwrite").parquet(f"{path}/items")
        if is_local(self.directory):
            # path relative to the checkpoint dir, so a rerun from another working directory finds it;
            # files: every file's size, so a truncated or missing file is caught before it is read.
            marker = {"iteration": iteration, "fingerprint": self.fingerprint, "path": name, "blocks": list(blocks),
                      "files": _file_sizes(local_path(path)), "history": finite_json(history)}  # fmt: skip
            tmp = self._marker() + ".tmp"
            with open(tmp, "w") as f:
                json.dump(marker, f, allow_nan=False)
            os.replace(tmp, self._marker())
            self._drop_older(iteration)
        return self._read(iteration, path, history)

    def _read(self, iteration: int, path: str, history: list[dict]) -> Resumed:
        users = self.spark.read.parquet(f"{path}/users")
        items = self.spark.read.parquet(f"{path}/items")
        return Resumed(iteration, users, items, list(history))

    def _drop_older(self, iteration: int) -> None:
        root = local_path(self.directory)
        for name in os.listdir(root):
            if name.startswith("iter-") and name != f"iter-{iteration:06d}":
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def load(self, blocks: tuple[int, int]) -> Resumed | None:
        """The latest checkpoint of this fingerprint and these requested (user, item) block
        counts (save's blocks), or None.

        A checkpoint that cannot be used (latest.json unreadable, its folder or a file gone
        or truncated, a table that does not decode, state rows of other block counts) is
        skipped with a warning: the run then starts afresh and its own checkpoints replace
        it. It is never half loaded.
        """
        if not is_local(self.directory) or not os.path.isfile(self._marker()):
            return None
        try:
            with open(self._marker()) as f:
                marker = json.load(f)
            fingerprint, iteration, history = marker["fingerprint"], int(marker["iteration"]), marker["history"]
            path = marker["path"]
        except (OSError, ValueError, TypeError, KeyError) as e:
            return self._skip(f"{self._marker()} cannot be read ({type(e).__name__}: {e})")
        if fingerprint != self.fingerprint:
            return None
        written = tuple(marker.get("blocks", ()))
        if written != tuple(blocks):  # a marker without them is an earlier cfspark's, of blocks it chose otherwise
            # Joined, not indexed: a damaged marker's counts are skipped like any other, never a crash.
            why = (f"its state is laid out for {' + '.join(map(str, written))} blocks asked for" if written
                   else "it does not say which blocks its state is laid out for")  # fmt: skip
            asked = f"this fit asks for {blocks[0]} + {blocks[1]}"
            return self._skip(f"the checkpoint at iteration {iteration}: {why}, {asked}")
        if "://" not in path and not os.path.isabs(path):
            path = f"{self.directory}/{path}"
        problem = _missing_or_truncated(local_path(path), marker.get("files"))
        if problem:
            return self._skip(f"the checkpoint at iteration {iteration} in {path}: {problem}")
        try:
            resumed = self._read(iteration, path, history)
            for df in (resumed.user_out, resumed.item_out):  # decode every column of every row once
                df.agg(F.sum(F.hash(*df.columns))).collect()
        except Exception as e:
            return self._skip(f"the checkpoint at iteration {iteration} in {path} cannot be read ({spark_message(e)})")
        return resumed

    def _skip(self, why: str) -> None:
        log.warning("ignoring %s; training starts afresh", why)
        return None

    def remove(self) -> None:
        if is_local(self.directory):
            remove_owned(local_path(self.directory), "checkpoints no longer needed")


def checkpointed_blocks(directory: str) -> tuple[int, int] | None:
    """The requested (user, item) block counts of the latest checkpoint under a configured
    checkpoint directory, whatever its fingerprint; None if it has none that says. A fit whose
    block counts are left to the data asks for them, so that a rerun resumes its checkpoint on
    a cluster of another size (blocks_for sizes blocks to the task slots)."""
    folder = checkpoint_folder(directory.rstrip("/"))
    if not is_local(folder):
        return None
    try:
        with open(os.path.join(local_path(folder), MARKER)) as f:
            users, items = json.load(f)["blocks"]
        return int(users), int(items)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _file_sizes(folder: str) -> dict[str, int]:
    """Every file under folder (relative path → bytes)."""
    sizes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, folder)] = os.path.getsize(full)
    return sizes


def _missing_or_truncated(folder: str, expected: dict[str, int] | None) -> str:
    """What is wrong with the files of a checkpoint folder, or "" if nothing is."""
    if not os.path.isdir(folder):
        return "its folder is missing"
    if expected is None:  # a marker without file sizes: the read check alone decides
        return ""
    found = _file_sizes(folder)
    for name, size in sorted(expected.items()):
        if name not in found:
            return f"{name} is missing"
        if found[name] != size:
            return f"{name} has {found[name]} bytes, {size} were written"
    return ""
