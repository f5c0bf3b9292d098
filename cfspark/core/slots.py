"""How many tasks the cluster runs at once, read through the DataFrame API.

The blockwise fit sizes its blocks to the task slots (fit/blockwise.py's blocks_for): a
half-step runs one task per block, so a block count that is a multiple of the slots fills
every wave of its tasks. Spark Connect gives no SparkContext to ask, but a range with no
partition count is split into Spark's default parallelism (the cores of the executors that
are up; local[n]'s n), so one tiny job over it reads the same number on either client.
"""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def task_slots(spark: SparkSession) -> int:
    """Spark's default parallelism: the tasks this session's cluster runs at once (one small job)."""
    # More rows than any cluster has cores, so that every split holds one and the largest id is its last.
    parts = spark.range(0, 1 << 20).select(F.spark_partition_id().alias("part"))
    last = parts.agg(F.max("part")).first()[0]  # projected first: an aggregate takes no nondeterministic argument
    return int(last) + 1
