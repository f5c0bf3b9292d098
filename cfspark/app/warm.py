"""Python workers started while a job reads its input, so that its fit does not wait for them.

A fit's first Python task waits for a worker: the JVM starts PySpark's daemon, which forks
a worker, which imports pyarrow, pandas, numpy and the fit's modules before the task's body
runs. In the bce train job on MovieLens latest-small ≥ 4 (2 cores), that was 2.6 s from the
fit's tasks' launch to their bodies, about a fifth of the fit, where Spark ALS, the
comparator, runs no Python. Reading and validating the input are JVM jobs of one task each,
which leave a core idle. So the job starts workers then, in a job of its own run from a
second driver thread, whose tasks import what the fit's tasks import. Spark keeps a worker
after its task (spark.python.worker.reuse, on by default) and hands it to a later task,
keeping it for a minute when idle; a worker started later forks from the running daemon and
pays only its own imports. One task is the default: a second takes the core that the
reading's next task is waiting for, since Spark runs the earlier job's tasks first
(docs/benchmarks.md).

The warm-up never changes what a job computes: it reads no data, and a failure in it (a
stopped session, a server with no Python) is logged and ignored.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence

import pyarrow as pa
from pyspark.sql import SparkSession

from cfspark import train

log = logging.getLogger("cfspark")

# How long the run waits for the warm-up before fitting without it.
JOIN_SECONDS = 60.0


def _import_modules(batches: Iterator[pa.RecordBatch], modules: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: import modules into this worker; one row, the worker's process id."""
    for name in modules:
        importlib.import_module(name)
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"pid": [os.getpid()]}, schema=pa.schema([("pid", pa.int64())]))


class WarmWorkers:
    """A job of `tasks` tasks that start Python workers, run from a daemon thread.

    warm = WarmWorkers(spark, tasks=2)
    ...  # JVM work: reading, validating
    warm.wait()  # before the fit: the workers are idle again, so its tasks take them
    """

    def __init__(self, spark: SparkSession, tasks: int) -> None:
        self._thread: threading.Thread | None = None
        self._pids: list[int] | None = None
        if tasks <= 0:
            return
        body = functools.partial(_import_modules, modules=train.WORKER_MODULES)
        job = spark.range(0, tasks, 1, tasks).mapInArrow(body, "pid long")
        self._thread = threading.Thread(target=self._run, args=(job,), name="cfspark-warm-workers", daemon=True)
        self._thread.start()

    def _run(self, job) -> None:
        try:
            self._pids = [row.pid for row in job.collect()]
        except Exception as exc:  # an optimisation only: the fit starts its own workers
            log.info("starting Python workers ahead of the fit failed (%s); the fit starts its own", exc)

    def wait(self, timeout: float = JOIN_SECONDS) -> list[int] | None:
        """Wait (up to timeout seconds) for the warm-up's job to end; at once if there is none.
        The process ids of the workers that ran its tasks, None if it failed, was off or is still running."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
            self._thread = None
        return self._pids
