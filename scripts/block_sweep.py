"""Setup seconds and seconds per iteration at several block counts, with ALS's fit in the same session.

    PYSPARK_SUBMIT_ARGS="--master local[2] --driver-memory 6g pyspark-shell" \
        .venv/bin/python scripts/block_sweep.py data/skew-2m/ratings 2,4,8,16

Reads Parquet (user, item, rating) with integer ids, splits it as the job does (test 20 %,
seed 42), times Spark ALS (rank 10, regParam 0.1, 10 iterations, after an untimed
2-iteration warm-up), then fits cfspark once per block count (λ fixed at 0.1 in ALS's
units, 3 iterations) and prints one JSON line per fit, then the processes' peak memory.
"""

from __future__ import annotations

import json
import os
import sys
import time

from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cfspark import CollaborativeFilter
from cfspark.bench.benchmark import tree_peak_rss
from cfspark.data.split import split_ratings


def main(path: str, counts: str) -> None:
    spark = SparkSession.builder.config("spark.sql.shuffle.partitions", "8").getOrCreate()
    train, _ = split_ratings(spark.read.parquet(path).select("user", "item", "rating"), test_fraction=0.2, seed=42)
    train = train.cache()
    n = train.count()
    ints = train.select(F.col("user").cast("int"), F.col("item").cast("int"), F.col("rating").cast("float")).cache()
    ints.count()

    def als(iterations: int) -> ALS:
        columns = {"userCol": "user", "itemCol": "item", "ratingCol": "rating"}
        return ALS(rank=10, maxIter=iterations, regParam=0.1, seed=7, **columns)

    als(2).fit(ints)
    began = time.perf_counter()
    als(10).fit(ints)
    als_seconds = time.perf_counter() - began
    for b in (int(c) for c in counts.split(",")):
        cf = CollaborativeFilter(
            rank=10, numUserBlocks=b, numItemBlocks=b, maxIter=3, tol=0.0, seed=7, regParam=0.1, regUnits="als"
        )
        began = time.perf_counter()
        model = cf.fit_validated(train)
        fit = time.perf_counter() - began
        setup, seconds = model.summary["setup_seconds"], [h["seconds"] for h in model.history]
        per_iteration = sum(seconds) / len(seconds)
        record = {
            "blocks": b, "train": n, "setup": setup, "iterations": [round(s, 2) for s in seconds], "fit": round(fit, 1),
            "als": round(als_seconds, 1), "setup_ratio": round(setup / als_seconds, 3),
            "iteration_ratio": round(per_iteration / als_seconds, 3), "fit_ratio": round(fit / als_seconds, 3),
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        model.unpersist()
    print(json.dumps(tree_peak_rss(os.getpid())))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "2,4,8,16")
