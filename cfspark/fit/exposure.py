"""bce with exposure: two fits through the same engine. The preference model learns
P(like | shown) on the labelled pairs; the exposure part learns P(exposed) on labelled-or-not
pairs (data/exposure.py, with the unlabelled 0s drawn afresh inside each half-step,
train/sampled.py); the model ranks by their product.

Labels that are all 1 (positive-only data) have no preference to learn: the record is then
one model of the positives against the unlabelled pairs (summary positive_only), by default
the all-items model (model.implicit = "all", fit/implicit.py), or with model.implicit = "sampled"
the exposure part alone on sampled unlabelled pairs, whose predictions are P(exposed).

Labels few enough for one task (fit/one_task.py's runs_in_one_task) fit both models, and the
λ search, in one Spark job (fit/exposure_task.py): the same models, without the fixed costs
of three jobs and their preparation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.ownership import checkpoint_folder
from cfspark.core.schema import P_EXPOSED, RATING
from cfspark.data.exposure import exposure_labels
from cfspark.fit.exposure_search import REFERENCE, choose_exposure
from cfspark.fit.exposure_task import fit_exposure_one_task
from cfspark.fit.implicit import fit_all_items
from cfspark.fit.one_task import runs_in_one_task
from cfspark.fit.record import FitRecord, exposure_summary, training_pairs
from cfspark.fit.settings import AUTO, FitSettings, InitialModel
from cfspark.train.sampled import Draws

log = logging.getLogger("cfspark")

Fit = Callable[[FitSettings, DataFrame, Callable[[FitRecord], dict] | None], FitRecord]


def exposure_settings(settings: FitSettings) -> FitSettings:
    """The exposure part's fit: its own λ (under "auto", the search's reference until it
    chooses, fit/exposure_search.py) and prediction column, warm-started from the earlier
    model's exposure part (if it has one), checkpointed in a folder of its own."""
    part = settings.replace(exposure=False, initialModel=None)
    reg = REFERENCE if settings.exposureRegParam == AUTO else settings.exposureRegParam
    part = part.carry(regParam=reg, predictionCol=P_EXPOSED)
    earlier = settings.initialModel.load() if settings.initialModel is not None else None
    if earlier is not None and earlier.exposure is not None:
        start = earlier.exposure
        part = part.replace(initialModel=InitialModel(start.uid, lambda: start))
    if settings.checkpointDir:  # each fit resumes from its own checkpoints (the trainer's are iter-*)
        # Inside the folder the preference fit checkpoints to (a subfolder of cfspark's own in a user's folder).
        part = part.replace(checkpointDir=checkpoint_folder(settings.checkpointDir.rstrip("/")) + "/exposure")
    return part


def fresh_draws(part: FitSettings, settings: FitSettings) -> FitSettings:
    """The exposure part with K = exposureNegatives fresh 0-labels per labelled pair in each
    half-step, fewer in its first exposureCoarseIterations from the hashed init (a warm start
    begins near its optimum: none there). Its item term is the learnt item bias c_i: an offset
    from the items' rates would need the 0-labels counted before the fit, which are never
    materialised."""
    coarse = settings.exposureCoarseIterations if part.initialModel is None else 0
    draws = Draws(
        per_label=settings.exposureNegatives, weight=settings.negativeWeight, sampling=settings.negativeSampling,
        seed=settings.seed, coarse=coarse,
    )  # fmt: skip
    return part.replace(draws=draws, itemOffset=False, itemBias=True)


def fit_with_exposure(
    settings: FitSettings, train_ratings: DataFrame, on_iteration: Callable[[FitRecord], dict] | None, *, fit: Fit
) -> FitRecord:
    """The preference record with its exposure part (record.exposure), or the exposure part
    alone for positive-only labels; fit is the fit of one plain model (fit/paths.py)."""
    began = time.perf_counter()
    part = exposure_settings(settings)
    # One aggregation: whether every label is 1, and how many labels there are (which path).
    row = train_ratings.agg(F.count(F.lit(1)), F.max((F.col(RATING) != 1.0).cast("int"))).first()
    count, positive_only = int(row[0]), not row[1]
    if positive_only and settings.implicit == "all":
        return fit_all_items(settings, train_ratings, on_iteration, num_ratings=count)
    if not positive_only and runs_in_one_task(settings, count):  # the three fits in one Spark job
        return fit_exposure_one_task(settings, fresh_draws(part, settings), train_ratings, on_iteration, began=began,
                                     num_labels=count)  # fmt: skip
    # The labelled pairs alone: each half-step draws its own unlabelled 0s (train/sampled.py).
    exposed = exposure_labels(train_ratings).cache()
    part, found = fresh_draws(part, settings), None
    if settings.exposureRegParam == AUTO:  # λ chosen in one task on a sample, then the fit from its factors
        part, found = choose_exposure(settings, part, exposed, count)
        part = fresh_draws(part, settings)
    exposure = fit(part, exposed, on_iteration if positive_only else None)
    exposure.training_pairs = None  # the preference model's pairs are the ones to exclude (below)
    exposed.unpersist()
    if found is not None:
        exposure.summary["reg_search"] = {k: v for k, v in found.items() if k != "path"}
        exposure.summary["reg_path"] = found["path"]
    if positive_only:
        exposure.summary["positive_only"] = True
        exposure.training_pairs = training_pairs(train_ratings)
        return exposure
    preference = fit(settings.replace(exposure=False), train_ratings, on_iteration)
    preference.exposure = exposure
    preference.summary["exposure"] = exposure_summary(exposure)
    return preference

