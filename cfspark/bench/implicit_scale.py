"""Fit time at scale: the bce default on positive-only counts against implicit ALS, in one run.

Generated play counts (bench/implicit.py's planted rank-8 model, heavy-tailed counts) at about
1M and 5M labels (more with --sizes), split 80/20 by hashing (user, item). On each, the same
training rows go to:

- cfspark with the bce defaults and the counts as weightCol (positive-only labels: the all-items
  model, blockwise above fit/one_task.py's size), rank 10;
- Spark implicit ALS with the counts as its ratings, rank 10, maxIter 10, one regParam × alpha
  (0.1, 1: the best of its grid on the small generated set), Java BLAS here.

Both are scored by NDCG@10 and P@10 on the held-out pairs of a hashed sample of users (top-N for
every user of millions of pairs costs more than the fits), training items excluded.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master "local[2]" --driver-memory 6g \\
        jobs/implicit_scale_bench.py --sizes 1 5 --out out.json
"""

from __future__ import annotations

import argparse
import json

import pandas as pd
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.bench.implicit import COUNT, K, _timed, play_count_arrays
from cfspark.core.schema import ITEM, RANK, RATING, USER
from cfspark.data.metrics import ranking_metrics
from cfspark.data.split import split_ratings
from cfspark.ml.estimator import CollaborativeFilter
from cfspark.ml.recommend import top_n

# (users, items, draws) per million labels wanted (0: a quick check of about 30k): about 0.3
# of the draws are kept as pairs.
SHAPES = {
    0: (2_000, 1_500, 100_000),
    1: (30_000, 20_000, 3_500_000),
    5: (120_000, 50_000, 17_500_000),
    27: (600_000, 150_000, 95_000_000),
}
SAMPLE_EVERY = 20  # NDCG over users whose hashed id falls in 1 of this many buckets


def counts_frame(spark: SparkSession, millions: int) -> DataFrame:
    users, items, draws = SHAPES[millions]
    u, i, c = play_count_arrays(users, items, draws, seed=millions)
    pdf = pd.DataFrame({USER: u.astype("int32"), ITEM: i.astype("int32"), COUNT: c})
    # A frame made from pandas is a local relation, whose rows travel inside every task of every
    # job that reads it (0.55 s a job over the 1M training pairs, cached, against 0.12 s once
    # checkpointed): checkpointed once, it is read as a file or table would be, by both fits.
    return spark.createDataFrame(pdf).localCheckpoint()


def _score(relevant: DataFrame, recs: DataFrame) -> dict:
    return ranking_metrics(recs.select(USER, ITEM, RANK), relevant, k=K)


def run_size(spark: SparkSession, millions: int, blocks: int = 0) -> dict:
    counts = counts_frame(spark, millions)
    rows = counts.select(USER, ITEM, F.lit(1.0).alias(RATING), F.col(COUNT).cast("double").alias(COUNT))
    train, test = split_ratings(rows, test_fraction=0.2, seed=42)
    train = train.cache()
    sample = train.select(USER).distinct().filter(F.pmod(F.xxhash64(USER), F.lit(SAMPLE_EVERY)) == 0).cache()
    relevant = test.select(USER, ITEM).join(sample, USER, "left_semi").cache()
    out = {"labels": rows.count(), "train_rows": train.count(), "sample_users": sample.count(),
           "relevant_pairs": relevant.count()}  # fmt: skip
    print(f"{millions}M: {out}", flush=True)

    als = ALS(rank=10, maxIter=10, regParam=0.1, alpha=1.0, implicitPrefs=True, seed=1,
              userCol=USER, itemCol=ITEM, ratingCol=COUNT)  # fmt: skip
    fitted, seconds = _timed(lambda: als.fit(train))
    vec = F.col("features").cast("array<double>").alias("v")
    recs = top_n(
        fitted.userFactors.select(F.col("id").alias(USER), vec).join(sample, USER, "left_semi"),
        fitted.itemFactors.select(F.col("id").alias(ITEM), vec), n=K, query_col=USER, candidate_col=ITEM,
        query_vec=F.col("v"), candidate_vec=F.col("v"), exclude=train.select(USER, ITEM),
    )  # fmt: skip
    out["implicit_als"] = {"fit_seconds": seconds, "regParam": 0.1, "alpha": 1.0, **_score(relevant, recs)}
    print(f"{millions}M implicit ALS: {out['implicit_als']}", flush=True)

    cf = CollaborativeFilter(userCol=USER, itemCol=ITEM, ratingCol=RATING, weightCol=COUNT, loss="bce", rank=10,
                             numUserBlocks=blocks, numItemBlocks=blocks)  # fmt: skip
    model, seconds = _timed(lambda: cf.fit(train))
    recs = model.recommendForUserSubset(sample, K)
    summary = model.summary
    out["cfspark_bce_default"] = {
        "fit_seconds": seconds, "implicit": summary.get("implicit"), "iterations": len(model.history),
        "blocks": [summary.get("num_user_blocks"), summary.get("num_item_blocks")],
        "setup_seconds": summary.get("setup_seconds"),  # the fit's own clock: blocks built, factors initialised
        "iteration_seconds": [h.get("seconds") for h in model.history],
        "kernel_seconds": [h.get("kernel_seconds") for h in model.history],
        "cache_misses": [h.get("cache_misses") for h in model.history],
        **_score(relevant, recs),
    }  # fmt: skip
    print(f"{millions}M cfspark: {out['cfspark_bce_default']}", flush=True)
    model.unpersist()
    for df in (train, sample, relevant):
        df.unpersist()
    return out


def table(results: dict) -> str:
    lines = ["| labels | model | NDCG@10 | P@10 | iterations | fit / ALS fit |", "|---|---|---|---|---|---|"]
    for r in results.values():
        als = r["implicit_als"]["fit_seconds"]
        for key, name in (("cfspark_bce_default", "cfspark bce default (all-items)"),
                          ("implicit_als", "implicit ALS (Java BLAS)")):  # fmt: skip
            m = r[key]
            lines.append(f"| {r['labels']:,} | {name} | {m['ndcg_at_k']:.4f} | {m['precision_at_k']:.4f} | "
                         f"{m.get('iterations', 10)} | {m['fit_seconds'] / als:.2f} × |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cfspark-implicit-scale-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5], choices=sorted(SHAPES),
                        help="millions of labels (default: %(default)s)")  # fmt: skip
    parser.add_argument("--out", default="", help="a JSON file for the results (default: none)")
    parser.add_argument("--blocks", type=int, default=0, help="cfspark's blocks per side (default: 0: from the data)")
    args = parser.parse_args(argv)
    spark = (
        SparkSession.builder.appName("cfspark-implicit-scale-bench")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.log.level", "WARN")
        .getOrCreate()
    )
    warm = spark.createDataFrame([(u, i, 1.0, 1.0 + u) for u in range(30) for i in range(u % 7, 40, 3)],
                                 f"{USER} int, {ITEM} int, {RATING} double, {COUNT} double")  # fmt: skip
    # The JVM, its JIT and the Python workers warm for both, so neither pays for them in its timing.
    CollaborativeFilter(userCol=USER, itemCol=ITEM, loss="bce", maxIter=2, numUserBlocks=2, numItemBlocks=2).fit(warm)
    ALS(rank=10, maxIter=2, implicitPrefs=True, userCol=USER, itemCol=ITEM, ratingCol=COUNT).fit(warm)
    results = {}
    for size in args.sizes:
        results[size] = run_size(spark, size, args.blocks)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
