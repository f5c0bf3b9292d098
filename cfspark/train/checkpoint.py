"""Factor checkpoints: cut lineage every N iterations and let a stopped run resume.

A checkpoint is the two half-step output tables (state and messages) written as
Parquet, plus latest.json written last, so a checkpoint without it never counts.
The fingerprint ties a checkpoint to the data and the config that shape the model;
a run whose fingerprint differs starts afresh and never reuses stale factors.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from cfspark.fs import is_local, local_path

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
        self.spark, self.directory, self.interval, self.fingerprint = (
            spark,
            directory.rstrip("/"),
            interval,
            fingerprint,
        )

    def due(self, iteration: int) -> bool:
        return self.interval > 0 and iteration % self.interval == 0

    def _marker(self) -> str:
        return os.path.join(local_path(self.directory), MARKER)

    def save(self, iteration: int, user_out: DataFrame, item_out: DataFrame, history: list[dict]) -> Resumed:
        path = f"{self.directory}/iter-{iteration:06d}"
        user_out.write.mode("overwrite").parquet(f"{path}/users")
        item_out.write.mode("overwrite").parquet(f"{path}/items")
        if is_local(self.directory):
            marker = {"iteration": iteration, "fingerprint": self.fingerprint, "path": path, "history": history}
            tmp = self._marker() + ".tmp"
            with open(tmp, "w") as f:
                json.dump(marker, f)
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

    def load(self) -> Resumed | None:
        """The latest checkpoint of this fingerprint, or None."""
        if not is_local(self.directory) or not os.path.isfile(self._marker()):
            return None
        with open(self._marker()) as f:
            marker = json.load(f)
        if marker.get("fingerprint") != self.fingerprint:
            return None
        return self._read(marker["iteration"], marker["path"], marker["history"])

    def remove(self) -> None:
        if is_local(self.directory):
            shutil.rmtree(local_path(self.directory), ignore_errors=True)
