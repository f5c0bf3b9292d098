"""Plans whose shuffle runs inside the job that reads it, not in a Spark job of its own.

With adaptive query execution on (Spark's default), every shuffle of a query is first
materialised by a job of its own, so that Spark can re-plan what reads it; a half-step
(state and messages shuffled to their blocks, then solved) is then two jobs, and each
job costs a fixed round trip on the driver whatever its size. The engine's own shuffles
need none of that re-planning: their partition counts are the block counts, chosen
before. So the queries that plan them are planned with adaptive execution off, and the
session's own setting is put back afterwards, also when the query fails. The setting is
read when a query is planned (in a localCheckpoint or an action), so it works over
Spark Connect too, where the server plans.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

ADAPTIVE = "spark.sql.adaptive.enabled"

# The setting is the session's, while blocks may overlap (threads of one fit, or one block
# inside another): the first to enter saves the session's value, the last to leave restores it.
_lock = threading.Lock()
_open: dict[int, list] = {}  # id(session) → [blocks open, the value saved]


@contextmanager
def one_job(spark: SparkSession) -> Iterator[None]:
    """Plan the queries started inside the block without adaptive execution's map-stage jobs.

    The session's value of the setting (or its absence) is restored on the way out, once
    every overlapping block on the session has left."""
    with _lock:
        entry = _open.setdefault(id(spark), [0, None])
        if entry[0] == 0:
            entry[1] = spark.conf.get(ADAPTIVE, None)
            spark.conf.set(ADAPTIVE, "false")
        entry[0] += 1
    try:
        yield
    finally:
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _open[id(spark)]
                if entry[1] is None:
                    spark.conf.unset(ADAPTIVE)
                else:
                    spark.conf.set(ADAPTIVE, entry[1])
