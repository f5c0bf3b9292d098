"""Positive-only counts: the all-items model, the sampled exposure model and implicit ALS, in one run.

Two data sets, each split 80/20 by hashing (user, item): MovieLens latest-small with the
rating as the count (labels all 1), and generated play counts with heavy-tailed counts (a
planted rank-8 model with Zipf item popularity; counts lognormal, growing with the planted
score, up to the tens of thousands). On each, with the same counts:

- cfspark, model.implicit = "all" with the defaults (λ and α chosen on NDCG@10 of a validation
  fold of the training split, fit/rank_search.py), with the counts and without them; with the
  counts at the fixed λ = 0.01, α = 1 that the defaults replace; and, with --sampled, the
  sampled exposure model (the slowest by far);
- Spark implicit ALS with the count as its rating, over regParam × alpha, the best NDCG@10 on
  test (which flatters ALS), its fit time beside it.

All are ranked with training items excluded and scored by NDCG@10 and P@10 on the users with
training data. Fit times are wall seconds on whatever machine runs it; ALS runs Java BLAS.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master "local[2]" \\
        jobs/implicit_bench.py [ratings.csv] [out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, RANK, RATING, USER
from cfspark.data.metrics import ranking_metrics
from cfspark.data.split import split_ratings
from cfspark.ml.estimator import CollaborativeFilter
from cfspark.ml.recommend import top_n

K = 10
COUNT = "count"
ALS_REGS = (0.01, 0.1, 1.0)
ALS_ALPHAS = (1.0, 10.0)  # 40 ranked worst of the three on both sets


def play_counts(users: int = 3000, items: int = 4000, draws: int = 450_000, seed: int = 0) -> list[tuple]:
    """(user, item, count) rows of a planted rank-8 model: pairs drawn by Zipf popularity and kept
    with probability σ(score − 1), counts lognormal around e^(1 + score) (one pair per user and item)."""
    u, i, counts = play_count_arrays(users, items, draws, seed)
    return list(zip(u.tolist(), i.tolist(), counts.tolist(), strict=True))


def play_count_arrays(
    users: int, items: int, draws: int, seed: int = 0, chunk: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """play_counts as (user, item, count) arrays, the draws scored in chunks of memory's size."""
    rng = np.random.default_rng(seed)
    u_vec, i_vec = rng.normal(size=(users, 8)), rng.normal(size=(items, 8))
    popularity = rng.zipf(1.3, items).clip(max=10_000).astype(np.float64)
    u = rng.integers(0, users, draws)
    i = rng.choice(items, draws, p=popularity / popularity.sum())
    score = np.concatenate(
        [np.einsum("ij,ij->i", u_vec[u[s : s + chunk]], i_vec[i[s : s + chunk]]) for s in range(0, draws, chunk)]
    ) / np.sqrt(8)
    keep = rng.random(draws) < 1 / (1 + np.exp(1 - score))
    u, i, score = u[keep], i[keep], score[keep]
    _, first = np.unique(u * items + i, return_index=True)
    u, i, score = u[first], i[first], score[first]
    counts = np.floor(np.exp(rng.normal(1 + score, 1.5))).clip(1)
    return u, i, counts


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - began, 3)


def _ours(train: DataFrame, relevant: DataFrame, **params) -> dict:
    cf = CollaborativeFilter(userCol=USER, itemCol=ITEM, ratingCol=RATING, loss="bce", **params)
    model, seconds = _timed(lambda: cf.fit(train))
    recs = model.recommendForAllUsers(K).select(USER, ITEM, RANK)
    out = ranking_metrics(recs, relevant, k=K)
    chosen = {k: model.summary.get(k) for k in ("reg", "alpha", "reg_search")}
    model.unpersist()
    print(f"cfspark {params}: NDCG@10 {out['ndcg_at_k']:.4f}, fit {seconds:.1f} s, reg {chosen['reg']}, "
          f"alpha {chosen['alpha']}", flush=True)  # fmt: skip
    return {"params": params, "fit_seconds": seconds, **chosen, **out}


