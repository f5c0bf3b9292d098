"""Which path a fit takes, in this order: bce with exposure (two fits), regParam = "auto"
(the λ search, then a fit with its choice started from the search's factors there; on data
one task fits, both in one task, the search on a sample of the users past SEARCH_RATINGS),
one task (small data), or blockwise. Under a fixed λ and biasReg = "auto" (mse), the
search's task fits that λ alone first (beside the blockwise setup), λ_b comes from what its
factors leave, as under automatic λ (fit/reg_search.py), and the fit starts from those
factors, as it does from the search's; on data one task fits, both in one task, as automatic
λ's search and fit.

Under regUnits = "spread" (mse), λ is converted to ALS's units first, with the spread of
the training targets (fit/targets.py's target_stats), so every path below fits in them; the
task that searches and fits in one takes the spread from its rows and converts λ there."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from pyspark.sql import DataFrame

from cfspark.fit.blockwise import fit_blockwise
from cfspark.fit.exposure import fit_with_exposure
from cfspark.fit.exposure_task import fit_exposure_one_task
from cfspark.fit.one_task import (
    fit_auto_in_one_task,
    fit_in_one_task,
    runs_in_one_task,
)
from cfspark.fit.record import FitRecord
from cfspark.fit.reg_search import choose_reg
from cfspark.fit.settings import AUTO, FitSettings
from cfspark.fit.targets import resolve_bias_reg, target_stats
from cfspark.fit.warm import search_start, warm_rank
from cfspark.train.search_task import SETTLED

log = logging.getLogger("cfspark")


def fit_ratings(
    settings: FitSettings,
    train_ratings: DataFrame,
    on_iteration: Callable[[FitRecord], dict] | None = None,
    *,
    num_ratings: int | None = None,
    global_mean: float | None = None,
    settle: float | None = None,
) -> FitRecord:
    """Fit validated (user, item, rating[, weight]) rows with cfspark's internal names.

    on_iteration, if given, is called with the record as it stands after each iteration and
    returns extra fields for that iteration's history entry; its time is not counted.
    num_ratings, the rows' count if already known, saves counting them again; so does
    global_mean (mse), the ratings' weighted mean. settle, if given, replaces tol in a
    blockwise fit: it stops once an iteration moves the predictions by at most settle (RMS).
    """
    with ExitStack() as fit_scope:  # what the fit caches for its own paths, released as it returns
        return _fit_ratings(settings, train_ratings, on_iteration, fit_scope, num_ratings=num_ratings,
                            global_mean=global_mean, settle=settle)  # fmt: skip


def settle_of(search: dict, reg: float, tol: float) -> float | None:
    """The settle a fit started from a search's factors at reg stops at: an iteration that moves
    the predictions by at most SETTLED of reg's validation RMSE, which bounds its change of any
    RMSE (as the one-task search-and-fit's does); None if reg was not scored on RMSE, or under
    tol = 0, which always runs maxIter iterations."""
    at = [p for p in search["path"] if math.isclose(p["reg"], reg, rel_tol=1e-9) and "rmse" in p]
    return SETTLED * at[-1]["rmse"] if at and tol > 0 else None


def _fit_ratings(
    settings: FitSettings,
    train_ratings: DataFrame,
    on_iteration: Callable[[FitRecord], dict] | None,
    fit_scope: ExitStack,
    *,
    num_ratings: int | None,
    global_mean: float | None,
    settle: float | None,
) -> FitRecord:
    """fit_ratings' paths; fit_scope releases the item sums that target_stats keeps for prepare()."""
    settings = warm_rank(settings)
    if settings.loss == "bce":
        settings = resolve_bias_reg(settings)
    if settings.loss == "bce" and settings.exposure:
        return fit_with_exposure(settings, train_ratings, on_iteration, fit=fit_ratings)
    spread = num_items = sums = None
    began = time.perf_counter()
    # λ or λ_b automatic on data one task fits: the search (a fixed λ, in ALS's units as on
    # every path, fitted alone for λ_b; past SEARCH_RATINGS on a sample of the users) and the
    # fit from its factors in one job, which takes the targets' statistics from the rows it
    # holds. A caller's settle is the blockwise fit's: a fit in one task stops on its own rule
    # (train/search_task.py).
    searched = settings.loss == "mse" and AUTO in (settings.regParam, settings.biasReg)
    if searched and num_ratings is None:  # the count chooses the path
        num_ratings = train_ratings.count()
    if searched and runs_in_one_task(settings, num_ratings):
        return fit_auto_in_one_task(settings, train_ratings, num_ratings, began=began, on_iteration=on_iteration,
                                    global_mean=global_mean)  # fmt: skip
    estimated = AUTO in (settings.meanPrior, settings.biasReg)
    if settings.loss == "mse" and (settings.regUnits == "spread" or settings.regParam == AUTO or estimated):
        # One aggregation: s, the count and g (m, estimated, one more); its item sums stay for prepare().
        stats = target_stats(settings, train_ratings, keep_sums=True)
        sums = stats.item_sums
        fit_scope.callback(sums.unpersist)
        num_ratings, global_mean, num_items = stats.count, stats.global_mean, stats.items
        spread = stats.spread if settings.regUnits == "spread" else None
        if settings.meanPrior == AUTO:
            log.info("automatic m: the item means shrunk by %.4g pseudo-ratings", stats.mean_prior)
        settings = settings.replace(meanPrior=stats.mean_prior)
        if spread is not None and settings.regParam != AUTO:
            settings = settings.in_als_units(spread)
    if settings.regParam == AUTO:
        if num_ratings is None:
            num_ratings = train_ratings.count()
        if settings.loss == "bce" and runs_in_one_task(settings, num_ratings):
            # The search and the fit at its choice in one job, the fit started from the search's
            # factors there: from the hashed init it may stop at the zero-factor saddle (train/saddle.py).
            return fit_exposure_one_task(settings, None, train_ratings, on_iteration, began=began)
        found: dict = {}

        def chosen_settings(reg: float, search: dict) -> tuple[FitSettings, float | None]:
            """The settings to fit at reg (in regUnits) and the kept rank, and their settle."""
            found.update(reg=reg, search=search)
            kept = search.get("rank", settings.rank)  # the search may keep fewer directions (mse)
            # The kept rank is the model's shape, not a Param the model carries (ALSModel's rank is an attribute).
            chosen = settings.carry(regParam=reg).replace(rank=kept)
            chosen = chosen.carry(biasReg=search["bias_reg"]) if "bias_reg" in search else chosen
            chosen = chosen.in_als_units(spread) if spread else chosen
            factors = search.pop("factors", None)
            if factors is not None and settings.initialModel is None:
                # The blockwise fit starts from the search's factors at its choice (the sampled
                # users' and the items'), not from the hashed init: fewer iterations to converge.
                chosen = chosen.replace(initialModel=search_start(factors, kept))
            scored = search.get("sample_reg", reg)  # a sample's path is at its own λ, before the transfer
            return chosen, settle_of(search, scored, settings.tol)

        def run_search(with_factors: bool = False) -> tuple[float, dict]:  # reg in regUnits
            return choose_reg(settings, train_ratings, spread or 1.0, num_ratings=num_ratings, global_mean=global_mean,
                              num_items=num_items, with_factors=with_factors)  # fmt: skip

        # The search's one task leaves a core free, and the blocks do not depend on λ or the
        # rank: the blockwise setup runs beside the search and waits for it once built.
        with ThreadPoolExecutor(max_workers=1) as pool:
            searching = pool.submit(run_search, settings.initialModel is None)
            record = fit_blockwise(settings, train_ratings, began=time.perf_counter(), num_ratings=num_ratings,
                                   global_mean=global_mean, item_sums=sums, on_iteration=on_iteration,
                                   resolve=lambda: chosen_settings(*searching.result()))  # fmt: skip
        reg, search = found["reg"], found["search"]
        record.summary["reg_path"] = search.pop("path")
        record.summary["reg_search"] = {"reg": reg, "units": settings.regUnits, **search}
        if spread is not None:
            record.summary["spread"] = spread
        if settings.loss == "mse":
            record.summary["mean_prior"] = settings.meanPrior
        return record
    began = time.perf_counter()
    bias_search = settings.loss == "mse" and settings.biasReg == AUTO
    if num_ratings is None and (bias_search or 0 in (settings.numUserBlocks, settings.numItemBlocks)):
        num_ratings = train_ratings.count()
    found: dict = {}

    def with_bias_reg() -> tuple[FitSettings, float | None]:
        """settings with λ_b from the factors of a fit at their λ (in the search's task), and the
        caller's settle. Without a warm start of the caller's, the fit starts from those factors
        (the sampled users' and the items'), as automatic λ's does from its search's: the same
        λ's fit, begun. It stops on tol, as any fit at a λ the caller chose."""
        _, search = choose_reg(settings, train_ratings, num_ratings=num_ratings, global_mean=global_mean,
                               num_items=num_items, with_factors=settings.initialModel is None)  # fmt: skip
        factors = search.pop("factors", None)
        found.update(search)
        chosen = settings.carry(biasReg=search["bias_reg"])
        if factors is None or not search["path"]:  # no validation fold: nothing fitted to start from
            return chosen, settle
        return chosen.replace(initialModel=search_start(factors, settings.rank)), settle

    if runs_in_one_task(settings, num_ratings):  # no λ_b to estimate (mse's "auto" took the search's task)
        record = fit_in_one_task(settings, train_ratings, began=began, on_iteration=on_iteration,
                                 global_mean=global_mean, item_sums=sums)  # fmt: skip
    else:
        # The fit's blocks do not depend on λ_b: the search's task runs beside their setup.
        with ThreadPoolExecutor(max_workers=1) as pool:
            searching = pool.submit(with_bias_reg) if bias_search else None
            record = fit_blockwise(settings, train_ratings, began=began, num_ratings=num_ratings,
                                   global_mean=global_mean, item_sums=sums, on_iteration=on_iteration, settle=settle,
                                   resolve=searching.result if searching else None)  # fmt: skip
    if found:
        record.summary["reg_path"] = found.pop("path")
        record.summary["reg_search"] = {"reg": settings.regParam, "units": settings.regUnits, **found}
    if spread is not None:
        record.summary["spread"] = spread
    if settings.loss == "mse":
        record.summary["mean_prior"] = settings.meanPrior
    return record
