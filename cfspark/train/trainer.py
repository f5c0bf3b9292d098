"""The alternating loop: a user half-step, then an item half-step, max_iter times.

Each half-step is one cogroup of the cached InBlocks (which do not move) with the
union of the block's own state and the other side's messages (one shuffle, by dest).

Each half-step's output depends on both previous outputs, so its plan would double
in size every iteration. localCheckpoint materialises it on the executors and
restarts the plan from there. Local checkpoints do not survive a lost executor, so
every checkpoint interval the two live tables are also written to storage, from
which a stopped run resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.messages import OUT_SCHEMA, STATE, StepConfig, init_blocks, step_blocks

log = logging.getLogger("cfspark")


@dataclass
class TrainResult:
    """The last state tables of both sides (src = −1 rows hold the params)."""

    user_out: DataFrame
    item_out: DataFrame
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0

    def user_state(self) -> DataFrame:
        return self.user_out.filter(F.col("src") == STATE)

    def item_state(self) -> DataFrame:
        return self.item_out.filter(F.col("src") == STATE)


def settle(df: DataFrame) -> tuple[DataFrame, float, float]:
    """Materialise df with a fresh plan; return it and the summed losses of its state rows."""
    df = df.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)
    row = df.filter(F.col("src") == STATE).agg(F.sum("data_loss"), F.sum("reg_loss")).first()
    return df, float(row[0] or 0.0), float(row[1] or 0.0)


def half_step(inblocks: DataFrame, own_out: DataFrame, other_out: DataFrame, cfg: StepConfig) -> DataFrame:
    incoming = own_out.filter(F.col("src") == STATE).unionByName(other_out.filter(F.col("src") >= 0))
    return inblocks.groupBy("block").cogroup(incoming.groupBy("dest")).applyInArrow(step_blocks(cfg), OUT_SCHEMA)


def train(
    blocks: Blocks,
    user_cfg: StepConfig,
    item_cfg: StepConfig,
    *,
    max_iter: int,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Run (or resume) the alternating loop and return the final state tables."""
    resumed = checkpointer.load() if checkpointer else None
    if resumed and resumed.iteration <= max_iter:
        user_out, item_out, history, start = resumed.user_out, resumed.item_out, resumed.history, resumed.iteration
        log.info("resuming from the checkpoint at iteration %d", start)
    else:
        user_out = settle(blocks.users.mapInArrow(init_blocks(user_cfg, send=False), OUT_SCHEMA))[0]
        item_out = settle(blocks.items.mapInArrow(init_blocks(item_cfg, send=True), OUT_SCHEMA))[0]
        history, start = [], 0

    for iteration in range(start + 1, max_iter + 1):
        began = time.perf_counter()
        user_out, _, user_reg = settle(half_step(blocks.users, user_out, item_out, user_cfg))
        item_out, item_data, item_reg = settle(half_step(blocks.items, item_out, user_out, item_cfg))
        # J after the iteration: data term with the new X and W, both L2 terms.
        entry = {
            "iteration": iteration,
            "train_loss": item_data + item_reg + user_reg,
            "seconds": round(time.perf_counter() - began, 3),
        }
        history.append(entry)
        log.info("iteration %d: train loss %.6g (%.2f s)", iteration, entry["train_loss"], entry["seconds"])
        if checkpointer and checkpointer.due(iteration):
            saved = checkpointer.save(iteration, user_out, item_out, history)
            user_out, item_out = saved.user_out, saved.item_out
    return TrainResult(user_out, item_out, history, resumed_from=start)
