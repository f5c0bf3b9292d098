"""The all-items model for positive-only labels (model.implicit = "all"), in one task.

Every training pair is a 1 whose weight is its confidence (its count's, data/weights.py; a
pair without a count is a count of 1), and every other (user, item) pair a 0 of weight 1:
implicit ALS's model, fitted by kernels/implicit.py's exact half-steps. The kernel can learn
the user and item biases too, but they stay 0 here, as in implicit ALS: learnt, they cost
2 % of NDCG@10 on MovieLens latest-small as counts and did not help on generated play counts.
The record stands where the sampled exposure model's would (fit/exposure.py), and its λ is
that model's, exposureRegParam (count-scaled by each row's positives, as Spark ALS's implicit
mode scales regParam): on MovieLens latest-small as counts NDCG@10 rose from 0.287 at λ = 0.1
to 0.298 at 0.01, and on generated play counts fell from 0.0839 to 0.0829. Its scores are
σ(w·x + b + c), an order over items (monotone in the fitted preference), not a probability.

Small fits run in one task (fit/one_task.py's rule, up to MSE_ONE_TASK_RATINGS pairs), with the
λ and α search in the same task and job, the pairs read into Python once
(rank_search.choose_and_fit_ranking); past SEARCH_RATINGS the search there takes a sample of
the users, and the fit every pair from its factors. Larger ones, or fits
given block counts or a warm start, run blockwise, where each half-step also sums the other
side's Gramian over its blocks (train/all_items.py), checkpointed and resumable as any
blockwise fit. Both start from the same factors, the hashed init or, under automatic λ or α,
the items the search's choice ended with (rank_search.search_ranking), and give the
same model (tests/test_implicit_blockwise.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.blocks.build import build_blocks
from cfspark.core.phases import phase
from cfspark.core.schema import (
    BASELINE,
    ITEM,
    ITEM_OFFSET,
    ITEM_RATINGS,
    LABELLED,
    OFFSET,
    P_EXPOSED,
    RATING,
    TARGET,
    USER,
    WEIGHT,
)
from cfspark.data.offsets import item_offsets
from cfspark.data.weights import column_alpha
from cfspark.fit.blockwise import block_counts, fingerprint, record_of
from cfspark.fit.one_task import MSE_ONE_TASK_RATINGS, runs_in_one_task
from cfspark.fit.rank_search import REG_MIDDLE, AlphaPlan, choose_and_fit_ranking, choose_ranking
from cfspark.fit.record import FitRecord, fit_summary, training_pairs
from cfspark.fit.reg_search import SEARCH_RATINGS
from cfspark.fit.settings import AUTO, FitSettings, InitialModel
from cfspark.fit.warm import search_start, warm_start_from
from cfspark.train.checkpoint import Checkpointer
from cfspark.train.history import diverged
from cfspark.train.one_task import fit_one_task
from cfspark.train.step import StepConfig
from cfspark.train.trainer import TrainResult, train

log = logging.getLogger("cfspark")

# J here is dominated by the sum over every unlabelled pair, which settles within a few
# iterations while the ranking still improves: at tol = 0.002 a fit stopped after 9
# iterations at NDCG@10 0.283 on MovieLens latest-small as counts, 0.289 after 20. So this
# model stops when J changes by less than tol·TOL_SCALE (0.287 after 13).
TOL_SCALE = 0.1


def single_count_weight(settings: FitSettings) -> float:
    """The confidence of a pair without a count: that of a count of 1 under the weight mapping."""
    alpha = column_alpha(settings.alpha)
    if settings.weightMapping == "log":
        return 1.0 + alpha * math.log1p(1.0 / settings.weightEpsilon)
    return 1.0 + alpha


def fit_all_items(
    settings: FitSettings,
    train_ratings: DataFrame,
    on_iteration: Callable[[FitRecord], dict] | None,
    *,
    num_ratings: int | None = None,
) -> FitRecord:
    """The all-items record for positive-only train_ratings (user, item, rating = 1[, weight]);
    num_ratings, their count if already known, saves counting them.

    The targets hold the confidences made with the reference α₀, which the half-steps rescale
    to the chosen α (StepConfig.confidence_scale), so they do not wait for the search: past
    the one-task size the blockwise setup runs beside it (its one task leaves a core free)."""
    began = time.perf_counter()
    spark = train_ratings.sparkSession
    reg = REG_MIDDLE if settings.exposureRegParam == AUTO else settings.exposureRegParam
    reference = column_alpha(settings.alpha)
    if WEIGHT in train_ratings.columns:
        confidence = F.coalesce(F.col(WEIGHT), F.lit(single_count_weight(settings)))
    else:
        confidence = F.lit(single_count_weight(settings))
    user_cfg, item_cfg = (
        dataclasses.replace(settings.step_config(side, reg), all_items=True, learn_bias=False)
        for side in ("user", "item")
    )
    if num_ratings is None:  # the search's sample and the fit's path both read it
        num_ratings = train_ratings.count()
    # λ is searched unless both regParam and exposureRegParam fix it (at exposureRegParam).
    searched = AUTO if AUTO in (settings.regParam, settings.exposureRegParam) else reg
    passes = tuple(name for name, value in (("reg", searched), ("alpha", settings.alpha)) if value == AUTO)
    # What the search reads: the pairs' confidences under α₀, and which of λ and α it searches.
    pairs = train_ratings.select(USER, ITEM, RATING, confidence.cast("double").alias(WEIGHT))
    plan, tol = AlphaPlan(reference=reference, passes=passes, reg=reg), settings.tol * TOL_SCALE

    def search() -> dict | None:
        """λ (regParam "auto") and α (alpha "auto") on NDCG@k of a validation fold; None if neither."""
        if not passes:
            return None
        with phase(spark, "search"):
            return choose_ranking(settings, pairs, user_cfg, item_cfg, alpha=plan, tol=tol, num_ratings=num_ratings,
                                  max_ratings=SEARCH_RATINGS)  # fmt: skip

    at_choice = functools.partial(configs_at, (user_cfg, item_cfg), reg, reference)

    def chosen(found: dict | None) -> Chosen:
        """The fit's settings (carrying λ) and half-steps at the search's choice, if any, and
        its start: initialModel, else the search's factors at its choice, else the hashed init."""
        at, alpha = (found["reg"], found["alpha"]) if found else (reg, reference)
        part = settings.replace(exposure=False, initialModel=None).carry(regParam=at, predictionCol=P_EXPOSED)
        begin = settings.initialModel
        factors = found.pop("factors", None) if found else None
        if factors is not None and begin is None:  # as the one-task fit after its search starts
            begin = search_start(factors, settings.rank)
        return Chosen(part, at_choice(found), found, alpha, begin)

    with phase(spark, "prepare"):
        targets = train_ratings.select(
            USER, ITEM, F.col(RATING).alias(TARGET), F.lit(None).cast("double").alias(OFFSET),
            confidence.cast("double").alias(WEIGHT),
        )  # fmt: skip
        # The bce item table with every offset 0: a user or item unseen in training scores σ(c) or σ(0).
        stats = item_offsets(train_ratings.select(USER, ITEM, RATING), prior=1.0, rate=0.5, enabled=False).cache()
    if runs_in_one_task(settings, num_ratings, MSE_ONE_TASK_RATINGS):
        with phase(spark, "one-task"):
            if passes:  # the search (on a sample past SEARCH_RATINGS) and the fit at its choice in one job
                *factors, record = choose_and_fit_ranking(settings, pairs, user_cfg, item_cfg, alpha=plan, tol=tol,
                                                          fit_configs=at_choice, num_ratings=num_ratings,
                                                          max_ratings=SEARCH_RATINGS)  # fmt: skip
                picked = chosen(record.pop("search"))
            else:
                picked = chosen(None)
                *factors, record = fit_one_task(targets, *picked.configs, max_iter=settings.maxIter, tol=tol,
                                                seed=settings.seed)  # fmt: skip
        fitted = _in_one_task(settings, picked.part, (*factors, record), stats, train_ratings, began, on_iteration)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            searching = pool.submit(search)
            picked, fitted = _blockwise(settings, targets, stats, train_ratings, num_ratings, began, on_iteration,
                                        resolve=lambda: chosen(searching.result()))  # fmt: skip
    if picked.search is not None:
        fitted.summary["reg_path"] = picked.search.pop("path")
        fitted.summary["reg_search"] = {**picked.search, "units": "als"}
        fitted.summary["alpha"] = picked.alpha
    return fitted


