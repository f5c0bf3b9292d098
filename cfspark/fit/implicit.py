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

The Gramian trick needs every item's vector in each user half-step, and every user's in each
item half-step, which the one-task fit has; the blockwise engine does not sum a Gramian across
blocks, so a fit that does not run in one task takes the sampled model instead, and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.phases import phase
from cfspark.core.schema import ITEM, OFFSET, P_EXPOSED, RATING, TARGET, USER, WEIGHT
from cfspark.data.offsets import item_offsets
from cfspark.data.weights import column_alpha
from cfspark.fit.rank_search import AlphaPlan, choose_ranking
from cfspark.fit.record import FitRecord, fit_summary, training_pairs
from cfspark.fit.settings import AUTO, FitSettings
from cfspark.train.history import diverged
from cfspark.train.one_task import fit_one_task

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
    settings: FitSettings, train_ratings: DataFrame, on_iteration: Callable[[FitRecord], dict] | None
) -> FitRecord:
    """The all-items record for positive-only train_ratings (user, item, rating = 1[, weight])."""
    began = time.perf_counter()
    spark = train_ratings.sparkSession
    reg, reference = settings.exposureRegParam, column_alpha(settings.alpha)
    if WEIGHT in train_ratings.columns:
        confidence = F.coalesce(F.col(WEIGHT), F.lit(single_count_weight(settings)))
    else:
        confidence = F.lit(single_count_weight(settings))
    user_cfg, item_cfg = (
        dataclasses.replace(settings.step_config(side, reg), all_items=True, learn_bias=False)
        for side in ("user", "item")
    )
    passes = tuple(name for name, value in (("reg", settings.regParam), ("alpha", settings.alpha)) if value == AUTO)
    search = None
    if passes:  # λ (regParam "auto") and α (alpha "auto") on NDCG@k of a validation fold
        with phase(spark, "search"):
            pairs = train_ratings.select(USER, ITEM, RATING, confidence.cast("double").alias(WEIGHT))
            plan = AlphaPlan(reference=reference, passes=passes, reg=reg)
            search = choose_ranking(settings, pairs, user_cfg, item_cfg, alpha=plan, tol=settings.tol * TOL_SCALE)
        reg = search["reg"]
        user_cfg, item_cfg = (dataclasses.replace(cfg, reg=reg) for cfg in (user_cfg, item_cfg))
    alpha = search["alpha"] if search else reference
    if alpha != reference:  # 1 + α·g(c) from 1 + α₀·g(c)
        confidence = F.lit(1.0) + F.lit(alpha / reference) * (confidence - F.lit(1.0))
    part = settings.replace(exposure=False, initialModel=None).carry(regParam=reg, predictionCol=P_EXPOSED)
    with phase(spark, "prepare"):
        targets = train_ratings.select(
            USER, ITEM, F.col(RATING).alias(TARGET), F.lit(None).cast("double").alias(OFFSET),
            confidence.cast("double").alias(WEIGHT),
        )  # fmt: skip
        # The bce item table with every offset 0: a user or item unseen in training scores σ(c) or σ(0).
        stats = item_offsets(train_ratings.select(USER, ITEM, RATING), prior=1.0, rate=0.5, enabled=False).cache()
    with phase(spark, "one-task"):
        user_factors, item_factors, record = fit_one_task(
            targets, user_cfg, item_cfg, max_iter=settings.maxIter, tol=settings.tol * TOL_SCALE, seed=settings.seed
        )
    history, stop_reason = record["history"], record["stop"]
    if not math.isfinite(history[-1]["train_loss"]):
        raise diverged(history[-1]["train_loss"], len(history))
    total = time.perf_counter() - began
    setup = total - history[-1]["elapsed"]
    for entry in history:
        entry["elapsed"] = round(entry["elapsed"] + setup, 3)
    log.info("all-items fit: %d iterations, %s; %.2f s in all", len(history), stop_reason, total)
    summary = fit_summary(
        reg, history, stop_reason, setup_seconds=round(setup, 3), resumed_from=0, num_user_blocks=1,
        num_item_blocks=1, num_users=record["users"], num_items=record["items"], one_task=True,
        positive_only=True, implicit="all",
    )  # fmt: skip
    if search is not None:
        summary["reg_path"] = search.pop("path")
        summary["reg_search"] = {**search, "units": "als"}
        summary["alpha"] = alpha
    fitted = FitRecord(
        user_factors, item_factors, stats, 0.0, training_pairs(train_ratings), summary,
        params=dict(part.carried), rank=settings.rank,
    )  # fmt: skip
    if on_iteration:
        history[-1].update(on_iteration(fitted))
    return fitted
