"""The blockwise fit: ratings packed into user and item blocks once, then the distributed
alternating loop (train/trainer.py), with checkpoints to resume from and a warm start."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks, build_blocks
from cfspark.core.phases import phase
from cfspark.core.schema import ITEM, RATING, USER, WEIGHT
from cfspark.core.slots import task_slots
from cfspark.fit.record import FitRecord, fit_summary, training_pairs
from cfspark.fit.settings import FitSettings
from cfspark.fit.targets import prepare
from cfspark.fit.warm import warm_start_from
from cfspark.train.arrow_bodies import OUT_SCHEMA
from cfspark.train.checkpoint import Checkpointer, checkpointed_blocks
from cfspark.train.factors import factor_table
from cfspark.train.sampled import with_totals
from cfspark.train.trainer import TrainResult, checkpoint_level, train

# The fewest ratings a block the fit chooses holds, where the cluster has more task slots than
# that would fill: about 0.16 task-seconds of a half-step's work (at 27.6M, 22M ratings took
# 3.5 task-seconds a half-step), several times a task's fixed cost, so that more blocks still
# mean less time.
MIN_BLOCK_RATINGS = 1_000_000
# The block counts a fit chooses by itself span these; maxBlockRatings may split further,
# up to blocks/placement.py's MAX_SPLIT_BLOCKS.
MIN_AUTO_BLOCKS, MAX_AUTO_BLOCKS = 2, 64
# Params that do not change what a fit computes, left out of a checkpoint's fingerprint.
UNSHAPING = ("maxIter", "tol", "checkpointDir", "checkpointInterval", "predictionCol", "coldStartStrategy")


def blocks_for(num_ratings: int, slots: int, max_block_ratings: int) -> int:
    """The default block count per side for this many training ratings on a cluster of this
    many task slots (core/slots.py): the fewest multiple of the slots whose blocks each hold at
    most max_block_ratings, so that every wave of a half-step's tasks fills the cores and no
    more blocks than memory needs send each factor vector to more of them; but no block below
    MIN_BLOCK_RATINGS where the slots outnumber those (a task's fixed cost would outweigh its
    work). On 2 cores an iteration at 22M training ratings took about 0.85 × the time with 2 + 2
    blocks as with 4 + 4, and 0.9 × with 4 + 4 as with 8 + 8; at 4M one of 2 + 2 took 0.42 × that
    of 16 + 16 (docs/benchmarks.md "One wave of blocks at 27.6M", "Blocks sized to the task
    slots", "Scaling at 1M, 5M and 27.6M ratings, quiet")."""
    memory = math.ceil(num_ratings / max_block_ratings)  # the fewest blocks that hold every rating
    waves = slots * math.ceil(memory / slots)
    return min(MAX_AUTO_BLOCKS, max(MIN_AUTO_BLOCKS, memory, min(waves, num_ratings // MIN_BLOCK_RATINGS)))


def block_counts(settings: FitSettings, num_ratings: int | None, spark: SparkSession) -> tuple[int, int]:
    """The (user, item) block counts a fit asks setup for: numUserBlocks and numItemBlocks
    where set; where left to the data (0), those of the checkpoint in checkpointDir, if there
    is one, so that a rerun on a cluster of another size still resumes it (its state rows are
    laid out by them), else blocks_for's for this cluster. num_ratings is needed only then."""
    users, items = settings.numUserBlocks, settings.numItemBlocks
    if users and items:
        return users, items
    keeps = settings.checkpointDir and settings.checkpointInterval > 0
    earlier = checkpointed_blocks(settings.checkpointDir) if keeps else None
    if earlier is None:
        auto = blocks_for(num_ratings, task_slots(spark), settings.maxBlockRatings)
        earlier = (auto, auto)
    return users or earlier[0], items or earlier[1]


def fingerprint(settings: FitSettings, train_ratings: DataFrame) -> str:
    """What a checkpoint must match to be resumed: the data and every Param that shapes the model."""
    hashed = [USER, ITEM, RATING, *([WEIGHT] if WEIGHT in train_ratings.columns else [])]
    data = train_ratings.agg(F.count(F.lit(1)), F.sum(F.pmod(F.xxhash64(*hashed), F.lit(2**31)))).first()
    params = {k: v for k, v in settings.params().items() if k not in UNSHAPING}
    # The state schema too: a checkpoint written by a cfspark with other state columns is not resumed.
    text = json.dumps({"params": params, "rows": data[0], "checksum": data[1], "state_schema": OUT_SCHEMA},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def setup(
    settings: FitSettings,
    train_ratings: DataFrame,
    *,
    num_ratings: int | None = None,
    global_mean: float | None = None,
    item_sums: DataFrame | None = None,
) -> tuple[Blocks, DataFrame, float]:
    """What training reads, built once: the blocks, the item table and the global baseline.

    num_ratings, the training ratings' count if already known, sizes blocks left to the data;
    global_mean (mse), their weighted mean, and item_sums, their item sums (TargetStats.item_sums),
    if already known, save a pass over them each."""
    spark = train_ratings.sparkSession
    with phase(spark, "prepare"):
        prepared = prepare(settings, train_ratings, global_mean, item_sums)
        num_ratings = num_ratings if num_ratings is not None else prepared.num_ratings
        if 0 in (settings.numUserBlocks, settings.numItemBlocks) and num_ratings is None:
            num_ratings = train_ratings.count()
        users, items = block_counts(settings, num_ratings, spark)
    blocks = build_blocks(
        prepared.targets, prepared.baseline, num_user_blocks=users, num_item_blocks=items,
        seed=settings.seed, max_block_ratings=settings.maxBlockRatings, num_ratings=num_ratings,
        label_counts=settings.draws is not None, carries=prepared.carries,
    )  # fmt: skip
    return blocks, prepared.item_stats, prepared.global_baseline


def record_of(
    settings: FitSettings,
    result: TrainResult,
    blocks: Blocks,
    stats: DataFrame,
    global_baseline: float,
    train_ratings: DataFrame | None,
    *,
    final: bool,
) -> FitRecord:
    """The record that a train() result stands for.

    final: the factor tables are materialised in Spark's block store (localCheckpoint), so
    the model never reads the fit's blocks, state or checkpoint files again: a later fit
    into the same checkpointDir, or deleting it, leaves this model as it is.
    """
    rank = settings.rank
    user_factors = factor_table(result.user_state(), blocks, rank, side="user")
    item_factors = factor_table(result.item_state(), blocks, rank, side="item")
    if final:
        level = checkpoint_level(blocks.users.sparkSession)
        user_factors = user_factors.localCheckpoint(eager=True, storageLevel=level)
        item_factors = item_factors.localCheckpoint(eager=True, storageLevel=level)
    summary = fit_summary(
        settings.regParam, result.history, result.stop_reason, setup_seconds=result.setup_seconds,
        resumed_from=result.resumed_from, num_user_blocks=blocks.num_user_blocks,
        num_item_blocks=blocks.num_item_blocks,
    )  # fmt: skip
    return FitRecord(user_factors, item_factors, stats, global_baseline, training_pairs(train_ratings), summary,
                     params=dict(settings.carried), rank=rank)  # fmt: skip


def fit_blockwise(
    settings: FitSettings,
    train_ratings: DataFrame,
    *,
    began: float,
    num_ratings: int | None,
    global_mean: float | None = None,
    item_sums: DataFrame | None = None,
    on_iteration: Callable[[FitRecord], dict] | None = None,
    settle: float | None = None,
    resolve: Callable[[], tuple[FitSettings, float | None]] | None = None,
) -> FitRecord:
    """The distributed fit, checkpointed every checkpointInterval iterations when checkpointDir is set;
    settle, if given (with num_ratings), stops it on the predictions' move instead of tol (train.train);
    global_mean (mse), the ratings' weighted mean, and item_sums, their item sums, if already known,
    save a pass over them each (setup). resolve, if given, is called once the blocks are built
    and gives the settings and settle the fit trains with: the automatic λ search runs beside
    the setup, which neither λ nor the rank shapes (fit/paths.py)."""
    checkpointer = None if resolve is not None else _checkpointer(settings, train_ratings)
    blocks, stats, global_baseline = setup(settings, train_ratings, num_ratings=num_ratings,
                                           global_mean=global_mean, item_sums=item_sums)  # fmt: skip
    if resolve is not None:
        settings, settle = resolve()
        checkpointer = _checkpointer(settings, train_ratings)
    # Fresh 0-labels drawn at the rates of one task holding every label (train/sampled.py).
    user_cfg, item_cfg = (with_totals(settings.step_config(s), blocks.label_totals) for s in ("user", "item"))
    start = warm_start_from(settings, blocks, user_cfg, item_cfg)

    def record(result: TrainResult, *, final: bool) -> FitRecord:
        return record_of(settings, result, blocks, stats, global_baseline, train_ratings, final=final)

    watch = (lambda live: on_iteration(record(live, final=False))) if on_iteration else None
    result = train(
        blocks, user_cfg, item_cfg, max_iter=settings.maxIter, checkpointer=checkpointer,
        on_iteration=watch, began=began, tol=settings.tol, start_from=start,
        settle_at=(settle, num_ratings) if settle is not None and num_ratings else None,
    )  # fmt: skip
    fitted = record(result, final=True)
    blocks.unpersist()
    for df in (result.user_out, result.item_out):
        df.unpersist()
    return fitted


def _checkpointer(settings: FitSettings, train_ratings: DataFrame) -> Checkpointer | None:
    """The fit's checkpoints, when checkpointDir is set, under the fingerprint of these settings."""
    if not (settings.checkpointDir and settings.checkpointInterval > 0):
        return None
    with phase(train_ratings.sparkSession, "prepare"):
        return Checkpointer(
            train_ratings.sparkSession, settings.checkpointDir, settings.checkpointInterval,
            fingerprint(settings, train_ratings),
        )  # fmt: skip
