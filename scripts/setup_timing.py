"""Setup's seconds with the targets' join broadcast or left to Spark, alternately in one session.

    PYSPARK_SUBMIT_ARGS="--master local[2] --driver-memory 4g pyspark-shell" \
        .venv/bin/python scripts/setup_timing.py /tmp/s5m/ratings 2 3

Reads Parquet (user, item, rating) with integer ids, splits it as the job does (test 20 %,
seed 42) and caches the training split, then builds the blocks (fit/blockwise.py's setup:
prepare, index, pack) with BLOCKS blocks per side, ROUNDS times each way, alternating, after
one untimed warm-up of each: "broadcast" sends the item table to the ratings' tasks (the
default up to fit/targets.py's BROADCAST_ITEMS items), "shuffle" sets that limit to 0, so
Spark plans the join itself. Prints one JSON line per build with each phase's wall seconds.
"""

from __future__ import annotations

import json
import sys
import time

from pyspark.sql import SparkSession

from cfspark import CollaborativeFilter
from cfspark.bench.profile import setup_phases
from cfspark.data.split import split_ratings
from cfspark.fit import blockwise, targets


def build(train, n: int, blocks: int, limit: int) -> dict:
    targets.BROADCAST_ITEMS = limit
    settings = CollaborativeFilter(numUserBlocks=blocks, numItemBlocks=blocks, regParam=0.1, regUnits="als")
    began = time.perf_counter()
    with setup_phases() as phases:
        built, stats, _ = blockwise.setup(settings.fit_settings(), train, num_ratings=n)
    seconds = time.perf_counter() - began
    built.unpersist()
    stats.unpersist()
    return {"seconds": round(seconds, 2), **{k: round(v, 2) for k, v in phases.items()}}


def main(path: str, blocks: int, rounds: int) -> None:
    spark = SparkSession.builder.config("spark.sql.shuffle.partitions", "8").getOrCreate()
    train, _ = split_ratings(spark.read.parquet(path).select("user", "item", "rating"), test_fraction=0.2, seed=42)
    train = train.cache()
    n = train.count()
    ways = {"broadcast": targets.BROADCAST_ITEMS, "shuffle": 0}
    for limit in ways.values():  # untimed: Python workers started, the JVM's hot paths compiled
        build(train, n, blocks, limit)
    for r in range(rounds):
        for name, limit in ways.items():
            print(json.dumps({"way": name, "round": r + 1, "train": n, **build(train, n, blocks, limit)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
