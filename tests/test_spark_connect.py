"""The library over Spark Connect: a local Connect server, the same fit, the same factors.

This guards the DataFrame-API-only design: an RDD or SparkContext call would fail here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from planted import planted_ratings

from cfspark import CollaborativeFilter
from cfspark.data.read import pyspark_home

pytest.importorskip("grpc", reason="Spark Connect client packages are not installed")

PARAMS = dict(rank=2, maxIter=4, regParam=1.0, numUserBlocks=2, numItemBlocks=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    home = pyspark_home()
    tmp = tmp_path_factory.mktemp("connect")
    port = _free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(tmp),
        "SPARK_PID_DIR": str(tmp),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }
    script = os.path.join(home, "sbin", "{}-connect-server.sh")
    subprocess.run(
        [
            script.format("start"),
            "--master",
            "local[2]",
            "--conf",
            f"spark.connect.grpc.binding.port={port}",
            "--conf",
            "spark.sql.shuffle.partitions=4",
            "--conf",
            "spark.ui.enabled=false",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            pytest.fail("the Spark Connect server did not start: " + "".join(p.read_text() for p in tmp.glob("*.out")))
        yield f"sc://127.0.0.1:{port}"
    finally:
        subprocess.run([script.format("stop")], env=env, capture_output=True)


CLIENT = """
import json, sys
sys.path[:0] = [{tests!r}, {repo!r}]
from pyspark.sql import SparkSession
from planted import planted_ratings
from cfspark import CollaborativeFilter
spark = SparkSession.builder.remote({url!r}).getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect")
rows = planted_ratings(n_users=40, n_items=30, rank=2, density=0.4, noise=0.2, seed=2).rows()
model = CollaborativeFilter(**{params!r}).fit(spark.createDataFrame(rows, "user long, item long, rating double"))
print(json.dumps({{
    "factors": sorted([r.user, list(r.features), r.bias] for r in model.user_factors.collect()),
    "recs": sorted(list(r) for r in model.recommendForAllUsers(3).collect()),
}}))
"""


def test_fit_over_connect_equals_fit_in_classic_spark(spark, connect_server):
    """A Connect client is its own process: pyspark binds functions to one kind of session."""
    tests = os.path.dirname(os.path.abspath(__file__))
    code = CLIENT.format(tests=tests, repo=os.path.dirname(tests), url=connect_server, params=PARAMS)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])

    rows = planted_ratings(n_users=40, n_items=30, rank=2, density=0.4, noise=0.2, seed=2).rows()
    classic = CollaborativeFilter(**PARAMS).fit(spark.createDataFrame(rows, "user long, item long, rating double"))
    factors = sorted([r.user, list(r.features), r.bias] for r in classic.user_factors.collect())
    recs = sorted(list(r) for r in classic.recommendForAllUsers(3).collect())
    assert remote["factors"] == factors
    assert remote["recs"] == recs and len(recs) == 3 * 40
    classic.unpersist()
