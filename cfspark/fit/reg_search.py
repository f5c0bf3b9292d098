"""regParam = "auto": λ chosen on a validation fold of the training ratings.

A hashed VALIDATION_FRACTION of the training ratings is held out; the rest is blocked
once, and REG_PATH is walked from strong to weak λ, each warm-started from the last for at
most PATH_ITER iterations, so the whole path costs about one fit. Count-scaled λ keeps
this one path right for every data size. Only the training ratings are read: a test split
never reaches the search.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import DataFrame

from cfspark.data.metrics import prediction_metrics
from cfspark.data.split import split_ratings
from cfspark.fit.blockwise import record_of, setup
from cfspark.fit.predict import predict
from cfspark.fit.settings import FitSettings
from cfspark.train.trainer import train

REG_PATH = (0.5, 0.25, 0.12, 0.06, 0.03, 0.015, 0.008)
# The walk stops once validation is worse than the best so far by more than this fraction:
# under strong λ the factors vanish and the score is flat, which must not end the walk.
PATH_SLACK = 1e-3
PATH_ITER = 4
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 7919  # added to the model seed, so the fold differs from a test split on the split seed

log = logging.getLogger("cfspark")


def choose_reg(settings: FitSettings, train_ratings: DataFrame, spread: float = 1.0) -> tuple[float, list[dict]]:
    """λ, and the path that chose it: [{reg, metric, iterations}]. The walk stops at the first
    λ that validates worse than the best so far (by more than PATH_SLACK), and the best λ
    wins, on validation RMSE (mse) or logloss (bce)."""
    fit_part, held = split_ratings(
        train_ratings, test_fraction=VALIDATION_FRACTION, seed=settings.seed + VALIDATION_SEED
    )
    fit_part, held = fit_part.cache(), held.cache()
    metric = "rmse" if settings.loss == "mse" else "logloss"
    path: list[dict] = []
    blocks, stats, global_baseline = setup(settings, fit_part)
    result = None
    for reg in REG_PATH:
        before = result
        at = settings.replace(regParam=reg).in_als_units(spread)
        result = train(
            blocks, at.step_config("user"), at.step_config("item"), max_iter=PATH_ITER,
            tol=settings.tol, start_from=(before.user_out, before.item_out) if before else None,
        )  # fmt: skip
        if before:  # the warm start has been read: its checkpointed tables can go
            before.user_out.unpersist(), before.item_out.unpersist()
        step = record_of(settings.replace(regParam=reg), result, blocks, stats, global_baseline, None, final=False)
        predictions = predict(step, held, loss=settings.loss, prediction_col=settings.predictionCol)
        score = prediction_metrics(predictions, loss=settings.loss, prediction_col=settings.predictionCol)
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
