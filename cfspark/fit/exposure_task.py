"""bce on small data in one Spark job (train/bce_task.py): with exposure, the exposure part in
one task and the λ search and the preference model in another, running at once, with the
records the three separate fits would give; without, under automatic λ, the search and the
preference model fitted from its factors, in one task."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.phases import phase
from cfspark.core.schema import ITEM, RATING, TARGET, USER, WEIGHT
from cfspark.data.exposure import exposure_labels
from cfspark.data.offsets import item_offsets
from cfspark.data.split import hashed_fraction
from cfspark.data.weights import given_weight
from cfspark.fit.exposure_search import exposure_fraction, exposure_plan, log_exposure_search, search_exposure
from cfspark.fit.one_task import finish_record
from cfspark.fit.record import FitRecord, exposure_summary
from cfspark.fit.reg_search import (
    VALIDATION_FRACTION,
    VALIDATION_SEED,
    held_column,
    log_search,
    search_plan,
    search_settings,
)
from cfspark.fit.settings import AUTO, FitSettings
from cfspark.train.bce_task import EXPOSURE_HELD, BceTaskConfig, fit_both_one_task
from cfspark.train.search_task import HELD


def fit_exposure_one_task(
    settings: FitSettings,
    part: FitSettings | None,
    train_ratings: DataFrame,
    on_iteration: Callable[[FitRecord], dict] | None,
    *,
    began: float,
    num_labels: int | None = None,
) -> FitRecord:
    """The preference record with its exposure part (fitted with part's settings), as
    fit_with_exposure's two fits give them, from one Spark job; without part, the preference
    record alone, as fit/paths.py's automatic λ gives it. began is when the fit started;
    num_labels, the training labels' count, sizes the exposure λ search's user sample."""
    spark = train_ratings.sparkSession
    auto = settings.regParam == AUTO
    exposure_auto = part is not None and settings.exposureRegParam == AUTO
    # The search's validation fold is fit/reg_search.py's: the same hashed pairs. The item
    # offsets and the model's item table come from the task, which sums them over the labels.
    held = hashed_fraction(settings.seed + VALIDATION_SEED) < F.lit(VALIDATION_FRACTION) if auto else F.lit(False)
    # The exposure λ search's fold: the same hashed pairs, within its share of the users.
    sample = exposure_fraction(num_labels or 0)
    fold = held_column(settings, VALIDATION_FRACTION, sample) if exposure_auto else F.lit(0)
    weight = given_weight(train_ratings)
    rows = train_ratings.select(USER, ITEM, F.col(RATING).alias(TARGET), weight.alias(WEIGHT), held.alias(HELD),
                                fold.alias(EXPOSURE_HELD))  # fmt: skip
    searching = search_settings(settings, 1.0) if auto else settings  # bce's λ has no units to scale by
    exposure_user, exposure_item = (part.step_config(side) if part else None for side in ("user", "item"))
    cfg = BceTaskConfig(
        user=searching.step_config("user"), item=searching.step_config("item"),
        exposure_user=exposure_user, exposure_item=exposure_item,
        plan=search_plan(settings, 1.0, None) if auto else None, offset_prior=settings.offsetPrior,
        item_offset=settings.itemOffset, max_iter=settings.maxIter, tol=settings.tol,
        exposure_plan=exposure_plan(settings.maxIter, settings.tol, sample) if exposure_auto else None,
        exposure_search=search_exposure if exposure_auto else None,
    )  # fmt: skip
    with phase(spark, "one-task"):
        (users, items, item_table), exposed, record = fit_both_one_task(rows, cfg, seed=settings.seed)
    rate = record.pop("rate")
    global_baseline = math.log(rate / (1.0 - rate)) if settings.itemOffset else 0.0  # prepare()'s, for bce
    took, tasks = record.pop("task_seconds"), record.pop("tasks")
    found = record.pop("search")
    chosen = settings
    if found is not None:
        log_search(settings, found, 1.0)
        chosen = settings.carry(regParam=found["reg"])
    exposure_record = record.pop("exposure")
    fitted = finish_record(chosen, train_ratings, users, items, item_table, global_baseline, record,
                           began=began, on_iteration=on_iteration)  # fmt: skip
    if found is not None:
        fitted.summary["reg_path"] = found["path"]
        fitted.summary["reg_search"] = {"reg": found["reg"], "units": settings.regUnits, "widened": found["widened"],
                                        "at_limit": found["at_limit"], "sample_fraction": 1.0}  # fmt: skip
    if part is None:  # the preference model alone: the search's record holds the task's times
        if found is not None:
            fitted.summary["reg_search"]["task_seconds"] = took
        return fitted
    # tasks: the partition each part runs in, two where the parts run side by side.
    fitted.summary["one_job"] = {"task_seconds": took, "tasks": tasks, "seconds": round(time.perf_counter() - began, 3)}
    # The exposure part's item table: its offsets are 0 (fit/exposure.py's fresh_draws), read when it predicts.
    exposure_stats = item_offsets(exposure_labels(train_ratings), prior=part.offsetPrior, rate=0.5, enabled=False)
    exposure_found = exposure_record.pop("search", None)
    if exposure_found is not None:
        exposure_found["sample_fraction"] = sample
        log_exposure_search(exposure_found)
        part = part.carry(regParam=exposure_found["reg"])
    exposure = finish_record(part, train_ratings, *exposed, exposure_stats, 0.0, exposure_record, began=began,
                             on_iteration=None)  # fmt: skip
    if exposure_found is not None:
        exposure.summary["reg_path"] = exposure_found.pop("path")
        exposure.summary["reg_search"] = exposure_found
    exposure.training_pairs = None  # the preference model's pairs are the ones to exclude
    fitted.exposure = exposure
    fitted.summary["exposure"] = exposure_summary(exposure)
    return fitted
