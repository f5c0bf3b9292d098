"""One run of a job's config: read → split → fit → evaluate → write.

The train job (app/train.py), the benchmark and the profile each drive a Run. It turns the config into the
library's arguments (nothing below the applications reads the config), times each step,
and owns every table it caches: leaving its `with` block unpersists them all, whatever
happened in between.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Any

import pyspark
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.app.config import CONFIG_PARAMS, Config
from cfspark.app.output import checkpoint_dir, remove_checkpoints, staged, staged_partition, write_recommendations
from cfspark.app.warm import WarmWorkers
from cfspark.bench.compare import compare_als
from cfspark.core.errors import CfsparkError, InputError, OutputError, TrainingError
from cfspark.core.fs import is_local, local_path, write_json
from cfspark.core.plans import cache_plain
from cfspark.core.schema import ITEM, RATING, RUN_DATE, SCORE, USER, WEIGHT, renamed
from cfspark.data.metrics import pointwise_metrics, ranking_metrics, relevant_pairs
from cfspark.data.negatives import add_negatives
from cfspark.data.read import Columns, read_ratings, spark_message
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings
from cfspark.data.weights import confidence, row_weight
from cfspark.ml.estimator import CollaborativeFilter
from cfspark.ml.exposure_model import ExposureAwareModel
from cfspark.ml.model import TRAINING, CFModel

log = logging.getLogger("cfspark")


def estimator_from_config(cfg: Config, columns: Columns) -> CollaborativeFilter:
    """The job's [model] and [checkpoint] keys as the estimator's Params (CONFIG_PARAMS maps them)."""
    values = {param: cfg[section][key] for (section, key), param in CONFIG_PARAMS.items()}
    if cfg["checkpoint"]["interval"] > 0:
        values["checkpointDir"] = checkpoint_dir(cfg)
    else:
        del values["checkpointInterval"]  # 0 turns checkpoints off: no checkpointDir
    if cfg["model"]["warm_start"]:
        values["initialModel"] = cfg["model"]["warm_start"]
    return CollaborativeFilter(userCol=columns.user, itemCol=columns.item, ratingCol=columns.rating, **values)


def exclusions(train: DataFrame, exclude: str) -> DataFrame | str | None:
    """output.exclude as recommendations take it: every training pair, the positives only, or none."""
    return {"labelled": TRAINING, "positives": train.filter(F.col(RATING) == 1.0), "none": None}[exclude]


class Timer:
    """Named wall-clock sections, reported in metrics.json under timings."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - began, 3)


@contextmanager
def failure_is(cls: type[CfsparkError], what: str):
    """An unexpected error in this section becomes cls (its exit code), traceback logged."""
    try:
        yield
    except CfsparkError:
        raise
    except Exception as e:
        log.exception("%s failed", what)
        raise cls(f"{what} failed: {type(e).__name__}: {spark_message(e)}") from e


def fitted_summary(model) -> dict:
    """What the fit decided by itself: λ (and, for reg = "auto", the path that chose it), the
    prior counts λ_b and m (mse), α where positive-only data chose it, why it stopped, and
    the exposure part's λ, path and stop (bce with exposure)."""
    decided = {k: model.summary.get(k) for k in ("reg", "reg_path", "reg_search", "alpha", "spread", "stop_reason")}
    found = {"bias_reg": model.getBiasReg(), "mean_prior": model.summary.get("mean_prior")}
    exposure = model.summary.get("exposure")
    if exposure:
        found["exposure"] = {k: v for k, v in exposure.items() if k != "history"}
    return {**decided, **found}


def load_ratings(spark: SparkSession, cfg: Config) -> tuple[DataFrame, Columns]:
    """Read and validate (for bce, labels or binarised ratings); cached. With input.weight_col,
    each row's count c becomes its weight by input.weight_mapping (data/weights.py)."""
    threshold = cfg["input"]["binarize_threshold"]
    raw, cols = read_ratings(spark, cfg["input"])
    ratings = validate_ratings(
        raw, cols, id_type=cfg["input"]["id_type"], duplicates=cfg["input"]["duplicates"],
        labels=cfg["model"]["loss"] == "bce", binarize_threshold=None if math.isnan(threshold) else threshold,
    )  # fmt: skip
    if cols.weight:
        ratings = ratings.withColumn(
            WEIGHT,
            confidence(F.col(WEIGHT), *(cfg["input"][k] for k in ("weight_alpha", "weight_mapping", "weight_epsilon"))),
        )
    return cache_plain(ratings), cols


