"""Plans whose shuffle runs inside the job that reads it, not in a Spark job of its own; and
unions whose inputs run as tasks of their own.

With adaptive query execution on (Spark's default), every shuffle of a query is first
materialised by a job of its own, so that Spark can re-plan what reads it; a half-step
(state and messages shuffled to their blocks, then solved) is then two jobs, and each
job costs a fixed round trip on the driver whatever its size. The engine's own shuffles
need none of that re-planning: their partition counts are the block counts, chosen
before. So the queries that plan them are planned with adaptive execution off, and the
session's own setting is put back afterwards, also when the query fails. The setting is
read when a query is planned (in a localCheckpoint or an action), so it works over
Spark Connect too, where the server plans.

A union of one-partition inputs is one task under Spark's default (the inputs' shared
partitioning kept), where a job that runs independent work side by side wants a task per
input: separate_unions plans it with the inputs' partitions one after the other.

Arrow batches sent to Python are bounded by rows and, by default, by bytes, which the JVM
checks by measuring its batch after every row it adds. For ratings, a few numbers a row,
that check costs more than writing the row, and their batches of maxRecordsPerBatch rows
are a few hundred kB: narrow_rows runs the jobs that send them with the rows' bound alone.
Unlike the settings above, this one is read when a job runs, so the block holds the action.

A cached table's columns are encoded by default, after statistics gathered row by row. A
table of ratings (ids of many values, doubles) gains nothing from it, and cache_plain
caches it as it is.

Every pass of a fit runs a task per partition of its input, each with a fixed cost in the
JVM and in Python. A DataFrame made from pandas comes in one partition per Arrow batch of
10,000 rows: 525 partitions for 5.25M ratings, whose passes took 4 times as long as the
same ratings read from Parquet. fewer_partitions coalesces such an input to one partition
per PARTITION_RATINGS ratings (never fewer than MIN_PARTITIONS), without a shuffle.

An aggregation is by default two: a partial one before its shuffle and the final one after.
Where groups hardly repeat (a table's (user, item) pairs), the partial one builds a hash
table of every row and reduces nothing: unreduced_groups plans it as one aggregation after
the shuffle (a setting of Spark 4.3; earlier versions ignore it and plan both).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession

ADAPTIVE = "spark.sql.adaptive.enabled"
# With it on (the default), a union of inputs with the same partitioning (one partition
# each, say) has that partitioning: its partition i is every input's partition i, one task.
UNION_PARTITIONING = "spark.sql.unionOutputPartitioning"
ARROW_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"
ARROW_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
CACHE_COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"
AUTO_BUCKETED_SCAN = "spark.sql.sources.bucketing.autoBucketedScan.enabled"
BYPASS_PARTIAL = "spark.sql.execution.bypassPartialAggregation"
NO_BYTE_LIMIT = str(2**31 - 1)  # Spark's value for no byte limit: the JVM then never measures a batch


# A setting is the session's, while blocks may overlap (threads of one fit, or one block
# inside another): the first to enter saves the session's value, the last to leave restores it.
_lock = threading.Lock()
_open: dict[tuple[int, str], list] = {}  # (id(session), key) → [blocks open, the value saved]


@contextmanager
def planned_with(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Plan the queries started inside the block under settings. Each one's value in the
    session (or its absence) is restored on the way out, also when a query fails, once every
    overlapping block that set it has left; overlapping blocks set a key to one value (each
    caller here always sets its key the same way)."""
    entries = []
    with _lock:
        for key, value in settings.items():
            entry = _open.setdefault((id(spark), key), [0, None])
            if entry[0] == 0:
                entry[1] = spark.conf.get(key, None)
                spark.conf.set(key, value)
            entry[0] += 1
            entries.append((key, entry))
    try:
        yield
    finally:
        with _lock:
            for key, entry in entries:
                entry[0] -= 1
                if entry[0]:
                    continue
                del _open[(id(spark), key)]
                if entry[1] is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, entry[1])


@contextmanager
def one_job(spark: SparkSession) -> Iterator[None]:
    """Plan the queries started inside the block without adaptive execution's map-stage jobs."""
    with planned_with(spark, {ADAPTIVE: "false"}):
        yield


