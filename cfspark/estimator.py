"""CollaborativeFilter: the estimator, with pyspark.ml-style parameter names."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import BASELINE, OFFSET, TARGET, build_blocks
from cfspark.data.normalise import ITEM_MEAN, ITEM_RATINGS, NORMALISED, item_means, normalise
from cfspark.data.offsets import ITEM_OFFSET, global_rate, item_offsets
from cfspark.data.read import Columns
from cfspark.data.validate import ITEM, RATING, USER, validate_ratings
from cfspark.factors import factor_table
from cfspark.model import CFModel
from cfspark.profile import phase
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.messages import OUT_SCHEMA, StepConfig
from cfspark.train.trainer import TrainResult, train

RATINGS_PER_BLOCK = 3_000_000  # about 100 MB of block arrays per task, and enough tasks to keep cores busy
MIN_BLOCKS, MAX_BLOCKS = 4, 64


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
    regParam : λ, the L2 weight on W and X; J sums over ratings, so λ is not scaled by counts.
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
    regParam: float = 10.0
    loss: str = "mse"
    optimizer: str = "adam"
    learningRate: float = 0.05
    innerSteps: int = 5
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
        params = {k: v for k, v in asdict(self).items() if k not in ("maxIter", "checkpointDir", "checkpointInterval")}
        # The state schema too: a checkpoint written by a cfspark with other state columns is not resumed.
        text = json.dumps(
            {"params": params, "rows": data[0], "checksum": data[1], "state_schema": OUT_SCHEMA}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def prepare(self, train_ratings: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame, float]:
        """What training fits, per loss: (targets, item_stats, baseline, global_baseline).

        baseline is (item, baseline, ratings): the per-item term and the item's rating count.

        mse: y = y' = rating − μ_i with no offset; the baseline is μ_i.
        bce: y = the label, with o_i added to each score; the baseline is o_i.
        """
        if self.loss == "mse":
            stats = item_means(train_ratings).cache()
            targets = normalise(train_ratings, stats).withColumn(OFFSET, F.lit(None).cast("double"))
            glob = float(train_ratings.agg(F.avg(RATING)).first()[0])
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
        baseline = stats.select(ITEM, F.col(ITEM_OFFSET).alias(BASELINE), F.col("labelled").alias(ITEM_RATINGS))
        return targets, stats, baseline, glob

    def fit_validated(
        self, train_ratings: DataFrame, *, on_iteration: Callable[[CFModel], dict] | None = None
    ) -> CFModel:
        """Fit on already validated (user, item, rating) rows with cfspark's internal names.

        on_iteration, if given, is called with the model as it stands after each iteration
        and returns extra fields for that iteration's history entry; its time is not counted.
        """
        began = time.perf_counter()
        spark = train_ratings.sparkSession
        with phase(spark, "prepare"):
            targets, stats, baseline, global_baseline = self.prepare(train_ratings)
            auto = blocks_for(train_ratings.count()) if 0 in (self.numUserBlocks, self.numItemBlocks) else 0
            checkpointer = None
            if self.checkpointDir:
                fingerprint = self.fingerprint(train_ratings)
                checkpointer = Checkpointer(spark, self.checkpointDir, self.checkpointInterval, fingerprint)
        blocks = build_blocks(
            targets, baseline, num_user_blocks=self.numUserBlocks or auto, num_item_blocks=self.numItemBlocks or auto,
            seed=self.seed, max_block_ratings=self.maxBlockRatings,
        )  # fmt: skip

        def model(result: TrainResult, *, cache: bool) -> CFModel:
            user_factors = factor_table(result.user_state(), blocks.user_index, USER, self.rank, with_bias=True)
            item_factors = factor_table(result.item_state(), blocks.item_index, ITEM, self.rank, with_bias=False)
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
            )

        watch = (lambda live: on_iteration(model(live, cache=False))) if on_iteration else None
        result = train(
            blocks, self.step_config("user"), self.step_config("item"), max_iter=self.maxIter,
            checkpointer=checkpointer, on_iteration=watch, began=began,
        )  # fmt: skip
        return model(result, cache=True)
