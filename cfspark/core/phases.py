"""Job tags by phase of a fit (prepare, index, pack, init, user-steps, item-steps).

A leaf module: setup, the trainer and the estimator tag their Spark jobs with it, and
cfspark.bench.profile reads the tags back, so the lower layers never import the profile.
Each setup phase also logs its seconds to the "cfspark" logger, so a fit's progress
reads the same from a notebook as from the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

TAG_PREFIX = "cfspark-"
PHASES = ("prepare", "index", "pack", "init", "user-steps", "item-steps", "one-task")
SETUP = PHASES[:4]
log = logging.getLogger("cfspark")


@contextmanager
def phase(spark: SparkSession, name: str) -> Iterator[None]:
    """Tag every Spark job started inside the block with the phase's name."""
    tag = TAG_PREFIX + name
    spark.addTag(tag)
    began = time.perf_counter()
    try:
        yield
    finally:
        spark.removeTag(tag)
    if name in SETUP:
        log.info("setup: %s took %.2f s", name, time.perf_counter() - began)
