"""The alternating loop: a user half-step, then an item half-step, max_iter times.

Each half-step is, in its plain form, one cogroup of the InBlocks cached in place (which
do not move) with the union of the block's own state and the other side's messages (one
shuffle, by dest).

Each half-step's output depends on both previous outputs, so its plan would double
in size every iteration. localCheckpoint materialises it on the executors and
restarts the plan from there. A local checkpoint lives in executors' block stores and
has no lineage to recompute it from, so on a cluster it is kept on two executors
(MEMORY_AND_DISK_2): one lost executor then costs only a task retry. Every checkpoint
interval the two live tables are also written to storage, from which a stopped run
resumes.

The InBlocks do not cross from the JVM into Python at every half-step: the worker that packs
a block at setup (or else the one that decodes it first) writes it to a file of its executor,
which every Python worker there memory-maps (blocks/cache.py, blocks/files.py), the start reads
only the small columns of blocks kept at setup (start_of), and a half-step first runs on the
state and messages alone (step_cached). Blocks that an executor has no file of (a new
executor, a lost file) come back as MISS rows and run again in a second job, cogrouped with their InBlocks
as before (step_blocks), which also writes their files there. CFSPARK_BLOCK_CACHE (on, cold,
off) and CFSPARK_BLOCK_CACHE_MB, read on the driver, set the mode and a worker's budget.
Under StepConfig.float32 (the float32 Param) both sides' half-steps gather and multiply in
float32, and their messages cross the shuffle as float32.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.blocks.cache import CacheKey, side_keys
from cfspark.blocks.partitioning import PART, partition_key
from cfspark.core.phases import phase
from cfspark.core.plans import one_job
from cfspark.core.schema import BLOCK
from cfspark.train.all_items import gram_messages
from cfspark.train.arrow_bodies import MISS, OUT_SCHEMA, STATE, init_blocks, step_blocks, step_cached
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.history import HalfStep, converged, diverged, history_entry, reached_max_iter
from cfspark.train.sampled import at_iteration, coarse_iterations
from cfspark.train.step import StepConfig

log = logging.getLogger("cfspark")


@dataclass
class TrainResult:
    """The last state tables of both sides (src = −1 rows hold the params)."""

    user_out: DataFrame
    item_out: DataFrame
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    setup_seconds: float = 0.0  # before the first iteration: blocks built and factors initialised
    stop_reason: str = ""  # why the loop ended: converged under tol, or max_iter reached

    def user_state(self) -> DataFrame:
        return self.user_out.filter(F.col("src") == STATE)

    def item_state(self) -> DataFrame:
        return self.item_out.filter(F.col("src") == STATE)


def checkpoint_level(spark) -> StorageLevel:
    """Replicated on a cluster, where an executor can be lost alone; local mode has one block store."""
    try:
        master = spark.conf.get("spark.master", "local")
    except Exception:  # a Connect server that hides it: replicate, which is safe everywhere
        master = ""
    one_store = master == "local" or master.startswith("local[")  # not local-cluster[...]
    return StorageLevel.MEMORY_AND_DISK if one_store else StorageLevel.MEMORY_AND_DISK_2


def cache_keys(blocks: Blocks) -> dict[str, CacheKey | None]:
    """Per side, how its half-steps use the workers' block cache (None: not at all), as the
    environment says now (blocks/cache.py's side_keys)."""
    return side_keys(blocks.users.sparkSession, blocks.key)


def start_of(blocks: Blocks, side: str, cfg: StepConfig, keys: dict[str, CacheKey | None]) -> DataFrame:
    """One side's first state table from the hashed init (the items' with their messages),
    planned: over the InBlocks' small columns where setup kept the blocks, else over the
    InBlocks, whose workers then keep them."""
    kept = blocks.kept_view(side, keys[side])
    body = init_blocks(cfg, send=side == "item", key=keys[side] if kept is None else None)
    return (blocks.inblocks(side) if kept is None else kept).mapInArrow(body, OUT_SCHEMA)


def inblocks(blocks: Blocks, side: str, keys: dict[str, CacheKey | None]) -> DataFrame:
    """The InBlocks a side's half-steps read: with the workers' cache, only the blocks that
    missed, filtered and shuffled with their messages; without it, every block at every
    half-step, so then the copy cached in place, which the cogroup leaves where it is."""
    if keys[side] is None:
        return blocks.in_place(side)
    return blocks.inblocks(side)


def settle(df: DataFrame) -> tuple[DataFrame, HalfStep]:
    """Materialise df with a fresh plan; return it and what its tasks reported."""
    df, report, _ = _settle(df)
    return df, report


def settle_all(*tables: DataFrame) -> list[DataFrame]:
    """Materialise several state tables with fresh plans in one job, as settle does one: a
    job's fixed cost (about 0.2 s on the driver, more than an init's tasks) is paid once,
    and their tasks share the cores. What their tasks report is not read (the inits')."""
    level = checkpoint_level(tables[0].sparkSession)
    kept = [df.localCheckpoint(eager=False, storageLevel=level) for df in tables]
    # The collect of the union computes every table's partitions, which stores them; its rows
    # are one per block and message.
    functools.reduce(DataFrame.unionByName, [df.select("dest", "src") for df in kept]).collect()
    return kept


def _settle(df: DataFrame) -> tuple[DataFrame, HalfStep, list[int]]:
    """settle, and the blocks that came back as MISS rows."""
    # Not eager: the collect below is the one job that computes the half-step, and Spark
    # stores the checkpointed partitions as that job computes them. An eager checkpoint
    # would add a second job to every half-step, and on small data a job's fixed cost is
    # most of a half-step.
    df = df.localCheckpoint(eager=False, storageLevel=checkpoint_level(df.sparkSession))
    # One row per block and message, summed here: a collect is one stage, where an
    # aggregate would add a shuffle and a second stage to every half-step.
    fields = ("data_loss", "reg_loss", "kernel_seconds", "codec_seconds")
    rows = df.select("dest", "src", *fields, "moved", F.length("params").alias("bytes")).collect()
    states = [r for r in rows if r["src"] == STATE]
    sums = [sum(r[c] for r in states) for c in fields]
    message_bytes = sum(r["bytes"] for r in rows if r["src"] >= 0)
    missed = sorted(r["dest"] for r in rows if r["src"] == MISS)
    moved = sum(r["moved"] for r in states)
    return df, HalfStep(*sums, message_mb=message_bytes / 2**20, moved=moved), missed


def _incoming(own_out: DataFrame, other_out: DataFrame, num_blocks: int, cfg: StepConfig) -> DataFrame:
    incoming = own_out.filter(F.col("src") == STATE).unionByName(other_out.filter(F.col("src") >= 0))
    if cfg.all_items:  # and the other side's Gramian, in parts (train/all_items.py)
        states = other_out.filter(F.col("src") == STATE)
        incoming = incoming.unionByName(gram_messages(states, cfg.width, num_blocks, OUT_SCHEMA))
    return incoming.withColumn(PART, partition_key(F.col("dest"), num_blocks))


def half_step(
    inblocks: DataFrame, own_out: DataFrame, other_out: DataFrame, cfg: StepConfig, num_blocks: int
) -> DataFrame:
    """One half-step as one cogroup of the InBlocks with the state and messages (one job)."""
    # Grouped by the blocks' partition keys, as the InBlocks are partitioned: they stay in place.
    incoming = _incoming(own_out, other_out, num_blocks, cfg)
    return inblocks.groupBy(PART).cogroup(incoming.groupBy(PART)).applyInArrow(step_blocks(cfg), OUT_SCHEMA)


def run_half_step(
    inblocks: DataFrame, own_out: DataFrame, other_out: DataFrame, cfg: StepConfig, num_blocks: int,
    key: CacheKey | None,
) -> tuple[DataFrame, HalfStep]:  # fmt: skip
    """One half-step, settled: on the workers' kept blocks where they hold them, and from
    the InBlocks for the blocks whose worker did not (MISS rows), in a second job."""
    if key is None:
        return settle(half_step(inblocks, own_out, other_out, cfg, num_blocks))
    incoming = _incoming(own_out, other_out, num_blocks, cfg)
    # One task per block, block b in partition b: the same layout as the InBlocks'.
    fast = incoming.repartition(num_blocks, PART).groupBy(PART).applyInArrow(step_cached(cfg, key), OUT_SCHEMA)
    # Its one shuffle has the block count's partitions: one job, with no map-stage job before it.
    with one_job(fast.sparkSession):
        out, report, missed = _settle(fast)
    if not missed:
        return out, report
    report = replace(report, cache_misses=len(missed))
    log.debug("%s half-step: blocks %s read from their InBlocks", cfg.side, missed)
    again = F.col("dest").isin(missed)
    rerun = inblocks.filter(F.col(BLOCK).isin(missed)).groupBy(PART).cogroup(
        incoming.filter(again).groupBy(PART)
    ).applyInArrow(step_blocks(cfg, key), OUT_SCHEMA)  # fmt: skip
    rerun, second = settle(rerun)
    both = out.filter(F.col("src") != MISS).unionByName(rerun)
    return both, HalfStep(*(a + b for a, b in zip(astuple(report), astuple(second), strict=True)))


def train(
    blocks: Blocks,
    user_cfg: StepConfig,
    item_cfg: StepConfig,
    *,
    max_iter: int,
    checkpointer: Checkpointer | None = None,
    on_iteration: Callable[[TrainResult], dict] | None = None,
    began: float | None = None,
    tol: float = 0.0,
    start_from: tuple[DataFrame, DataFrame] | Callable[[], tuple[DataFrame, DataFrame]] | None = None,
    settle_at: tuple[float, int] | None = None,
) -> TrainResult:
    """Run (or resume) the alternating loop and return the final state tables.

    on_iteration, if given, sees the live result after every iteration and returns extra
    fields for that iteration's history entry (a benchmark's test metric, say). Its own
    time is left out of the clock: history's "elapsed" counts training only, from
    `began` (a time.perf_counter() value; default: when train was called).

    tol > 0 ends the loop once an iteration changes the training loss J by less than tol
    times its previous value; max_iter stays the ceiling. Why it stopped is in the last
    history entry ("stop") and in the result's stop_reason.

    start_from, a (user_out, item_out) pair of an earlier train() on the same blocks, is a
    warm start: the loop continues from those factors (with these configs) instead of the
    hashed initial ones. It may be a function that builds the pair, called only when no
    checkpoint of this fit is found to resume from.

    settle_at, a (bound, number of training ratings) pair, adds the one-task fit's settle
    rule (train/one_task.py) to tol: the loop also stops once an iteration moves the
    training ratings' predictions by at most bound in root mean square. Each half-step
    reports Σ Δ² of the moves it made, the other side held at the values it solved
    against; an iteration's move is the user half-step's plus the item half-step's, so
    the sum of their RMS bounds it (the triangle inequality), with no job of its own.
    """
    began = time.perf_counter() if began is None else began
    paused = 0.0
    spark = blocks.users.sparkSession
    keys = cache_keys(blocks)
    if settle_at is not None:
        user_cfg, item_cfg = replace(user_cfg, track_moves=True), replace(item_cfg, track_moves=True)
    with phase(spark, "init"):
        shape = blocks.requested  # with the fingerprint, what lays out a checkpoint's state rows
        resumed = checkpointer.load(shape) if checkpointer else None
        if resumed and resumed.iteration <= max_iter:  # a stopped run resumes, warm-started or not
            user_out, item_out, history, start = resumed.user_out, resumed.item_out, resumed.history, resumed.iteration
            log.info("resuming from the checkpoint at iteration %d", start)
        elif start_from is not None:
            (user_out, item_out), history, start = (start_from() if callable(start_from) else start_from), [], 0
        else:
            user_out, item_out = settle_all(*(start_of(blocks, side, cfg, keys) for side, cfg in
                                             (("user", user_cfg), ("item", item_cfg))))  # fmt: skip
            history, start = [], 0
    setup = time.perf_counter() - began

    stop_reason = reached_max_iter(max_iter)
    coarse = coarse_iterations(user_cfg, item_cfg)
    for iteration in range(start + 1, max_iter + 1):
        step_began = time.perf_counter()
        with phase(spark, "user-steps"):
            user_out, users = run_half_step(
                inblocks(blocks, "user", keys), user_out, item_out, at_iteration(user_cfg, iteration),
                blocks.num_user_blocks, keys["user"],
            )  # fmt: skip
        half_way = time.perf_counter()
        with phase(spark, "item-steps"):
            item_out, items = run_half_step(
                inblocks(blocks, "item", keys), item_out, user_out, at_iteration(item_cfg, iteration),
                blocks.num_item_blocks, keys["item"],
            )  # fmt: skip
        now = time.perf_counter()
        entry = history_entry(
            iteration, users, items, seconds=now - step_began, elapsed=now - began - paused,
            user_seconds=half_way - step_began,
        )  # fmt: skip
        history.append(entry)
        done = iteration - start
        left = (max_iter - iteration) * (time.perf_counter() - began - paused - setup) / done
        log.info(
            "iteration %d/%d: train loss %.6g (%.2f s; at most %.0f s left)",
            iteration, max_iter, entry["train_loss"], entry["seconds"], left,
        )  # fmt: skip
        if not math.isfinite(entry["train_loss"]):  # diverged: stop before checkpointing it
            raise diverged(entry["train_loss"], iteration)
        # The settle bound adds up both half-steps' moves, which overstates the iteration's move
        # while the factors drift along W → WA, X → XA⁻ᵀ; tol still ends such a fit.
        reason = (settle_at and settled(entry, users, items, *settle_at)) or converged(history[coarse:], tol)
        if reason:
            stop_reason = reason
        if reason or iteration == max_iter:
            entry["stop"] = stop_reason
        if checkpointer and checkpointer.due(iteration):
            saved = checkpointer.save(iteration, user_out, item_out, history, shape)
            user_out, item_out = saved.user_out, saved.item_out
        if on_iteration:
            watch = time.perf_counter()
            entry.update(on_iteration(TrainResult(user_out, item_out, history, start, setup)))
            paused += time.perf_counter() - watch
        if reason:
            break
    log.info("training stopped after %d iterations: %s", len(history), stop_reason)
    return TrainResult(
        user_out, item_out, history, resumed_from=start, setup_seconds=round(setup, 3), stop_reason=stop_reason
    )


def settled(entry: dict, users: HalfStep, items: HalfStep, bound: float, num_ratings: int) -> str | None:
    """The stop reason if the iteration's half-steps moved the predictions by at most bound
    (RMS over num_ratings, bounded by the sum of the two half-steps' RMS), else None; the
    bound on the move goes into the history entry."""
    moved = math.sqrt(users.moved / max(num_ratings, 1)) + math.sqrt(items.moved / max(num_ratings, 1))
    entry["moved"] = moved
    return f"settled: the predictions moved by at most {moved:.3g} (RMS), under {bound:.3g}" if moved <= bound else None
