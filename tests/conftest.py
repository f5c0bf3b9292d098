"""One local SparkSession per test process (pyproject.toml runs two, each given whole
files), and data the tests make themselves."""

from __future__ import annotations

import os
import sys

import pytest
from tests_support import C1_ONLY


def pytest_collection_modifyitems(config, items):
    """The heaviest files first. pytest-xdist (--dist loadfile) hands a whole file to the
    process that asks next, in this order (pyproject.toml turns off its own, by test count).
    Files whose every test is slow or cluster start a cluster, a Connect server or the
    benchmark's fits and hold few tests: ordered by count they came last, where one process
    ran the last of them while the other had nothing left. First, they end beside the other
    process's short files. Each file's tests keep their order."""
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def heavy(tests: list) -> bool:
        return all(t.get_closest_marker("slow") or t.get_closest_marker("cluster") for t in tests)

    order = sorted(by_file, key=lambda f: (not heavy(by_file[f]), -len(by_file[f]), f))
    items[:] = [item for f in order for item in by_file[f]]


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
        # In local mode the driver's heap also holds every cached block, so its old generation
        # stays full, and G1 (Java's default collector) kept marking it concurrently, about one
        # cycle every 2 s, on one of the machine's 2 cores. The parallel collector marks only
        # in its pauses, and the larger heap needs fewer of them: test_training.py and
        # test_setup.py took 222 s against 250 s (one run each, a quiet machine).
        .config("spark.driver.memory", "4g")
        # C1 only (tests_support.C1_ONLY says why): tests/test_bad_input.py took 122 s against
        # 204 s and 195 s, the long fits (test_benchmark.py with test_training.py) 277 s against
        # 310 s (6 Dec 2026, a shared machine at load 5 to 9); on a quiet machine, no difference.
        # -Xss4m: a task deserialises its RDD's lineage recursively, and Spark ALS's lineage grows
        # for 10 iterations between its checkpoints; C1's larger frames overflowed the default
        # 1 MiB stack there once (test_training.py's ALS over four λ, 15 iterations each), and
        # a StackOverflowError in a task ends the local JVM, every later test in the process with it.
        .config("spark.driver.extraJavaOptions", f"-XX:+UseParallelGC -Xss4m {C1_ONLY}")
        # Spark ALS cuts its lineage only with an RDD checkpoint dir; without one, its
        # long fits have overflowed the JVM stack while serialising tasks.
        .config("spark.checkpoint.dir", str(tmp_path_factory.mktemp("rdd-checkpoints")))
        .getOrCreate()
    )
    yield session
    session.stop()