def configs_at(configs: tuple[StepConfig, StepConfig], reg: float, reference: float,
               found: dict | None) -> tuple[StepConfig, StepConfig]:  # fmt: skip
    """Both half-steps at the search's choice found (λ, and the scale α/α₀ that makes 1 + α·g(c)
    of the confidences 1 + α₀·g(c)), or at reg and the reference α₀ without a search."""
    at, alpha = (found["reg"], found["alpha"]) if found else (reg, reference)
    scale = 1.0 if alpha == reference else alpha / reference
    return tuple(dataclasses.replace(cfg, reg=at, confidence_scale=scale) for cfg in configs)


@dataclasses.dataclass
class Chosen:
    """What the fit trains with once λ and α are known: the settings it carries, both
    half-steps (λ, and the confidences' scale α/α₀), the search's record, α, and the start."""

    part: FitSettings
    configs: tuple[StepConfig, StepConfig]
    search: dict | None
    alpha: float
    begin: InitialModel | None = None  # the model the blockwise fit starts from (None: the hashed init)


Watch = Callable[[FitRecord], dict] | None


def _in_one_task(
    settings: FitSettings, part: FitSettings, fit: tuple[DataFrame, DataFrame, dict], stats: DataFrame,
    train_ratings: DataFrame, began: float, on_iteration: Watch,
) -> FitRecord:  # fmt: skip
    """The all-items FitRecord of a one-task fit: fit is its task's (user_factors, item_factors, record)."""
    user_factors, item_factors, record = fit
    history, stop_reason = record["history"], record["stop"]
    if not math.isfinite(history[-1]["train_loss"]):
        raise diverged(history[-1]["train_loss"], len(history))
    total = time.perf_counter() - began
    setup = total - history[-1]["elapsed"]
    for entry in history:
        entry["elapsed"] = round(entry["elapsed"] + setup, 3)
    log.info("all-items fit: %d iterations, %s; %.2f s in all", len(history), stop_reason, total)
    summary = fit_summary(
        part.regParam, history, stop_reason, setup_seconds=round(setup, 3), resumed_from=0, num_user_blocks=1,
        num_item_blocks=1, num_users=record["users"], num_items=record["items"], one_task=True,
        positive_only=True, implicit="all",
    )  # fmt: skip
    fitted = FitRecord(
        user_factors, item_factors, stats, 0.0, training_pairs(train_ratings), summary,
        params=dict(part.carried), rank=settings.rank,
    )  # fmt: skip
    if on_iteration:
        history[-1].update(on_iteration(fitted))
    return fitted


