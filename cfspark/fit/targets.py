"""What training fits, per loss: the targets, the item baselines and the global baseline.

mse: y = y' = rating − μ_i with no offset; the baseline is μ_i, shrunk by meanPrior.
bce: y = the label, with o_i added to each score; the baseline is o_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.plans import one_job
from cfspark.core.schema import (
    BASELINE,
    ITEM,
    ITEM_MEAN,
    ITEM_OFFSET,
    ITEM_RATINGS,
    LABELLED,
    NORMALISED,
    OFFSET,
    RATING,
    TARGET,
    USER,
    WEIGHT,
)
from cfspark.data.normalise import A_SUM, AY_SUM, AYY_SUM, item_sums, means_of, normalise
from cfspark.data.offsets import global_rate, item_offsets
from cfspark.data.priors import prior_of
from cfspark.data.weights import given_weight, row_weight
from cfspark.fit.settings import AUTO, BCE_BIAS_REG, FitSettings
from cfspark.kernels.baseline import spread_of

# An item table of at most this many rows (tens of bytes each) is broadcast to the ratings'
# tasks when the targets are joined to it, so no rating is shuffled: planning it from its
# size estimate alone, Spark chose a sort-merge join that moved every rating by item (the
# costliest part of setup at 5M ratings, docs/benchmarks.md). Beyond it, Spark's own choice.
BROADCAST_ITEMS = 1_000_000


def _broadcast(stats: DataFrame) -> bool:
    """Whether to broadcast the (cached) item table; counting it computes the cache, which
    setup reads next anyway."""
    return stats.count() <= BROADCAST_ITEMS


@dataclass(frozen=True)
class Targets:
    targets: DataFrame  # (user, item, y, offset, weight): weight is the rating's a_r, or null (1)
    item_stats: DataFrame  # the model's item table: μ_i and counts (mse), or rates and o_i (bce); cached
    baseline: DataFrame  # (item, baseline, ratings): the per-item term and the item's rating count
    global_baseline: float  # for items without one: the global mean (mse), or the global rate's logit (bce)
    num_ratings: int | None = None  # the number of targets, when preparing them counted it (mse)
    # The columns of targets besides y that can hold a value; the others are null in every row.
    carries: tuple[str, ...] = (OFFSET, WEIGHT)


@dataclass(frozen=True)
class TargetStats:
    """What one aggregation over the training ratings gives (mse): the spread s, the number
    of ratings and the weighted global mean g, which prepare() and the λ search reuse, and,
    when kept, the item sums it was taken from, from which prepare() takes μ_i."""

    spread: float
    count: int
    global_mean: float
    items: int = 0  # the number of items rated
    mean_prior: float = 0.0  # m, the item means' prior count the spread was taken with (meanPrior, resolved)
    # item_sums' table, cached, under target_stats(keep_sums=True): prepare() takes its item means
    # from it rather than from a second pass over the ratings. The caller unpersists it.
    item_sums: DataFrame | None = field(default=None, compare=False, repr=False)


def target_spread(settings: FitSettings, train_ratings: DataFrame) -> tuple[float, int | None]:
    """(s, the number of ratings), as target_stats gives them; (1, None) for bce."""
    if settings.loss != "mse":
        return 1.0, None
    stats = target_stats(settings, train_ratings)
    return stats.spread, stats.count


def target_stats(settings: FitSettings, train_ratings: DataFrame, *, keep_sums: bool = False) -> TargetStats:
    """s, the count, g and the item means' prior count m of mse ratings (m estimated here
    under meanPrior = "auto", kernels/priors.py): s is the root mean square of the mse targets y − μ_i that
    prepare() makes (weighted as the loss is), 1 for bce, whose labels have no scale (and
    whose count is then not taken: None). One aggregation over the item sums:
    with A, S, Q an item's Σa, Σa·y, Σa·y² and μ_i = p + q·g (p = S/(A+m), q = m/(A+m)),
    Σa(y − μ_i)² = Q − 2μ_i S + μ_i² A is a quadratic in the global mean g.
    keep_sums: the item sums stay cached, in TargetStats.item_sums, for the fit's prepare()."""
    sums = item_sums(train_ratings)
    m = settings.meanPrior
    # The items' sums feed more than one aggregation (m, then s; prepare() under keep_sums): cached,
    # not recomputed. Only a table cached here is unpersisted here: unpersisting a plan drops any
    # cached table of the same result, a sibling fit's kept sums among them.
    cached = m == AUTO or keep_sums
    if cached:
        sums = sums.cache()
    try:
        if m == AUTO:
            m = prior_of(sums, A_SUM, AY_SUM, AYY_SUM)
        A, S, Q = F.col(A_SUM), F.col(AY_SUM), F.col(AYY_SUM)  # the docstring's sums
        p, q = S / (A + m), F.lit(m) / (A + m)
        # Not planned as one job (core/plans.py): without adaptive execution's coalescing, the total
        # adds one partial sum per shuffle partition in the order a cluster fetches them, and s moved
        # in its last bits between two runs of one command, with λ in ALS's units and so a
        # checkpoint's fingerprint (tests/test_cluster.py's resumed run started afresh).
        row = sums.agg(
            F.sum(A), F.sum(S), F.sum(Q - 2 * p * S + p * p * A), F.sum(-2 * q * S + 2 * p * q * A),
            F.sum(q * q * A), F.sum(ITEM_RATINGS), F.count(F.lit(1)),
        ).first()  # fmt: skip
    except BaseException:
        if cached:
            sums.unpersist()
        raise
    if cached and not keep_sums:
        sums.unpersist()
    total, g = row[0], row[1] / row[0]
    # The item sums are cached when they feed more than one aggregation, and the total over a
    # cached table's partitions adds them in the order a cluster fetches them: spread_of rounds.
    spread = spread_of((row[2] + g * row[3] + g * g * row[4]) / total)
    kept = sums if keep_sums else None
    return TargetStats(spread, int(row[5]), g, int(row[6]), float(m), item_sums=kept)


