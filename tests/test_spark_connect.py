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
from tests_support import C1_ONLY

from cfspark import CFModel
from cfspark.data.read import pyspark_home

pytest.importorskip("grpc", reason="Spark Connect client packages are not installed")

# It starts a Connect server and runs the whole job through it: about a minute, so not in the
# quick tier, where tests/test_dataframe_only.py's static check guards the same design.
pytestmark = pytest.mark.slow


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
            "--conf",
            f"spark.driver.extraJavaOptions={C1_ONLY}",
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


LOAD = """
import json
from pyspark.sql import SparkSession
from cfspark import CFModel
from cfspark.core.slots import task_slots
spark = SparkSession.builder.remote({url!r}).getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect")
model = CFModel.load({path!r})
print(json.dumps({{
    "slots": task_slots(spark),
    "factors": sorted([r.user, list(r.features), r.bias] for r in model.user_factors.collect()),
    "recs": sorted(list(r) for r in model.recommendForAllUsers(3).collect()),
}}))
"""


def _factors(model: CFModel) -> list:
    return sorted([r.user, list(r.features), r.bias] for r in model.user_factors.collect())


JOB = ["model.rank=2", "model.max_iter=3", "model.tol=0", "model.num_user_blocks=2", "model.num_item_blocks=2",
       "checkpoint.interval=2", "checkpoint.keep=true", "spark.shuffle_partitions=4", "output.top_n=3"]  # fmt: skip


def test_train_job_runs_whole_through_connect(spark, connect_server, tmp_path):
    """jobs/train.py --remote: read, validate, train, checkpoint, recommend and write, all
    through the Connect session; the outputs, and the saved model's factors, equal a classic
    session's run of the same config. The Connect client is a process of its own:
    pyspark binds functions to one kind of session."""
    from cfspark.app.config import load_config
    from cfspark.app.train import run_job

    rows = planted_ratings(n_users=40, n_items=30, rank=2, density=0.4, noise=0.2, seed=2).rows()
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    sets = [f"input.path={tmp_path / 'ratings.csv'}", *JOB]
    remote_out, classic_out = tmp_path / "remote", tmp_path / "classic"
    job = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "train.py")
    args = [a for s in [*sets, f"output.path={remote_out}"] for a in ("--set", s)]
    # A plain python process (no spark-submit, no JVM of its own), started from an empty dir.
    (tmp_path / "cwd").mkdir()
    proc = subprocess.run([sys.executable, job, "--remote", connect_server, *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path / "cwd")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"results in {remote_out}" in proc.stdout
    assert sorted(os.listdir(remote_out)) == ["_cfspark", "metrics.json", "model", "recommendations"]
    marker = json.loads((tmp_path / "remote_checkpoints" / "latest.json").read_text())
    # latest.json names its folder relative to the checkpoint dir (a rerun from elsewhere still finds it).
    assert marker["iteration"] == 2 and (tmp_path / "remote_checkpoints" / marker["path"] / "users").is_dir()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]

    run_job(spark, load_config(None, [*sets, f"output.path={classic_out}"]))
    remote, classic = (json.loads((o / "metrics.json").read_text()) for o in (remote_out, classic_out))
    assert remote["counts"] == classic["counts"]
    for split in ("train", "test"):
        for key, value in classic[split].items():
            assert remote[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    recs = [
        sorted(map(tuple, spark.read.parquet(str(o / "recommendations")).collect())) for o in (remote_out, classic_out)
    ]
    assert [r[:3] for r in recs[0]] == [r[:3] for r in recs[1]] and len(recs[0]) == 3 * 40
    (text,) = [r.value for r in spark.read.text(str(remote_out / "model" / "metadata")).collect()]
    assert json.loads(text)["cfspark"]["config"]["spark"]["remote"] == connect_server

    # The model trained over Connect loads in a fresh session, through Connect, with the
    # classic session's factors (to the metrics' 1e-6: sums over the server's partitions may
    # differ in their last bits), and recommends what the classic model does, excluding the
    # training pairs it was saved with.
    code = LOAD.format(url=connect_server, path=str(remote_out / "model"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    over_connect = json.loads(proc.stdout.strip().splitlines()[-1])
    assert over_connect["slots"] == 2  # the server's local[2], read with no SparkContext
    loaded = CFModel.load(str(classic_out / "model"))
    classic_factors = _factors(loaded)
    assert [f[0] for f in over_connect["factors"]] == [f[0] for f in classic_factors] and len(classic_factors) == 40
    for (_, features, bias), (_, want, want_bias) in zip(over_connect["factors"], classic_factors, strict=True):
        assert features == pytest.approx(want, abs=1e-6) and bias == pytest.approx(want_bias, abs=1e-6)
    classic_recs = sorted(list(r) for r in loaded.recommendForAllUsers(3).collect())
    assert [r[:3] for r in over_connect["recs"]] == [r[:3] for r in classic_recs]
    assert [r[3] for r in over_connect["recs"]] == pytest.approx([r[3] for r in classic_recs], abs=1e-6)
    trained = {(r.user, r.item) for r in loaded.training_pairs.collect()}
    assert len(trained) == classic["counts"]["train"]
    assert len(over_connect["recs"]) == 3 * 40 and not {(u, i) for u, i, *_ in over_connect["recs"]} & trained
