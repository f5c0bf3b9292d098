"""est.fit's seconds and Spark jobs with the duplicate check folded into the fit or run
separately (validate_given's shuffle, as before the fold), alternately in one session.

    PYSPARK_SUBMIT_ARGS="--master local[2] --driver-memory 6g pyspark-shell" \
        .venv/bin/python scripts/duplicate_check_timing.py /tmp/s42/synth-5m-skew/ratings 3

Reads Parquet (user, item, rating) with integer ids, splits it as the job does (test 20 %,
seed 42) and caches the training split unchecked, as a caller of the Python API holds it;
then fits it with the default Params ROUNDS times each way, alternating, after one untimed
warm-up of each. Prints one JSON line per fit: its wall seconds, its Spark jobs (the status
tracker's count for the fit's job group) and the first iteration's training loss.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from pyspark.sql import SparkSession

from cfspark import CollaborativeFilter
from cfspark.data.split import split_ratings
from cfspark.ml import estimator

_GIVEN = estimator.validate_given


def fit(spark: SparkSession, train, folded: bool) -> dict:
    estimator.validate_given = _GIVEN if folded else lambda *a, **k: _GIVEN(*a, **{**k, "fit_refuses": False})
    sc = spark.sparkContext  # the jobs are counted by group, as tests/test_setup.py counts them
    group = f"fit-{uuid.uuid4().hex}"
    sc.setJobGroup(group, "a timed fit")
    began = time.perf_counter()
    model = CollaborativeFilter().fit(train)
    seconds = time.perf_counter() - began
    sc.setLocalProperty("spark.jobGroup.id", None)
    sc._jsc.sc().listenerBus().waitUntilEmpty(60_000)
    jobs = len(sc.statusTracker().getJobIdsForGroup(group))
    loss = model.summary["history"][0]["train_loss"]
    model.unpersist()
    return {"seconds": round(seconds, 2), "jobs": jobs, "loss": loss}


def main(path: str, rounds: int) -> None:
    spark = SparkSession.builder.config("spark.sql.shuffle.partitions", "8").getOrCreate()
    train, _ = split_ratings(spark.read.parquet(path).select("user", "item", "rating"), test_fraction=0.2, seed=42)
    train = train.cache()
    n = train.count()
    ways = {"folded": True, "separate": False}
    for folded in ways.values():  # untimed: Python workers started, the JVM's hot paths compiled
        fit(spark, train, folded)
    for r in range(rounds):
        for name, folded in ways.items():
            print(json.dumps({"way": name, "round": r + 1, "train": n, **fit(spark, train, folded)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