def _als(train: DataFrame, relevant: DataFrame, reg: float, alpha: float) -> dict:
    als = ALS(rank=10, maxIter=10, regParam=reg, alpha=alpha, implicitPrefs=True, seed=1,
              userCol=USER, itemCol=ITEM, ratingCol=COUNT)  # fmt: skip
    model, seconds = _timed(lambda: als.fit(train))
    vec = F.col("features").cast("array<double>").alias("v")
    recs = top_n(
        model.userFactors.select(F.col("id").alias(USER), vec), model.itemFactors.select(F.col("id").alias(ITEM), vec),
        n=K, query_col=USER, candidate_col=ITEM, query_vec=F.col("v"), candidate_vec=F.col("v"),
        exclude=train.select(USER, ITEM),
    )  # fmt: skip
    return {
        "regParam": reg,
        "alpha": alpha,
        "fit_seconds": seconds,
        **ranking_metrics(recs.select(USER, ITEM, RANK), relevant, k=K),
    }


def compare(name: str, counts: DataFrame, *, sampled: bool = False) -> dict:
    """Every model on one (user, item, count) set."""
    rows = counts.select(USER, ITEM, F.lit(1.0).alias(RATING), F.col(COUNT).cast("double").alias(COUNT))
    train, test = split_ratings(rows, test_fraction=0.2, seed=42)
    train = train.cache()
    relevant = test.select(USER, ITEM).join(train.select(USER).distinct(), USER, "left_semi").cache()
    out = {"data": name, "train_rows": train.count(), "relevant_pairs": relevant.count()}
    out["all_counts"] = _ours(train, relevant, implicit="all", weightCol=COUNT)
    out["all_labels_only"] = _ours(train.drop(COUNT), relevant, implicit="all")
    # Numbers in regParam and exposureRegParam keep the all-items λ at the latter; alpha 1 is the fixed α.
    out["all_counts_fixed"] = _ours(train, relevant, implicit="all", weightCol=COUNT, regParam=0.1,
                                    exposureRegParam=0.01, alpha=1.0)  # fmt: skip
    if sampled:
        out["sampled_counts"] = _ours(train, relevant, implicit="sampled", weightCol=COUNT)
    grid = [_als(train, relevant, reg, alpha) for reg in ALS_REGS for alpha in ALS_ALPHAS]
    out["implicit_als_best"] = max(grid, key=lambda r: r["ndcg_at_k"])
    out["implicit_als_grid"] = grid
    for df in (train, relevant):
        df.unpersist()
    return out


def table(results: list[dict]) -> str:
    lines = ["| data | model | NDCG@10 | P@10 | fit s | fit / ALS best's |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        als = r["implicit_als_best"]
        for key in ("all_counts", "all_labels_only", "all_counts_fixed", "sampled_counts", "implicit_als_best"):
            if key not in r:
                continue
            m = r[key]
            lines.append(f"| {r['data']} | {key} | {m['ndcg_at_k']:.4f} | {m['precision_at_k']:.4f} | "
                         f"{m['fit_seconds']:.1f} | {m['fit_seconds'] / als['fit_seconds']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cfspark-implicit-bench",
        description="Positive-only counts: the all-items and sampled models against implicit ALS, in one run.",
    )
    parser.add_argument("ratings", nargs="?", default="../shared/data/ml-latest-small/ratings.csv",
                        help="MovieLens ratings.csv, each rating read as a count (default: %(default)s)")  # fmt: skip
    parser.add_argument("out", nargs="?", default="", help="a JSON file for the results (default: none)")
    parser.add_argument("--sampled", action="store_true", help="also fit the sampled exposure model (slow)")
    args = parser.parse_args(argv)
    path = args.ratings
    spark = SparkSession.builder.appName("cfspark-implicit-bench").config("spark.log.level", "WARN").getOrCreate()
    warm = spark.createDataFrame([(u, i, 1.0, 1.0 + u) for u in range(30) for i in range(u % 7, 40, 3)],
                                 f"{USER} int, {ITEM} int, {RATING} double, {COUNT} double")  # fmt: skip
    _ours(warm, warm.select(USER, ITEM), implicit="all", maxIter=2)  # Python workers and JIT warm
    movielens = spark.read.csv(path, header=True, inferSchema=True).select(
        F.col("userId").alias(USER), F.col("movieId").alias(ITEM), F.col(RATING).alias(COUNT)
    )
    plays = spark.createDataFrame(play_counts(), f"{USER} int, {ITEM} int, {COUNT} double")
    results = [compare("movielens latest-small, rating as count", movielens, sampled=args.sampled),
               compare("generated play counts", plays, sampled=args.sampled)]  # fmt: skip
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
