"""Job tags by phase of a fit (prepare, index, pack, init, user-steps, item-steps).

A leaf module: setup, the trainer and the estimator tag their Spark jobs with it, and
cfspark.profile reads the tags back, so the lower layers never import the profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

TAG_PREFIX = "cfspark-"
PHASES = ("prepare", "index", "pack", "init", "user-steps", "item-steps")
SETUP = PHASES[:4]


@contextmanager
def phase(spark: SparkSession, name: str) -> Iterator[None]:
    """Tag every Spark job started inside the block with the phase's name."""
    tag = TAG_PREFIX + name
    spark.addTag(tag)
    try:
        yield
    finally:
        spark.removeTag(tag)