@contextmanager
def separate_unions(spark: SparkSession) -> Iterator[None]:
    """Plan the queries started inside the block with each union's partitions those of its
    inputs one after the other, so that inputs of one partition each are tasks of their own."""
    with planned_with(spark, {UNION_PARTITIONING: "false"}):
        yield


@contextmanager
def narrow_rows(spark: SparkSession) -> Iterator[None]:
    """Run the jobs started inside the block with their Arrow batches to Python bounded by
    rows alone: for inputs of narrow rows (ratings), whose batches stay small at the row
    bound, and whose crossing the per-row byte check slows by more than half (27.6M ratings:
    10.1 s with it, 3.6 s without, on 2 cores). With no row bound set (≤ 0), the byte
    limit is the only bound, and stays. The setting is the session's: a job that another
    thread starts on the same session meanwhile (a parallel CrossValidator's other fit) runs
    under it too, its batches then bounded by rows alone."""
    if int(spark.conf.get(ARROW_ROWS, "10000")) <= 0:
        yield
        return
    with planned_with(spark, {ARROW_BYTES: NO_BYTE_LIMIT}):
        yield


@contextmanager
def unreduced_groups(spark: SparkSession) -> Iterator[None]:
    """Plan the queries started inside the block with each aggregation after its shuffle
    alone, for groups that hardly repeat: checking 27.6M distinct (user, item) pairs for
    repeats takes 11.8 s instead of 20.2 s on 2 cores (15.5 instead of 32.1 s cold)."""
    with planned_with(spark, {BYPASS_PARTIAL: "true"}):
        yield


def cache_plain(df: DataFrame) -> DataFrame:
    """df.cache() with its columns stored unencoded: for tables of ratings, where the
    encodings find little to shrink (27.6M ratings: 619 MiB either way) and gathering their
    statistics makes filling the cache 2–3 × slower (2.9–5.7 s against 9.0–12.6 s, on 2 cores).

    The setting is read when the cache is first filled, from the session the cached plan
    keeps. cache() gives that plan a copy of the session's settings taken then whenever
    automatic bucketed scans are on (it copies the session to turn them off), and else the
    live session, so they are turned on for the call."""
    with planned_with(df.sparkSession, {CACHE_COMPRESSED: "false", AUTO_BUCKETED_SCAN: "true"}):
        return df.cache()


# Ratings per partition below which an input is coalesced, and the fewest partitions it is
# coalesced to: a Python task's fixed cost is tens of milliseconds, a pass over 250,000
# ratings about as long, and Spark's own file partitions hold millions.
PARTITION_RATINGS = 250_000
MIN_PARTITIONS = 8


def fewer_partitions(df: DataFrame, rows: int, partitions: int) -> DataFrame:
    """df (rows rows in partitions partitions), coalesced to max(MIN_PARTITIONS,
    ⌈rows / PARTITION_RATINGS⌉) partitions if it has more; else df itself."""
    wanted = max(MIN_PARTITIONS, math.ceil(rows / PARTITION_RATINGS))
    return df.coalesce(wanted) if partitions > wanted else df


def bounded_partitions(df: DataFrame) -> DataFrame:
    """df coalesced to at most max(MIN_PARTITIONS, spark.sql.shuffle.partitions) partitions,
    before its first pass, whose row count is not known yet. A frame made from pandas holds a
    partition per Arrow batch of 10,000 rows: over 4.2M such rows, cached, a validating pass
    took 1.3–2.4 s in 525 tasks and 0.4–0.7 s in 16. The session's shuffle partitions are
    the tasks it gives any stage it plans itself, so the bound keeps the parallelism it asks
    for. The library's way in (validate_given) applies it: the job sets few shuffle partitions
    for its own exchanges, and reads files, which Spark splits by bytes, not by rows."""
    try:
        wanted = int(df.sparkSession.conf.get("spark.sql.shuffle.partitions") or 0)
    except ValueError:  # a value this Spark does not plan by ("auto" on some platforms)
        return df
    return df.coalesce(max(MIN_PARTITIONS, wanted))
