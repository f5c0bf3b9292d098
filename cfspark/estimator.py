"""CollaborativeFilter: the estimator, with pyspark.ml-style parameter names."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks, build_blocks
from cfspark.data.normalise import item_means, normalise
from cfspark.data.offsets import global_rate, item_offsets
from cfspark.data.read import Columns
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings
from cfspark.evaluate import pointwise_metrics
from cfspark.factors import factor_table
from cfspark.model import CFModel
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
    RATING,
    TARGET,
    USER,
)
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.messages import OUT_SCHEMA, StepConfig
from cfspark.train.trainer import TrainResult, train

AUTO = "auto"
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

# The course's model (conf/course.toml holds the same for the job): sum-form λ, the plain
# item mean, a free user bias, no item bias, Adam. λ itself is the caller's to choose.
COURSE_PARAMS = dict(
    regScaling="sum", biasReg=0.0, itemBias=False, meanPrior=0.0, tol=0.0, optimizer="adam", innerSteps=5
)

RATINGS_PER_BLOCK = 3_000_000  # about 100 MB of block arrays per task, and enough tasks to keep cores busy
MIN_BLOCKS, MAX_BLOCKS = 2, 64


def blocks_for(num_ratings: int) -> int:
    """The default block count per side for this many training ratings."""
    return min(MAX_BLOCKS, max(MIN_BLOCKS, math.ceil(num_ratings / RATINGS_PER_BLOCK)))


@dataclass(frozen=True, kw_only=True)
class CollaborativeFilter:
    """Learns item features X, user weights W and user biases b by alternating
    blockwise gradient steps on mean-normalised ratings.

    Parameters
    ----------
    rank : number of latent features k.
    maxIter : alternating iterations (a user half-step and an item half-step each).
    regParam : λ, the L2 weight on W and X, or "auto": chosen on a validation fold carved out of
        the ratings fit() sees (never a test split), walking REG_PATH with warm starts.
    regScaling : "count" (the default: each row's λ is multiplied by its rating count, as in
        ALS-WR and Spark ALS, so one λ serves every data size) or "sum" (the course's λ/2‖·‖²).
    biasReg : λ_b, the L2 weight on the biases b and c, never count-scaled: a prior count of
        pseudo-ratings that shrinks the biases of users and items with few ratings.
    itemBias : learn an item bias c_i on top of the fixed item term (μ_i or o_i).
    meanPrior : mse only: μ_i is shrunk towards the global mean by this many pseudo-ratings
        (0 gives the course's plain item mean).
    tol : stop once the training loss changes by less than this fraction in an iteration
        (0 runs all maxIter iterations).
    loss : "mse" for explicit ratings, "bce" for 0/1 labels.
    itemOffset : bce only: add o_i, the logit of the item's smoothed positive rate, to every score.
    offsetPrior : bce only: strength of the prior that smooths item positive rates.
    optimizer : "adam" (default), "gd", or "newton" (per-row exact ridge step for mse, IRLS for bce).
    learningRate : optimiser step size (not used by newton).
    innerSteps : optimiser steps per half-step with the other side held fixed.
    numUserBlocks, numItemBlocks : how many blocks each side is split into; 0 derives them
        from the number of training ratings (see blocks_for).
    maxBlockRatings : a side gets more blocks when one of its blocks would hold more ratings.
    seed : seed of the hashed initial factors.
    initScale : standard deviation of the initial W and X.
    checkpointDir : where factors are checkpointed ("" for no checkpoints).
    checkpointInterval : iterations between checkpoints.
    userCol, itemCol, ratingCol, predictionCol : column names.
    """

    rank: int = 10
    maxIter: int = 20  # pyspark.ml naming
    regParam: float | str = 0.1
    regScaling: str = "count"
    biasReg: float = 5.0
    itemBias: bool = True
    meanPrior: float = 20.0
    tol: float = 0.002
    loss: str = "mse"
    optimizer: str = "newton"
    learningRate: float = 0.05
    innerSteps: int = 1
    numUserBlocks: int = 0
    numItemBlocks: int = 0
    maxBlockRatings: int = 10_000_000
    seed: int = 7
    initScale: float = 0.1
    itemOffset: bool = True
    offsetPrior: float = 2.0
    checkpointDir: str = ""
    checkpointInterval: int = 10
    userCol: str = "user"
    itemCol: str = "item"
    ratingCol: str = "rating"
    predictionCol: str = "prediction"

    @property
    def columns(self) -> Columns:
        return Columns(self.userCol, self.itemCol, self.ratingCol)

    def step_config(self, side: str) -> StepConfig:
        return StepConfig(
            side=side,
            rank=self.rank,
            loss=self.loss,
            reg=self.regParam,
            optimizer=self.optimizer,
            learning_rate=self.learningRate,
            inner_steps=self.innerSteps,
            init_scale=self.initScale,
            count_scaled=self.regScaling == "count",
            bias_reg=self.biasReg,
            learn_bias=side == "user" or self.itemBias,
        )

    def fit(self, dataset: DataFrame) -> CFModel:
        """Validate (user, item, rating) rows, keeping id types as they are, and fit."""
        ratings = validate_ratings(
            dataset.select(self.userCol, self.itemCol, self.ratingCol),
            self.columns,
            id_type="keep",
            duplicates="error",
            labels=self.loss == "bce",
        )
        return self.fit_validated(ratings.cache())

    def fingerprint(self, train_ratings: DataFrame) -> str:
        """What a checkpoint must match to be resumed: the data and every param that shapes the model."""
        data = train_ratings.agg(F.count(F.lit(1)), F.sum(F.pmod(F.xxhash64(USER, ITEM, RATING), F.lit(2**31)))).first()
        unshaping = ("maxIter", "tol", "checkpointDir", "checkpointInterval")
        params = {k: v for k, v in asdict(self).items() if k not in unshaping}
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
        """
        if self.loss == "mse":
            glob = float(train_ratings.agg(F.avg(RATING)).first()[0])
            stats = item_means(train_ratings, prior=self.meanPrior, global_mean=glob).cache()
            targets = normalise(train_ratings, stats).withColumn(OFFSET, F.lit(None).cast("double"))
            return (
                targets.withColumnRenamed(NORMALISED, TARGET),
                stats,
                stats.select(ITEM, F.col(ITEM_MEAN).alias(BASELINE), ITEM_RATINGS),
                glob,
            )
        rate = global_rate(train_ratings)
        stats = item_offsets(train_ratings, prior=self.offsetPrior, rate=rate, enabled=self.itemOffset).cache()
        offset = F.col(ITEM_OFFSET) if self.itemOffset else F.lit(None).cast("double")
        targets = train_ratings.join(stats.select(ITEM, ITEM_OFFSET), ITEM).select(
            USER, ITEM, F.col(RATING).alias(TARGET), offset.alias(OFFSET)
        )
        glob = math.log(rate / (1 - rate)) if self.itemOffset else 0.0
        baseline = stats.select(ITEM, F.col(ITEM_OFFSET).alias(BASELINE), F.col(LABELLED).alias(ITEM_RATINGS))
        return targets, stats, baseline, glob

    def fit_validated(
        self, train_ratings: DataFrame, *, on_iteration: Callable[[CFModel], dict] | None = None
    ) -> CFModel:
        """Fit on already validated (user, item, rating) rows with cfspark's internal names.

        on_iteration, if given, is called with the model as it stands after each iteration
        and returns extra fields for that iteration's history entry; its time is not counted.
        """
        if self.regParam == AUTO:
            reg, path = self.choose_reg(train_ratings)
            model = replace(self, regParam=reg).fit_validated(train_ratings, on_iteration=on_iteration)
            model.reg_path = path
            return model
        began = time.perf_counter()
        checkpointer = None
        if self.checkpointDir:
            with phase(train_ratings.sparkSession, "prepare"):
                checkpointer = Checkpointer(
                    train_ratings.sparkSession, self.checkpointDir, self.checkpointInterval,
                    self.fingerprint(train_ratings),
                )  # fmt: skip
        blocks, stats, global_baseline = self.setup(train_ratings)

        def model(result: TrainResult, *, cache: bool) -> CFModel:
            return self.model_from(result, blocks, stats, global_baseline, cache=cache)

        watch = (lambda live: on_iteration(model(live, cache=False))) if on_iteration else None
        result = train(
            blocks, self.step_config("user"), self.step_config("item"), max_iter=self.maxIter,
            checkpointer=checkpointer, on_iteration=watch, began=began, tol=self.tol,
        )  # fmt: skip
        return model(result, cache=True)

    def setup(self, train_ratings: DataFrame) -> tuple[Blocks, DataFrame, float]:
        """What training reads, built once: the blocks, the item table and the global baseline."""
        with phase(train_ratings.sparkSession, "prepare"):
            targets, stats, baseline, global_baseline = self.prepare(train_ratings)
            auto = blocks_for(train_ratings.count()) if 0 in (self.numUserBlocks, self.numItemBlocks) else 0
        blocks = build_blocks(
            targets, baseline, num_user_blocks=self.numUserBlocks or auto, num_item_blocks=self.numItemBlocks or auto,
            seed=self.seed, max_block_ratings=self.maxBlockRatings,
        )  # fmt: skip
        return blocks, stats, global_baseline

    def model_from(
        self, result: TrainResult, blocks: Blocks, stats: DataFrame, global_baseline: float, *, cache: bool
    ) -> CFModel:
        """The model that a train() result stands for."""
        user_factors = factor_table(result.user_state(), blocks.user_index, USER, self.rank, side="user")
        item_factors = factor_table(result.item_state(), blocks.item_index, ITEM, self.rank, side="item")
        return CFModel(
            user_factors=user_factors.cache() if cache else user_factors,
            item_factors=item_factors.cache() if cache else item_factors,
            item_stats=stats,
            global_baseline=global_baseline,
            rank=self.rank,
            columns=self.columns,
            loss=self.loss,
            prediction_col=self.predictionCol,
            blocks=blocks,
            result=result,
            reg_param=self.regParam,
        )

    def choose_reg(self, train_ratings: DataFrame) -> tuple[float, list[dict]]:
        """λ for regParam = "auto", and the path that chose it: [{reg, metric, iterations}].

        A hashed VALIDATION_FRACTION of train_ratings is held out; the rest is blocked once,
        and REG_PATH is walked from strong to weak λ, each warm-started from the last, so the
        whole path costs about one fit. The walk stops at the first λ that validates worse than
        the best so far (by more than PATH_SLACK), and the best λ wins, on validation RMSE (mse) or logloss
        (bce). Only train_ratings is read: a test split never reaches this.
        """
        fit_part, held = split_ratings(
            train_ratings, test_fraction=VALIDATION_FRACTION, seed=self.seed + VALIDATION_SEED
        )
        fit_part, held = fit_part.cache(), held.cache()
        metric = "rmse" if self.loss == "mse" else "logloss"
        path: list[dict] = []
        blocks, stats, global_baseline = self.setup(fit_part)
        result = None
        for reg in REG_PATH:
            step = replace(self, regParam=reg)
            before = result
            result = train(
                blocks, step.step_config("user"), step.step_config("item"), max_iter=PATH_ITER, tol=self.tol,
                start_from=(before.user_out, before.item_out) if before else None,
            )  # fmt: skip
            if before:  # the warm start has been read: its checkpointed tables can go
                before.user_out.unpersist(), before.item_out.unpersist()
            score = pointwise_metrics(step.model_from(result, blocks, stats, global_baseline, cache=False), held)
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


def _worse(score: float | None, best: float) -> bool:
    return score is None or score > best * (1 + PATH_SLACK)
