"""The one-task fit: a fit small enough runs whole inside one Spark task (train/one_task.py).

Checkpoints are not written (nothing to resume in a fit this small), and on_iteration sees
only the final record, in the last history entry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

from pyspark.sql import DataFrame

from cfspark.core.phases import phase
from cfspark.fit.record import FitRecord, fit_summary, training_pairs
from cfspark.fit.reg_search import (
    SEARCH_RATINGS,
    log_search,
    search_fraction,
    search_plan,
    search_rows,
    search_settings,
)
from cfspark.fit.settings import AUTO, FitSettings
from cfspark.fit.targets import prepare
from cfspark.train.history import diverged
from cfspark.train.one_task import ONE_TASK_RATINGS, fit_one_task
from cfspark.train.search_task import search_and_fit_one_task

log = logging.getLogger("cfspark")


# Up to this many training ratings one task fits them in less time than the fewest blocks
# (2 + 2 on 2 cores): mse (4.2M ratings, λ fixed: the fit's own part 10 s in one task against
# 24 s blockwise) and the positive-only all-items model (4.2M pairs: 26-34 s against 38-42 s),
# docs/benchmarks.md "One task up to the fewest blocks". A cluster of more cores would spread
# a blockwise fit of this size over more blocks (blocks_for); one task is not measured against that.
MSE_ONE_TASK_RATINGS = 6_000_000


def one_task_limit(settings: FitSettings) -> int:
    """The most training ratings a fit of these settings sends to one task: MSE_ONE_TASK_RATINGS
    for mse, ONE_TASK_RATINGS for bce (the limit its exposure model was measured at; the
    positive-only fit, fit/implicit.py, asks for MSE_ONE_TASK_RATINGS itself)."""
    return MSE_ONE_TASK_RATINGS if settings.loss == "mse" else ONE_TASK_RATINGS


def runs_in_one_task(settings: FitSettings, num_ratings: int | None, limit: int | None = None) -> bool:
    """Whether a fit of num_ratings training ratings runs in one task: both block counts
    left to the data (0), at most limit ratings (one_task_limit unless given; nor more than
    maxBlockRatings), and no warm start."""
    if settings.numUserBlocks or settings.numItemBlocks or settings.initialModel is not None:
        return False
    limit = one_task_limit(settings) if limit is None else limit
    return num_ratings is not None and num_ratings <= min(limit, settings.maxBlockRatings)


def fit_in_one_task(
    settings: FitSettings,
    train_ratings: DataFrame,
    *,
    began: float,
    on_iteration: Callable[[FitRecord], dict] | None = None,
    global_mean: float | None = None,
    item_sums: DataFrame | None = None,
) -> FitRecord:
    """The whole fit in one task, from the hashed init; began is when the fit started, so setup
    is counted; global_mean (mse), the ratings' weighted mean, and item_sums, their item sums,
    if already known."""
    spark = train_ratings.sparkSession
    with phase(spark, "prepare"):
        prepared = prepare(settings, train_ratings, global_mean, item_sums)
    with phase(spark, "one-task"):
        user_factors, item_factors, record = fit_one_task(
            prepared.targets, settings.step_config("user"), settings.step_config("item"),
            max_iter=settings.maxIter, tol=settings.tol, seed=settings.seed,
        )  # fmt: skip
    return finish_record(settings, train_ratings, user_factors, item_factors, prepared.item_stats,
                         prepared.global_baseline, record, began=began, on_iteration=on_iteration)  # fmt: skip


def fit_auto_in_one_task(
    settings: FitSettings,
    train_ratings: DataFrame,
    num_ratings: int,
    *,
    began: float,
    on_iteration: Callable[[FitRecord], dict] | None = None,
    global_mean: float | None = None,
) -> FitRecord:
    """regParam = "auto" on mse data one task fits: the λ and rank search and the fit at its
    choice in one Spark job (train/search_task.py), the fit started from the search's params
    there. Past SEARCH_RATINGS the search takes a hashed share of the users (search_fraction)
    inside the same task, and its λ is carried over to all of them. A fixed regParam with
    biasReg = "auto" takes the same job: its λ fitted alone for λ_b, then the fit from those
    factors, stopped on tol.

    What target_stats would take in Spark jobs the task takes from the rows it holds: the
    weighted mean rating g unless global_mean gives it, m under meanPrior = "auto", and the
    targets' spread s, which under regUnits = "spread" is the search's unit (a fixed λ is
    converted to ALS's units with it there, and the initial factors scaled)."""
    in_spread = settings.regUnits == "spread"
    unit = None if in_spread else 1.0  # None: the task's s
    at = search_settings(settings, 1.0)
    fraction = search_fraction(num_ratings, SEARCH_RATINGS)
    plan = dataclasses.replace(search_plan(settings, unit, global_mean), sample=fraction)
    with phase(train_ratings.sparkSession, "one-task"):
        user_factors, item_factors, item_stats, record = search_and_fit_one_task(
            search_rows(settings, train_ratings, sample=fraction), at.step_config("user"), at.step_config("item"),
            plan, seed=settings.seed, max_iter=settings.maxIter,
        )  # fmt: skip
    found, targets = record.pop("search"), record.pop("targets")
    if settings.meanPrior == AUTO:
        log.info("automatic m: the item means shrunk by %.4g pseudo-ratings", targets["mean_prior"])
    spread = targets["spread"]
    settings = settings.replace(meanPrior=targets["mean_prior"])
    if settings.regParam != AUTO:  # the task fitted a fixed λ in ALS's units, as every path does
        settings = settings.in_als_units(spread)
    log_search(settings, found, fraction)
    took = found["task_seconds"]
    log.info("%s in one task: %.2f s indexing, %.2f s searching (%.2f s of it the rank step), %.2f s fitting",
             "λ fixed" if found.get("fixed") else "automatic λ", took["input"], took["search"],
             found.get("rank_seconds", 0.0), took["fit"])  # fmt: skip
    reg, kept = found["reg"], found.get("rank", settings.rank)
    chosen = settings.carry(regParam=reg).replace(rank=kept)  # the model's shape, not a Param it carries
    chosen = chosen.carry(biasReg=found["bias_reg"]) if "bias_reg" in found else chosen
    chosen = chosen.in_als_units(spread)
    fitted = finish_record(chosen, train_ratings, user_factors, item_factors, item_stats, targets["global_mean"],
                           record, began=began, on_iteration=on_iteration)  # fmt: skip
    fitted.summary["reg_path"] = found["path"]
    kept_keys = ("widened", "at_limit", "rank", "rank_path", "rank_seconds", "task_seconds", "bias_reg",
                 "bias_reg_before", "fixed", "sample_reg", "transfer", "sample")
    search = {k: found[k] for k in kept_keys if k in found}
    fitted.summary["reg_search"] = {"reg": reg, "units": settings.regUnits, **search, "sample_fraction": fraction}
    fitted.summary["mean_prior"] = settings.meanPrior
    if in_spread:
        fitted.summary["spread"] = spread
    return fitted


def finish_record(settings: FitSettings, train_ratings: DataFrame, user_factors: DataFrame, item_factors: DataFrame,
                  item_stats: DataFrame, global_baseline: float, record: dict, *, began: float,
                  on_iteration: Callable[[FitRecord], dict] | None) -> FitRecord:  # fmt: skip
    """The FitRecord of a one-task fit's output, its history's times made the fit's own."""
    history, stop_reason = record["history"], record["stop"]
    if not math.isfinite(history[-1]["train_loss"]):
        raise diverged(history[-1]["train_loss"], len(history))
    # The task timed its iterations; the rest of the wall time until now was setup.
    total = time.perf_counter() - began
    setup = total - history[-1]["elapsed"]
    for entry in history:  # the task's progress, told once it is back
        entry["elapsed"] = round(entry["elapsed"] + setup, 3)
        log.info("iteration %d/%d: train loss %.6g (%.2f s, in one task)",
                 entry["iteration"], settings.maxIter, entry["train_loss"], entry["seconds"])  # fmt: skip
    log.info("training stopped after %d iterations: %s", len(history), stop_reason)
    log.info("one-task fit: %.2f s of iterations, %.2f s in all", history[-1]["elapsed"] - setup, total)
    summary = fit_summary(
        settings.regParam, history, stop_reason, setup_seconds=round(setup, 3), resumed_from=0,
        num_user_blocks=1, num_item_blocks=1,
        num_users=record["users"], num_items=record["items"],  # what top-N would otherwise count
        one_task=True,
    )  # fmt: skip
    fitted = FitRecord(
        user_factors, item_factors, item_stats, global_baseline, training_pairs(train_ratings),
        summary, params=dict(settings.carried), rank=settings.rank,
    )  # fmt: skip
    if on_iteration:
        history[-1].update(on_iteration(fitted))
    return fitted