def _item_means(
    settings: FitSettings, train_ratings: DataFrame, global_mean: float | None, sums: DataFrame | None
) -> tuple[DataFrame, float, tuple[int, int]]:
    """item_means' table, cached and computed, the global mean g and (the number of items,
    the number of ratings), from sums (item_sums' table of train_ratings) when given, else
    from a pass over the ratings. The counts come off the item table's own pass. g, when not
    given, is summed over the ratings' partitions rather than over the item table's: a sum
    over shuffle partitions changes in its last bits with spark.sql.shuffle.partitions,
    and the model would change with it."""
    if global_mean is None:
        a = row_weight(train_ratings)
        global_mean = float(train_ratings.agg(F.sum(a * F.col(RATING)) / F.sum(a)).first()[0])
    sums = item_sums(train_ratings) if sums is None else sums
    prior = settings.meanPrior
    if prior == AUTO:  # unresolved only where prepare() is called apart from a fit (fit_ratings resolves it)
        prior = prior_of(sums, A_SUM, AY_SUM, AYY_SUM)
    stats = means_of(sums, prior=prior, global_mean=global_mean).cache()
    with one_job(train_ratings.sparkSession):  # the item sums' shuffle and the count in one job
        row = stats.agg(F.count(F.lit(1)), F.sum(ITEM_RATINGS)).first()  # computes the cache
    return stats, global_mean, (int(row[0]), int(row[1] or 0))


def prepare(
    settings: FitSettings,
    train_ratings: DataFrame,
    global_mean: float | None = None,
    sums: DataFrame | None = None,
) -> Targets:
    """The targets and baselines of train_ratings (user, item, rating[, weight]) for settings' loss;
    global_mean, the ratings' weighted mean (mse) if already known, saves computing it, and
    sums, their item sums if already kept (TargetStats.item_sums, mse), a pass over them."""
    weight = given_weight(train_ratings)
    if settings.loss == "mse":
        stats, glob, (items, count) = _item_means(settings, train_ratings, global_mean, sums)
        no_offset = F.lit(None).cast("double").alias(OFFSET)
        targets = normalise(train_ratings, stats, broadcast=items <= BROADCAST_ITEMS).select(
            USER, ITEM, F.col(NORMALISED).alias(TARGET), no_offset, weight.alias(WEIGHT)
        )
        baseline = stats.select(ITEM, F.col(ITEM_MEAN).alias(BASELINE), ITEM_RATINGS)
        return Targets(targets, stats, baseline, glob, count, carries=_carried(train_ratings, offset=False))
    # Weighted, as the loss is. An exposure fit whose 0s are drawn in the half-steps (draws, with
    # no item offset: fit/exposure.py) has only its 1s here, and no rate to centre on.
    rate = global_rate(train_ratings) if settings.draws is None else 0.5
    with_offset = settings.itemOffset
    stats = item_offsets(train_ratings, prior=settings.offsetPrior, rate=rate, enabled=with_offset).cache()
    offset = F.col(ITEM_OFFSET) if with_offset else F.lit(None).cast("double")
    per_item = stats.select(ITEM, ITEM_OFFSET)
    targets = train_ratings.join(F.broadcast(per_item) if _broadcast(stats) else per_item, ITEM).select(
        USER, ITEM, F.col(RATING).alias(TARGET), offset.alias(OFFSET), weight.alias(WEIGHT)
    )
    glob = math.log(rate / (1 - rate)) if with_offset else 0.0
    baseline = stats.select(ITEM, F.col(ITEM_OFFSET).alias(BASELINE), F.col(LABELLED).alias(ITEM_RATINGS))
    return Targets(targets, stats, baseline, glob, carries=_carried(train_ratings, offset=with_offset))


def _carried(train_ratings: DataFrame, *, offset: bool) -> tuple[str, ...]:
    """Targets.carries: the offset where the loss has one, the weight where the ratings have one."""
    return (*((OFFSET,) if offset else ()), *((WEIGHT,) if WEIGHT in train_ratings.columns else ()))


def resolve_bias_reg(settings: FitSettings) -> FitSettings:
    """bce's settings with biasReg a number, carried onto the model: BCE_BIAS_REG under "auto".
    mse's "auto" is estimated in the λ search's task (fit/reg_search.py), λ fixed or not."""
    if settings.biasReg != AUTO or settings.loss != "bce":
        return settings
    return settings.carry(biasReg=BCE_BIAS_REG)
