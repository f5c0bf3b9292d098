"""regParam = "auto" (the default): λ chosen on a validation fold of the training ratings.

A hashed VALIDATION_FRACTION of the training ratings is held out, and the bracketing
search (kernels/bracket.py) runs on the rest inside one Spark task (train/search_task.py),
each λ warm-started from the nearest one fitted, each stopped on the validation score. Large data
is searched on a hashed SEARCH_FRACTION of its users (at most about SEARCH_RATINGS ratings),
so that the search takes a fixed share of the blockwise setup it runs beside (or of the
one task it shares with the fit: the other users' rows are OUTSIDE there). The sample
keeps every user's ratings but leaves each item fewer, and chooses a larger λ than all
users would; the choice is carried over to the whole by the penalty per factor vector
(transfer_factor), for both losses. Only the training ratings are read: a
test split never reaches the search.

λ is searched in regUnits: under "spread" (the default) the kernel's λ is reg·s, so the
start grid and the choice are the same for ratings on any scale.

With λ fixed and biasReg = "auto" (mse), the same task fits that one λ instead of searching,
so that λ_b is estimated from what its factors leave, as under automatic λ (search_task.py).
A sample is fitted at the fixed λ itself: count scaling gives each factor vector the same
penalty per rating in a sample as in the whole.
"""

from __future__ import annotations

import functools
import logging
import math
import time

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import BASELINE, ITEM, OFFSET, RATING, TARGET, USER, WEIGHT
from cfspark.data.split import hashed_fraction, split_ratings
from cfspark.data.weights import given_weight
from cfspark.fit.settings import AUTO, FitSettings
from cfspark.fit.targets import prepare, target_stats
from cfspark.train.one_task import ONE_TASK_RATINGS
from cfspark.train.search_task import (
    HELD,
    OUTSIDE,
    SearchPlan,
    search_arrays,
    search_factors_one_task,
    search_one_task,
    search_record,
    transfer_factor,
)

START = (0.3, 0.1, 0.03)  # in regUnits, strong to weak: warm starts go from simple to rich models
STEP = 3.0  # the widening factor past an end of START
TOL_LOG = math.log(1.3)  # the final bracket's width in log λ: λ within 30 % of the best
LOW, HIGH = 1e-4, 1e2  # the hard range: every λ tried lies in it
POINT_ITER = 6  # iterations at most per warm-started λ; the first λ may take maxIter
# At most about this many ratings are searched, in one task: as many as a bce fit sends to one task.
SEARCH_RATINGS = ONE_TASK_RATINGS
# Past that size the search takes this share of the users (fewer if the share exceeds SEARCH_RATINGS):
# its cost then grows with the data as the blockwise setup's does, and stays beside it. mse and bce
# carry the sample's λ over by transfer_factor (mse: measured down to an eighth of the users,
# docs/benchmarks.md "λ carried over from a quarter of the users"; bce: at a half and a quarter,
# "bce's search on a quarter of the users"); the positive-only ranking search keeps its choice
# ("The positive-only search on a quarter of the users").
SEARCH_FRACTION = 0.25
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 7919  # added to the model seed, so the fold differs from a test split on the split seed
SAMPLE_SEED = 104729  # added to the model seed: which users the search samples

log = logging.getLogger("cfspark")


def _drawn(seed: int) -> Column:
    """Each row's user hashed to [0, 1) under seed: a user is sampled at fraction f where it is below f."""
    unit = 2**53
    return F.pmod(F.xxhash64(F.col(USER), F.lit(seed)), F.lit(unit)).cast("double") / float(unit)


def sampled_users(ratings: DataFrame, fraction: float, seed: int) -> DataFrame:
    """The ratings of a hashed fraction of the users (all of them at fraction ≥ 1)."""
    if fraction >= 1:
        return ratings
    return ratings.filter(_drawn(seed) < F.lit(fraction))


def search_fraction(num_ratings: int, max_ratings: int) -> float:
    """The share of the users the search samples: all up to max_ratings ratings; past it,
    SEARCH_FRACTION (at most max_ratings' worth), for both losses and the positive-only
    ranking search (fit/rank_search.py)."""
    if num_ratings <= max_ratings:
        return 1.0
    return min(max_ratings / num_ratings, SEARCH_FRACTION)


def search_plan(settings: FitSettings, unit: float, global_mean: float | None) -> SearchPlan:
    """The search's walk for settings, with λ = reg·unit in the kernel (a fixed regParam is
    walked alone, for λ_b); mse centres its folds on their own item means, shrunk towards
    the training ratings' global mean."""
    prior = None if settings.meanPrior == AUTO else settings.meanPrior
    centre = (prior, global_mean) if settings.loss == "mse" else None
    bias_prior = settings.loss == "mse" and settings.biasReg == AUTO
    fixed = settings.regParam != AUTO
    return SearchPlan(start=(float(settings.regParam),) if fixed else START, unit=unit, low=LOW, high=HIGH, step=STEP,
                      tol_log=TOL_LOG, first_iter=settings.maxIter, point_iter=POINT_ITER, tol=settings.tol,
                      centre=centre, bias_prior=bias_prior, fixed=fixed)  # fmt: skip


