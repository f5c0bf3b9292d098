"""CollaborativeFilter: the estimator, a pyspark.ml Estimator over cfspark's blockwise trainer."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks, build_blocks
from cfspark.data.exposure import exposure_labels
from cfspark.data.normalise import item_means, normalise
from cfspark.data.offsets import global_rate, item_offsets
from cfspark.data.read import Columns
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings
from cfspark.data.weights import confidence, row_weight
from cfspark.evaluate import pointwise_metrics
from cfspark.factors import factor_table
from cfspark.model import CFModel
from cfspark.params import AUTO, COURSE_PARAMS, CFParams
from cfspark.phases import phase
from cfspark.schema import (
    BASELINE,
    ITEM,
    ITEM_MEAN,
    ITEM_OFFSET,
    ITEM_RATINGS,
    LABELLED,
    NORMALISED,
    OFFSET,
    P_EXPOSED,
    RATING,
    TARGET,
    USER,
    WEIGHT,
)
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.messages import OUT_SCHEMA, StepConfig
from cfspark.train.one_task import ONE_TASK_RATINGS, fit_one_task
from cfspark.train.trainer import TrainResult, checkpoint_level, diverged, train
from cfspark.train.warm import warm_start

# Automatic λ: the path walked from strong to weak regularisation, each λ warm-started from
# the last, for at most PATH_ITER iterations, scored on a hashed VALIDATION_FRACTION of the
# training ratings, until the validation score gets worse. Count-scaled λ keeps this one
# path right for every data size.
REG_PATH = (0.5, 0.25, 0.12, 0.06, 0.03, 0.015, 0.008)
# The walk stops once validation is worse than the best so far by more than this fraction:
# under strong λ the factors vanish and the score is flat, which must not end the walk.
PATH_SLACK = 1e-3
PATH_ITER = 4
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 7919  # added to the model seed, so the fold differs from a test split on the split seed
log = logging.getLogger("cfspark")

__all__ = ["AUTO", "COURSE_PARAMS", "CollaborativeFilter", "blocks_for"]


RATINGS_PER_BLOCK = 3_000_000  # about 100 MB of block arrays per task, and enough tasks to keep cores busy
MIN_BLOCKS, MAX_BLOCKS = 2, 64


def blocks_for(num_ratings: int) -> int:
    """The default block count per side for this many training ratings."""
    return min(MAX_BLOCKS, max(MIN_BLOCKS, math.ceil(num_ratings / RATINGS_PER_BLOCK)))


def _model_or_path(value: Any) -> Any:
    if isinstance(value, (str, CFModel)):
        return value
    raise TypeError(f"must be a fitted CFModel or the path of a saved one, got {type(value).__name__}")


class CollaborativeFilter(Estimator, CFParams, DefaultParamsWritable, DefaultParamsReadable):
    """Learns item features X, user weights W and biases by alternating blockwise steps.

    A pyspark.ml Estimator: its Params (explainParams() lists them, with their defaults)
    follow ALS's names where the meanings match, and fit() returns a CFModel.

    >>> from cfspark import CollaborativeFilter
    >>> ratings = spark.createDataFrame(
    ...     [(u, i, float(1 + (u * i) % 5)) for u in range(30) for i in range(12) if (u + i) % 3],
    ...     ["user", "item", "rating"])
    >>> cf = CollaborativeFilter(rank=4, maxIter=5)
    >>> cf.getRegParam(), cf.getOptimizer()
    (0.1, 'newton')
    >>> model = cf.fit(ratings)
    >>> recs = model.recommendForAllUsers(3)
    >>> recs.columns
    ['user', 'item', 'rank', 'score']
    >>> recs.filter("user = 0").count()
    3
    >>> seen = ratings.filter("user = 0").select("item")
    >>> recs.filter("user = 0").join(seen, "item").count()  # items rated in training are left out
    0
    >>> model.transform(ratings.filter("user = 0 and item = 1")).select("prediction").first()[0] > 0
    True
    """

    initialModel = Param(
        Params._dummy(),
        "initialModel",
        "warm start: a fitted CFModel, or the path of a saved one, whose factors the fit starts from",
        typeConverter=_model_or_path,
    )

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.setParams(**kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> CollaborativeFilter:
        """Set any of the Params by name; an unknown name is refused."""
        unknown = sorted(set(kwargs) - {p.name for p in self.params})
        if unknown:
            raise TypeError(f"CollaborativeFilter has no Param {', '.join(unknown)}; see explainParams()")
        return self._set(**kwargs)

    def setInitialModel(self, value: Any) -> CollaborativeFilter:
        return self._set(initialModel=value)

    def getInitialModel(self) -> Any:
        return self.getOrDefault(self.initialModel) if self.isDefined(self.initialModel) else None

    def write(self):
        if isinstance(self.getInitialModel(), CFModel):
            raise ValueError("initialModel is a model object, which cannot be saved: save it and set its path instead")
        return super().write()

    @property
    def columns(self) -> Columns:
        return Columns(self.getUserCol(), self.getItemCol(), self.getRatingCol(), self.getWeightCol())

    def _with(self, **values: Any) -> CollaborativeFilter:
        """A copy with these Params set."""
        return self.copy({self.getParam(k): v for k, v in values.items()})

    def step_config(self, side: str, reg: float | None = None) -> StepConfig:
        return StepConfig(
            side=side,
            rank=self.getRank(),
            loss=self.getLoss(),
            reg=self.getRegParam() if reg is None else reg,
            optimizer=self.getOptimizer(),
            learning_rate=self.getLearningRate(),
            inner_steps=self.getInnerSteps(),
            init_scale=self.getInitScale(),
            count_scaled=self.getRegScaling() == "count",
            bias_reg=self.getBiasReg(),
            learn_bias=side == "user" or self.getItemBias(),
        )

    def _fit(self, dataset: DataFrame) -> CFModel:
        """Validate (userCol, itemCol, ratingCol[, weightCol]) rows, keeping id types as they
        are, and fit; a weightCol count c becomes the row's weight 1 + alpha·c."""
        for name in self.columns.names:
            if name not in dataset.columns:
                raise ValueError(f"the input has no column {name!r} (columns: {', '.join(dataset.columns)})")
        ratings = validate_ratings(
            dataset.select(*self.columns.names),
            self.columns,
            id_type="keep",
            duplicates="error",
            labels=self.getLoss() == "bce",
        )
        if self.getWeightCol():
            ratings = ratings.withColumn(WEIGHT, confidence(F.col(WEIGHT), self.getAlpha()))
        return self.fit_validated(ratings.cache())

    def fingerprint(self, train_ratings: DataFrame) -> str:
        """What a checkpoint must match to be resumed: the data and every param that shapes the model."""
        hashed = [USER, ITEM, RATING, *([WEIGHT] if WEIGHT in train_ratings.columns else [])]
        data = train_ratings.agg(F.count(F.lit(1)), F.sum(F.pmod(F.xxhash64(*hashed), F.lit(2**31)))).first()
        unshaping = ("maxIter", "tol", "checkpointDir", "checkpointInterval", "predictionCol", "coldStartStrategy")
        params = {k: v for k, v in self._shared_params().items() if k not in unshaping}
        start = self.getInitialModel()
        params["initialModel"] = start if isinstance(start, str) or start is None else start.uid
        # The state schema too: a checkpoint written by a cfspark with other state columns is not resumed.
        text = json.dumps(
            {"params": params, "rows": data[0], "checksum": data[1], "state_schema": OUT_SCHEMA}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def prepare(self, train_ratings: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame, float]:
        """What training fits, per loss: (targets, item_stats, baseline, global_baseline).

        baseline is (item, baseline, ratings): the per-item term and the item's rating count.

        mse: y = y' = rating − μ_i with no offset; the baseline is μ_i, shrunk by meanPrior.
        bce: y = the label, with o_i added to each score; the baseline is o_i.
        targets' weight is train_ratings' own weight column (each rating's a_r), or null (1).
        """
        weight = row_weight(train_ratings) if WEIGHT in train_ratings.columns else F.lit(None).cast("double")
        if self.getLoss() == "mse":
            a = row_weight(train_ratings)
            glob = float(train_ratings.agg(F.sum(a * F.col(RATING)) / F.sum(a)).first()[0])
            stats = item_means(train_ratings, prior=self.getMeanPrior(), global_mean=glob).cache()
            no_offset = F.lit(None).cast("double").alias(OFFSET)
            targets = normalise(train_ratings, stats).select(
                USER, ITEM, F.col(NORMALISED).alias(TARGET), no_offset, weight.alias(WEIGHT)
            )
            return (
                targets,
                stats,
                stats.select(ITEM, F.col(ITEM_MEAN).alias(BASELINE), ITEM_RATINGS),
                glob,
            )
        rate = global_rate(train_ratings)  # weighted, as the loss is
        with_offset = self.getItemOffset()
        stats = item_offsets(train_ratings, prior=self.getOffsetPrior(), rate=rate, enabled=with_offset).cache()
        offset = F.col(ITEM_OFFSET) if with_offset else F.lit(None).cast("double")
        targets = train_ratings.join(stats.select(ITEM, ITEM_OFFSET), ITEM).select(
            USER, ITEM, F.col(RATING).alias(TARGET), offset.alias(OFFSET), weight.alias(WEIGHT)
        )
        glob = math.log(rate / (1 - rate)) if with_offset else 0.0
        baseline = stats.select(ITEM, F.col(ITEM_OFFSET).alias(BASELINE), F.col(LABELLED).alias(ITEM_RATINGS))
        return targets, stats, baseline, glob

    def fit_validated(
        self, train_ratings: DataFrame, *, on_iteration: Callable[[CFModel], dict] | None = None
    ) -> CFModel:
        """Fit on already validated (user, item, rating) rows with cfspark's internal names.

        on_iteration, if given, is called with the model as it stands after each iteration
        and returns extra fields for that iteration's history entry; its time is not counted.
        """
        if self.getLoss() == "bce" and self.getExposure():
            return self._fit_with_exposure(train_ratings, on_iteration)
        if self.getRegParam() == AUTO:
            reg, path = self.choose_reg(train_ratings)
            model = self._with(regParam=reg).fit_validated(train_ratings, on_iteration=on_iteration)
            model.summary["reg_path"] = path
            return model
        began = time.perf_counter()
        auto = 0 in (self.getNumUserBlocks(), self.getNumItemBlocks())
        num_ratings = train_ratings.count() if auto else None
        if self.one_task(num_ratings):
            return self._fit_one_task(train_ratings, began, on_iteration)
        checkpointer = None
        if self.getCheckpointDir() and self.getCheckpointInterval() > 0:
            with phase(train_ratings.sparkSession, "prepare"):
                checkpointer = Checkpointer(
                    train_ratings.sparkSession, self.getCheckpointDir(), self.getCheckpointInterval(),
                    self.fingerprint(train_ratings),
                )  # fmt: skip
        blocks, stats, global_baseline = self.setup(train_ratings, num_ratings=num_ratings)
        user_cfg, item_cfg = self.step_config("user"), self.step_config("item")
        start = self._warm_start(blocks, user_cfg, item_cfg)

        def model(result: TrainResult, *, final: bool) -> CFModel:
            return self.model_from(result, blocks, stats, global_baseline, train_ratings, final=final)

        watch = (lambda live: on_iteration(model(live, final=False))) if on_iteration else None
        result = train(
            blocks, user_cfg, item_cfg, max_iter=self.getMaxIter(), checkpointer=checkpointer,
            on_iteration=watch, began=began, tol=self.getTol(), start_from=start,
        )  # fmt: skip
        fitted = model(result, final=True)
        blocks.unpersist()
        for df in (result.user_out, result.item_out):
            df.unpersist()
        return fitted

    def _fit_with_exposure(self, train_ratings: DataFrame, on_iteration: Callable[[CFModel], dict] | None) -> CFModel:
        """bce with exposure: two fits through the same engine, the preference model on the
        labelled pairs (P(like | shown)) and the exposure model on labelled-or-not pairs
        (data/exposure.py: P(exposed)); the model ranks by their product.

        Labels that are all 1 (positive-only data) have no preference to learn: the model is
        then the exposure model alone, and its predictions are P(exposed) (summary positive_only).
        """
        plain = self._with(exposure=False)
        earlier = self.getInitialModel()
        earlier = CFModel.load(earlier) if isinstance(earlier, str) else earlier
        exposure_fit = plain._with(regParam=self.getExposureRegParam(), predictionCol=P_EXPOSED)
        exposure_fit.clear(exposure_fit.initialModel)
        if earlier is not None and (earlier.exposure_model is not None or earlier.summary.get("positive_only")):
            # a positive-only model is an exposure model itself
            exposure_fit.setInitialModel(earlier.exposure_model or earlier)
        if self.getCheckpointDir():  # each fit resumes from its own checkpoints (the trainer's are iter-*)
            exposure_fit = exposure_fit._with(checkpointDir=self.getCheckpointDir().rstrip("/") + "/exposure")
        positive_only = train_ratings.filter(F.col(RATING) != 1.0).limit(1).count() == 0
        exposed = exposure_labels(
            train_ratings, per_labelled=self.getExposureNegatives(), sampling=self.getNegativeSampling(),
            weight=self.getNegativeWeight(), seed=self.getSeed(),
        ).cache()  # fmt: skip
        exposure = exposure_fit.fit_validated(exposed, on_iteration=on_iteration if positive_only else None)
        exposure.training_pairs = None  # its sampled zeros are not pairs to exclude from recommendations
        exposed.unpersist()
        if positive_only:
            exposure.summary["positive_only"] = True
            exposure.training_pairs = _pairs(train_ratings)
            return self._copyValues(exposure)
        preference = plain.fit_validated(train_ratings, on_iteration=on_iteration)
        preference.exposure_model = exposure
        preference.summary["exposure"] = {k: exposure.summary.get(k) for k in ("reg", "history", "stop_reason")}
        return preference._set(exposure=True)

    def one_task(self, num_ratings: int | None) -> bool:
        """Whether a fit of num_ratings training ratings runs whole inside one task
        (train/one_task.py): both block counts left to the data (0), at most ONE_TASK_RATINGS
        ratings (nor more than maxBlockRatings), and no warm start."""
        if self.getNumUserBlocks() or self.getNumItemBlocks() or self.getInitialModel() is not None:
            return False
        return num_ratings is not None and num_ratings <= min(ONE_TASK_RATINGS, self.getMaxBlockRatings())

    def _fit_one_task(
        self, train_ratings: DataFrame, began: float, on_iteration: Callable[[CFModel], dict] | None
    ) -> CFModel:
        """The whole fit in one task. Checkpoints are not written (nothing to resume in a
        fit this small), and on_iteration sees only the final model, in the last history entry."""
        spark = train_ratings.sparkSession
        with phase(spark, "prepare"):
            targets, stats, _, global_baseline = self.prepare(train_ratings)
        with phase(spark, "one-task"):
            user_factors, item_factors, record = fit_one_task(
                targets, self.step_config("user"), self.step_config("item"),
                max_iter=self.getMaxIter(), tol=self.getTol(), seed=self.getSeed(),
            )  # fmt: skip
        history, stop_reason = record["history"], record["stop"]
        if not math.isfinite(history[-1]["train_loss"]):
            raise diverged(history[-1]["train_loss"], len(history))
        # The task timed its iterations; the rest of the wall time until now was setup.
        total = time.perf_counter() - began
        setup = total - history[-1]["elapsed"]
        for entry in history:  # the task's progress, told once it is back
            entry["elapsed"] = round(entry["elapsed"] + setup, 3)
            log.info("iteration %d/%d: train loss %.6g (%.2f s, in one task)",
                     entry["iteration"], self.getMaxIter(), entry["train_loss"], entry["seconds"])  # fmt: skip
        log.info("training stopped after %d iterations: %s", len(history), stop_reason)
        log.info("one-task fit: %.2f s of iterations, %.2f s in all", history[-1]["elapsed"] - setup, total)
        summary = {
            "reg": self.getRegParam(),
            "history": history,
            "stop_reason": stop_reason,
            "setup_seconds": round(setup, 3),
            "resumed_from": 0,
            "num_user_blocks": 1,
            "num_item_blocks": 1,
            "num_users": record["users"],  # what top-N would otherwise count
            "num_items": record["items"],
            "one_task": True,
        }
        fitted = self._model(user_factors, item_factors, stats, global_baseline, train_ratings, summary)
        if on_iteration:
            history[-1].update(on_iteration(fitted))
        return fitted

    def _warm_start(self, blocks: Blocks, user_cfg: StepConfig, item_cfg: StepConfig):
        """initialModel's factors as train()'s start_from: a function, so that a resumable
        checkpoint of this fit wins and the warm start is then never built."""
        start = self.getInitialModel()
        if start is None:
            return None
        earlier = CFModel.load(start) if isinstance(start, str) else start
        if earlier.getRank() != self.getRank():
            raise ValueError(f"initialModel has rank {earlier.getRank()}, but this fit's rank is {self.getRank()}")
        return lambda: warm_start(blocks, earlier.user_factors, earlier.item_factors, user_cfg, item_cfg)

    def setup(self, train_ratings: DataFrame, *, num_ratings: int | None = None) -> tuple[Blocks, DataFrame, float]:
        """What training reads, built once: the blocks, the item table and the global baseline.

        num_ratings, the training ratings' count if already known, sizes blocks left to the data."""
        spark = train_ratings.sparkSession
        with phase(spark, "prepare"):
            targets, stats, baseline, global_baseline = self.prepare(train_ratings)
            users, items = self.getNumUserBlocks(), self.getNumItemBlocks()
            if 0 in (users, items) and num_ratings is None:
                num_ratings = train_ratings.count()
            auto = blocks_for(num_ratings) if 0 in (users, items) else 0
        blocks = build_blocks(
            targets, baseline, num_user_blocks=users or auto, num_item_blocks=items or auto,
            seed=self.getSeed(), max_block_ratings=self.getMaxBlockRatings(), num_ratings=num_ratings,
        )  # fmt: skip
        return blocks, stats, global_baseline

    def model_from(
        self,
        result: TrainResult,
        blocks: Blocks,
        stats: DataFrame,
        global_baseline: float,
        train_ratings: DataFrame | None,
        *,
        final: bool,
    ) -> CFModel:
        """The model that a train() result stands for.

        final: the factor tables are materialised in Spark's block store (localCheckpoint), so
        the model never reads the fit's blocks, state or checkpoint files again: a later fit
        into the same checkpointDir, or deleting it, leaves this model as it is.
        """
        rank = self.getRank()
        user_factors = factor_table(result.user_state(), blocks.user_index, USER, rank, side="user")
        item_factors = factor_table(result.item_state(), blocks.item_index, ITEM, rank, side="item")
        if final:
            level = checkpoint_level(blocks.users.sparkSession)
            user_factors = user_factors.localCheckpoint(eager=True, storageLevel=level)
            item_factors = item_factors.localCheckpoint(eager=True, storageLevel=level)
        summary = {
            "reg": self.getRegParam(),
            "history": result.history,
            "stop_reason": result.stop_reason,
            "setup_seconds": result.setup_seconds,
            "resumed_from": result.resumed_from,
            "num_user_blocks": blocks.num_user_blocks,
            "num_item_blocks": blocks.num_item_blocks,
        }
        return self._model(user_factors, item_factors, stats, global_baseline, train_ratings, summary)

    def _model(
        self,
        user_factors: DataFrame,
        item_factors: DataFrame,
        stats: DataFrame,
        global_baseline: float,
        train_ratings: DataFrame | None,
        summary: dict,
    ) -> CFModel:
        model = CFModel(
            user_factors=user_factors,
            item_factors=item_factors,
            item_stats=stats,
            global_baseline=global_baseline,
            training_pairs=_pairs(train_ratings),
            summary=summary,
        )
        return self._copyValues(model)

    def choose_reg(self, train_ratings: DataFrame) -> tuple[float, list[dict]]:
        """λ for regParam = "auto", and the path that chose it: [{reg, metric, iterations}].

        A hashed VALIDATION_FRACTION of train_ratings is held out; the rest is blocked once,
        and REG_PATH is walked from strong to weak λ, each warm-started from the last, so the
        whole path costs about one fit. The walk stops at the first λ that validates worse than
        the best so far (by more than PATH_SLACK), and the best λ wins, on validation RMSE (mse) or logloss
        (bce). Only train_ratings is read: a test split never reaches this.
        """
        fit_part, held = split_ratings(
            train_ratings, test_fraction=VALIDATION_FRACTION, seed=self.getSeed() + VALIDATION_SEED
        )
        fit_part, held = fit_part.cache(), held.cache()
        metric = "rmse" if self.getLoss() == "mse" else "logloss"
        path: list[dict] = []
        blocks, stats, global_baseline = self.setup(fit_part)
        result = None
        for reg in REG_PATH:
            before = result
            result = train(
                blocks, self.step_config("user", reg), self.step_config("item", reg), max_iter=PATH_ITER,
                tol=self.getTol(), start_from=(before.user_out, before.item_out) if before else None,
            )  # fmt: skip
            if before:  # the warm start has been read: its checkpointed tables can go
                before.user_out.unpersist(), before.item_out.unpersist()
            step = self._with(regParam=reg).model_from(result, blocks, stats, global_baseline, None, final=False)
            score = pointwise_metrics(step, held)
            path.append({"reg": reg, metric: score[metric], "iterations": len(result.history)})
            log.info("automatic λ: reg %g gives validation %s %.6g", reg, metric, score[metric])
            if _worse(path[-1][metric], min((p[metric] for p in path if p[metric] is not None), default=math.inf)):
                break
        best = min(path, key=lambda p: math.inf if p[metric] is None else p[metric])
        log.info("automatic λ: chose reg = %g", best["reg"])
        for df in (fit_part, held, stats, result.user_out, result.item_out):
            df.unpersist()
        blocks.unpersist()
        return best["reg"], path


def _pairs(train_ratings: DataFrame | None) -> DataFrame | None:
    """The training pairs a model keeps: the (cached) ratings themselves when they are just
    (user, item, rating), so that model.unpersist() releases the cache fit() made."""
    if train_ratings is None or train_ratings.columns in ([USER, ITEM, RATING], [USER, ITEM, RATING, WEIGHT]):
        return train_ratings
    return train_ratings.select(USER, ITEM, RATING)


def _worse(score: float | None, best: float) -> bool:
    return score is None or score > best * (1 + PATH_SLACK)