def split_for_training(ratings: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """The hashed split, with sampled negatives (of weight negatives.weight) added before it
    (scope all) or to train only."""
    neg, split = cfg["negatives"], cfg["split"]
    negatives = None
    if cfg["model"]["loss"] == "bce" and neg["per_positive"] > 0:
        negatives = add_negatives(ratings.select(USER, ITEM, RATING), per_positive=neg["per_positive"],
                                  sampling=neg["sampling"], seed=neg["seed"], only_new=True)  # fmt: skip
        negatives = negatives.withColumn(WEIGHT, F.lit(float(neg["weight"])))
        ratings = ratings.withColumn(WEIGHT, row_weight(ratings))
        if neg["scope"] == "all":
            ratings, negatives = ratings.unionByName(negatives), None
    train, test = split_ratings(ratings, test_fraction=split["test_fraction"], seed=split["seed"])
    if negatives is not None:
        train = train.unionByName(negatives)
    return cache_plain(train), cache_plain(test)


WARM_UP_RATINGS = 50_000  # the untimed warm-up fits' sample size


def warm_up_sample(train: DataFrame, train_count: int) -> DataFrame:
    """About WARM_UP_RATINGS rows of train, cached, for untimed warm-up fits."""
    return train.sample(fraction=min(1.0, WARM_UP_RATINGS / max(1, train_count)), seed=1).cache()


class Run:
    """read → split → fit → evaluate → write for one config, holding what it caches.

    with Run(spark, cfg) as run:
        run.read(); run.split()
        model = run.fit()
        recs, relevant = run.recommend(model), run.relevant(model)
        metrics = run.evaluate(model, recs, relevant)
        run.write(model, recs, metrics)
    """

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        self.spark, self.cfg = spark, cfg
        self.timer = Timer()
        self.counts: dict[str, int] = {}
        self.columns: Columns | None = None
        self.ratings = self.train = self.test = None
        self.train_mean: float | None = None  # the training ratings' weighted mean, which split() finds
        self._held: list[Any] = []  # DataFrames and models, unpersisted on close
        self._warm: WarmWorkers | None = None  # Python workers started while the input is read

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._warmed()
        while self._held:
            self._held.pop().unpersist()

    def hold(self, table):
        """Unpersist table (a DataFrame or a model) when the run closes; return it."""
        self._held.append(table)
        return table

    @property
    def k(self) -> int:
        return self.cfg["output"]["top_n"]

    def _warmed(self) -> None:
        """Wait for the workers started while reading, if any: their tasks' workers are then idle, for the fit's."""
        if self._warm is not None:
            self._warm.wait()
            self._warm = None

    def read(self) -> DataFrame:
        # Reading and validating run JVM jobs of one task: a core is free to start Python workers (app/warm.py).
        self._warm = WarmWorkers(self.spark, self.cfg["spark"]["warm_workers"])
        with self.timer("read_validate"):
            self.ratings, self.columns = load_ratings(self.spark, self.cfg)
        return self.hold(self.ratings)

    def split(self) -> tuple[DataFrame, DataFrame]:
        with self.timer("split"):
            train, test = split_for_training(self.ratings, self.cfg)
            self.train, self.test = self.hold(train), self.hold(test)
            # The training count and weighted mean rating in one pass; the fit reuses both.
            a = row_weight(train)
            count, self.train_mean = train.agg(F.count(F.lit(1)), F.sum(a * F.col(RATING)) / F.sum(a)).first()
            self.counts.update(ratings=self.ratings.count(), train=count, test=test.count())
        if self.counts["train"] == 0:
            raise InputError(
                f"the split left no training ratings out of {self.counts['ratings']}; lower split.test_fraction"
            )
        return train, test

    def estimator(self) -> CollaborativeFilter:
        return estimator_from_config(self.cfg, self.columns)

    def fit(self, estimator: CollaborativeFilter | None = None, *, on_iteration=None) -> CFModel:
        estimator = estimator or self.estimator()
        self._warmed()
        with self.timer("fit"), failure_is(TrainingError, "training"):
            known = {"num_ratings": self.counts["train"], "global_mean": self.train_mean}
            model = self.hold(estimator.fit_validated(self.train, on_iteration=on_iteration, **known))
        users, items = model.trained_counts()
        self.counts.update(users=users, items=items)
        return model

    def recommend(self, model: CFModel) -> DataFrame:
        """Top-k for every trained user (cfspark's names), training items excluded as output.exclude says; cached."""
        exclude = exclusions(self.train, self.cfg["output"]["exclude"])
        return self.hold(model.recommend_canonical(self.k, exclude=exclude).cache())

    def relevant(self, model: CFModel) -> DataFrame:
        threshold = self.cfg["eval"]["relevance_threshold"]
        pairs = relevant_pairs(self.test, model.user_factors, loss=model.getLoss(), threshold=threshold)
        return self.hold(pairs.cache())

    def evaluate(self, model: CFModel, recs: DataFrame, relevant: DataFrame) -> dict:
        """Pointwise metrics of the model's predictions (for bce with exposure, P(like | shown)
        on the labelled pairs) and ranking metrics of its recommendations (ranked by score)."""
        with self.timer("evaluate"), failure_is(TrainingError, "evaluation"):
            test = pointwise_metrics(model, self.test)
            if isinstance(model, ExposureAwareModel):  # the ranking score's own AUC on the labelled pairs
                test["score_auc"] = pointwise_metrics(model, self.test, prediction_col=SCORE)["auc"]
            return {
                "loss": model.getLoss(),
                "train": pointwise_metrics(model, self.train),
                "test": {**test, **ranking_metrics(recs, relevant, k=self.k)},
                "iterations": model.history,
                "counts": self.counts,
                "model": fitted_summary(model),
            }

    def compare(self, model: CFModel, relevant: DataFrame | None, **overrides: Any) -> dict:
        """Spark ALS on the same split ([compare] keys; overrides replace any of compare_als's arguments)."""
        c = self.cfg["compare"]
        args = dict(
            loss=model.getLoss(), rank=self.cfg["model"]["rank"], reg_grid=c["als_reg_grid"],
            max_iter=c["als_max_iter"], seed=self.cfg["model"]["seed"], relevant=relevant, k=self.k,
            alpha_grid=c["als_alpha_grid"], clip_eps=c["als_clip_eps"], num_blocks=c["als_num_blocks"],
        )  # fmt: skip
        with self.timer("als"), failure_is(TrainingError, "the ALS comparison"):
            return compare_als(self.train, self.test, model.item_stats, **{**args, **overrides})

    def write(self, model: CFModel, recs: DataFrame, metrics: dict) -> None:
        """Recommendations, model and metrics.json, staged so that a failure leaves the old output."""
        cfg, cols = self.cfg, self.columns
        out_path, overwrite, run_date = cfg["output"]["path"], cfg["output"]["overwrite"], cfg["output"]["run_date"]
        metadata = {
            "config": cfg,
            "fitted": fitted_summary(model),
            "counts": self.counts,
            "cfspark_version": _version(),
            "spark_version": self.spark.version,
            "pyspark_version": pyspark.__version__,
        }
        part = f"/{RUN_DATE}={run_date}" if run_date else ""
        staging = staged_partition(out_path, part) if run_date else staged(out_path, overwrite)
        with failure_is(OutputError, "writing the results"), staging as stage:
            with self.timer("recommend_write"):
                named = renamed(recs, {USER: cols.user, ITEM: cols.item})
                write_recommendations(named, f"{stage}/recommendations", run_date)
            if cfg["output"]["similar_items"]:
                with self.timer("similar_write"):
                    similar = model.allSimilarItems(cfg["output"]["similar_items"])
                    write_recommendations(similar, f"{stage}/similar_items", run_date)
            with self.timer("model_write"):
                writer = model.write().metadata(metadata)
                # Local: a fresh staging folder. Elsewhere tables are written in place, over the last run's.
                (writer if is_local(stage) else writer.overwrite()).save(f"{stage}/model{part}")
            metrics["timings"] = self.timer.seconds
            if is_local(stage):
                folder = os.path.join(local_path(stage), f"metrics{part}") if run_date else local_path(stage)
                os.makedirs(folder, exist_ok=True)
                dated = {RUN_DATE: run_date} if run_date else {}
                write_json(os.path.join(folder, "metrics.json"), {**metrics, **dated})
        remove_checkpoints(cfg)  # with the exposure model's, inside; only a folder cfspark made


def _version() -> str:
    from cfspark import __version__

    return __version__