def search_rows(settings: FitSettings, ratings: DataFrame, fraction: float = VALIDATION_FRACTION, *,
                sample: float = 1.0) -> DataFrame:  # fmt: skip
    """(user, item, y, offset, weight, held) of ratings: the hashed validation fold, a fraction
    of the rows (split_ratings' test part on its seed), is held; the rows carry the rating
    itself as y (mse's search task centres them per fold). Under sample < 1 every rating is
    kept and the users outside sampled_users' share are OUTSIDE: fitted after the search, not
    searched on."""
    weight = given_weight(ratings)
    y, none = F.col(RATING).cast("double"), F.lit(None).cast("double")
    held = held_column(settings, fraction, sample)
    return ratings.select(USER, ITEM, y.alias(TARGET), none.alias(OFFSET), weight.alias(WEIGHT), held.alias(HELD))


def held_column(settings: FitSettings, fraction: float, sample: float = 1.0) -> Column:
    """1 on the hashed validation fold (fraction of the pairs), 0 on the rest, and OUTSIDE on
    every pair of a user outside a sample of that share of the users (sample < 1)."""
    held = (hashed_fraction(settings.seed + VALIDATION_SEED) < F.lit(fraction)).cast("int")
    if sample < 1:
        held = F.when(_drawn(settings.seed + SAMPLE_SEED) < F.lit(sample), held).otherwise(F.lit(OUTSIDE))
    return held


def search_settings(settings: FitSettings, unit: float) -> FitSettings:
    """settings as the search's kernel sees them: λ set per point, init spread initScale·√unit."""
    # biasReg = "auto" (mse): the task estimates λ_b before its first point (SearchPlan.bias_prior).
    bias = 0.0 if settings.biasReg == AUTO and settings.loss == "mse" else settings.biasReg
    return settings.replace(regParam=1.0, initScale=settings.initScale * math.sqrt(unit), biasReg=bias)


def log_search(settings: FitSettings, found: dict, fraction: float) -> None:
    metric = "rmse" if settings.loss == "mse" else "logloss"
    what = "λ fixed" if found.get("fixed") else "automatic λ"
    for point in found["path"]:
        log.info("%s: reg %.4g (%.4g in ALS's units) gives validation %s %.6g after %d iterations", what,
                 point["reg"], point["reg_als"], metric, point[metric], point["iterations"])  # fmt: skip
    if found["widened"]:
        log.info("automatic λ: the bracket widened past the start grid %s (%s)", list(START), found["widened"])
    if found["at_limit"]:
        log.warning("automatic λ: the best λ is an end of the range [%g, %g]", LOW, HIGH)
    if found.get("rank", settings.rank) < settings.rank:
        tried = ", ".join(f"{p['rank']}: {p['score']:.6g}" for p in found["rank_path"])
        log.info("automatic λ: the factors keep %d of their %d directions (validation %s by rank: %s)",
                 found["rank"], settings.rank, metric, tried)  # fmt: skip
    if "sample_reg" in found:
        log.info("automatic λ: the sample's reg %.4g × %.3g for all the users (ratings per factor vector: "
                 "%.4g in the sample)", found["sample_reg"], found["transfer"],
                 found["sample"]["ratings"] / (found["sample"]["users"] + found["sample"]["items"]))  # fmt: skip
    if "bias_reg_before" in found:
        log.info("automatic λ_b: %.4g pseudo-ratings on each bias, from the fit part's users once the factors "
                 "are fitted (%.4g before them%s)", found["bias_reg"], found["bias_reg_before"],
                 "" if found.get("fixed") else "; λ bracketed again at it")  # fmt: skip
    elif "bias_reg" in found:  # no validation fold, so no factors: the estimate from y − μ_i
        log.info("automatic λ_b: %.4g pseudo-ratings on each bias, from the fit part's users", found["bias_reg"])
    if "seconds" in found:
        took = found.get("task_seconds", {})
        log.info("%s: the search took %.2f s (in its task: %.2f s indexing, %.2f s searching)", what,
                 found["seconds"], took.get("input", math.nan), took.get("search", math.nan))  # fmt: skip
    if found.get("fixed"):
        log.info("λ fixed: reg = %.4g (%s units), fitted for λ_b on %.0f %% of the users",
                 found["reg"], settings.regUnits, 100 * fraction)  # fmt: skip
    else:
        log.info("automatic λ: chose reg = %.4g (%s units), searched on %.0f %% of the users",
                 found["reg"], settings.regUnits, 100 * fraction)  # fmt: skip


