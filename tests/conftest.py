"""One local SparkSession for the whole run, and data the tests make themselves."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("cfspark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.log.level", "ERROR")
        .config("spark.driver.memory", "2g")
        # Spark ALS cuts its lineage only with an RDD checkpoint dir; without one, its
        # long fits have overflowed the JVM stack while serialising tasks.
        .config("spark.checkpoint.dir", str(tmp_path_factory.mktemp("rdd-checkpoints")))
        .getOrCreate()
    )
    yield session
    session.stop()