def _blockwise(
    settings: FitSettings, targets: DataFrame, stats: DataFrame, train_ratings: DataFrame, num_ratings: int,
    began: float, on_iteration: Watch, *, resolve: Callable[[], Chosen],
) -> tuple[Chosen, FitRecord]:  # fmt: skip
    """The blockwise all-items fit: blocks built once, then resolve() gives what it trains with
    (the search beside the setup ends), then the trainer's loop with the Gramian messages."""
    spark = train_ratings.sparkSession
    baseline = stats.select(ITEM, F.col(ITEM_OFFSET).alias(BASELINE), F.col(LABELLED).alias(ITEM_RATINGS))
    users, items = block_counts(settings, num_ratings, spark)
    blocks = build_blocks(
        targets, baseline, num_user_blocks=users, num_item_blocks=items, seed=settings.seed,
        max_block_ratings=settings.maxBlockRatings, num_ratings=num_ratings,
    )  # fmt: skip
    picked = resolve()
    part, configs = picked.part, picked.configs
    checkpointer = None
    if settings.checkpointDir and settings.checkpointInterval > 0:
        with phase(spark, "prepare"):
            checkpointer = Checkpointer(
                spark, settings.checkpointDir, settings.checkpointInterval, fingerprint(part, train_ratings)
            )
    start = warm_start_from(settings.replace(initialModel=picked.begin), blocks, *configs)

    def record(result: TrainResult, *, final: bool) -> FitRecord:
        fitted = record_of(part, result, blocks, stats, 0.0, train_ratings, final=final)
        fitted.summary.update(positive_only=True, implicit="all")
        return fitted

    watch = (lambda live: on_iteration(record(live, final=False))) if on_iteration else None
    result = train(
        blocks, *configs, max_iter=settings.maxIter, checkpointer=checkpointer, on_iteration=watch, began=began,
        tol=settings.tol * TOL_SCALE, start_from=start,
    )  # fmt: skip
    fitted = record(result, final=True)
    blocks.unpersist()
    for df in (result.user_out, result.item_out):
        df.unpersist()
    log.info("all-items fit: %d iterations, %s, %d × %d blocks", len(result.history), result.stop_reason,
             blocks.num_user_blocks, blocks.num_item_blocks)  # fmt: skip
    return picked, fitted