def choose_reg(
    settings: FitSettings,
    train_ratings: DataFrame,
    spread: float = 1.0,
    *,
    num_ratings: int | None = None,
    max_ratings: int | None = None,
    global_mean: float | None = None,
    num_items: int | None = None,
    with_factors: bool = False,
) -> tuple[float, dict]:
    """λ in regUnits, and how it was chosen: {path: [{reg, reg_als, rmse|logloss, iterations, rank}],
    widened, at_limit, sample_fraction, and for mse the rank kept, rank_path and, under
    biasReg = "auto", the bias_reg estimated on the fit part}; on a
    sample also sample_reg (the sample's choice, which the path's points are at), transfer
    (the factor λ = sample_reg·transfer) and sample (its ratings, users, items). spread is s
    under regUnits = "spread", else 1; global_mean (mse) and num_items, the training ratings'
    weighted mean and number of items, if already known. with_factors adds "factors": the
    (user, item) factor tables the search ended with at its choice and their row counts,
    (users, items, (user rows, item rows)), for the fit to start from. A fixed regParam (mse,
    biasReg = "auto") is the choice, fitted once for λ_b ("fixed": True)."""
    began = time.perf_counter()
    num_ratings = train_ratings.count() if num_ratings is None else num_ratings
    fraction = search_fraction(num_ratings, SEARCH_RATINGS if max_ratings is None else max_ratings)
    rows = sampled_users(train_ratings, fraction, settings.seed + SAMPLE_SEED)
    unit = spread if settings.regUnits == "spread" else 1.0
    at = search_settings(settings, unit)
    if settings.loss == "mse":
        if global_mean is None or (num_items is None and fraction < 1) or settings.meanPrior == AUTO:
            stats = target_stats(settings, train_ratings)
            global_mean, num_items = stats.global_mean, stats.items
            settings = settings.replace(meanPrior=stats.mean_prior)
        both = search_rows(settings, rows)
    else:
        if num_items is None and fraction < 1:  # the whole's items, for the transfer
            num_items = train_ratings.select(ITEM).distinct().count()
        both = _bce_rows(settings, rows)
    plan = search_plan(settings, unit, global_mean)
    # The rank step (mse) may keep fewer directions; a warm start keeps its model's rank.
    choose_rank = settings.loss == "mse" and settings.initialModel is None
    factors = None
    if with_factors:
        search = functools.partial(search_arrays, choose_rank=choose_rank)
        *factors, found = search_factors_one_task(both, at.step_config("user"), at.step_config("item"), plan,
                                                  seed=settings.seed, search=search)  # fmt: skip
    else:
        search = functools.partial(search_record, choose_rank=choose_rank)
        found = search_one_task(both, at.step_config("user"), at.step_config("item"), plan, seed=settings.seed,
                                search=search)  # fmt: skip
    names = ("path", "widened", "at_limit", "rank", "rank_path", "task_seconds", "bias_reg", "bias_reg_before",
             "fixed")  # fmt: skip
    kept = {k: found[k] for k in names if k in found}
    kept["seconds"] = round(time.perf_counter() - began, 3)
    reg = found["reg"]
    if fraction < 1 and found["path"] and not found.get("fixed"):
        factor = transfer_factor(found["sample"], fraction, num_ratings, num_items)
        reg = min(HIGH, max(LOW, reg * factor))
        kept.update(sample_reg=found["reg"], transfer=factor, sample=found["sample"])
    log_search(settings, {**found, **kept, "reg": reg}, fraction)
    return reg, {**kept, "sample_fraction": fraction, **({"factors": tuple(factors)} if factors else {})}


def _bce_rows(settings: FitSettings, rows: DataFrame) -> DataFrame:
    """bce's search rows: labels as y, the fit part's item offsets as each row's offset."""
    fit_part, held = split_ratings(rows, test_fraction=VALIDATION_FRACTION, seed=settings.seed + VALIDATION_SEED)
    prepared = prepare(settings, fit_part)
    base = F.coalesce(F.col(BASELINE), F.lit(prepared.global_baseline))
    held = held.join(prepared.baseline.select(ITEM, BASELINE), ITEM, "left")
    offset = base if settings.itemOffset else F.lit(0.0)
    weight = F.col(WEIGHT) if WEIGHT in held.columns else F.lit(None).cast("double")
    held_rows = held.select(USER, ITEM, F.col(RATING).alias(TARGET), offset.alias(OFFSET), weight.alias(WEIGHT),
                            F.lit(1).alias(HELD))  # fmt: skip
    return prepared.targets.withColumn(HELD, F.lit(0)).unionByName(held_rows)
