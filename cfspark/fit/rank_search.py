"""λ and α of the all-items positive-only model, chosen on NDCG@k of a validation fold.

Positive-only data is used to rank, so its automatic λ (and α, the count mapping's scale)
is chosen on the ranking metric, not on a pointwise loss. A hashed VALIDATION_FRACTION (20 %) of
the training pairs is held out (never the test split, which does not reach this module),
the all-items model is fitted on the rest inside one Spark task (train/search_task.py with
this module's search), and each λ is scored by NDCG@k of the held pairs, the user's
training items excluded (kernels/ranking.py). λ is searched first at the reference α, by
the bracketing search of kernels/bracket.py in log λ; then α, the same way in log α at that
λ (docs/binary-labels.md has the measurement that chose this order over a joint search).
Each point warm-starts from the factors the previous one ended with, unless they collapsed
onto the zero-factor saddle (a strong λ shrinks them to zero, where NDCG is that of scores
all 0): then from the hashed init, and no point counts as settled while its factors still
grow (train/saddle.py), as in the λ search of train/search_task.py. The α pass's start grid holds
α₀, where the λ pass scored its choice: that point keeps its score and is not fitted again.
The fit at the choice starts from the items the chosen point ended with
(search_ranking).

The weight column arrives as confidences made with the reference α₀ (data/weights.py), so
1 + α·g(c) = 1 + (α/α₀)·(w − 1): α is searched by rescaling the weights, without the counts.

Past SEARCH_RATINGS training pairs the search takes a hashed quarter of the users, as mse's
does (fit/reg_search.py's search_fraction): at least 625k pairs, more than the samples of 415k
and 545k that chose as all users did on two generated play-count sets, where samples of 207k and
273k chose λ anywhere over three decades (docs/benchmarks.md "The positive-only search on a
quarter of the users"). Its λ is kept as chosen, with no transfer factor: under the all-items
model an item's unlabelled pairs shrink with the sample as its positives and its count-scaled
penalty do, and the samples' choices showed no drift in λ.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable

import numpy as np
from pyspark.sql import DataFrame

from cfspark.fit.reg_search import SAMPLE_SEED, SEARCH_RATINGS, sampled_users, search_fraction, search_rows
from cfspark.fit.settings import FitSettings
from cfspark.kernels.bracket import bracket_search
from cfspark.kernels.init import initial_params
from cfspark.kernels.ranking import ndcg_rows
from cfspark.train.one_task import csr_by_row
from cfspark.train.saddle import factor_scale, growing, warm_start
from cfspark.train.search_task import (
    MIN_ITER,
    SETTLED,
    SearchPlan,
    search_factors_one_task,
    search_then_fit_one_task,
)
from cfspark.train.step import StepConfig, solve_rows

K = 10  # NDCG@K is what the search maximises
REG_START = (0.1, 0.03, 0.01)  # λ, count-scaled by a row's positives as implicit ALS's regParam
REG_MIDDLE = REG_START[len(REG_START) // 2]  # the λ kept where nothing chooses one
# λ → 0 stays well-posed here (the all-items Gramian is full rank), and on MovieLens as counts
# the best λ lay at 1e-4: the range goes low enough for the bracket to close below it.
REG_LOW, REG_HIGH = 1e-7, 10.0
ALPHA_START = (0.3, 1.0, 3.0)
ALPHA_LOW, ALPHA_HIGH = 0.01, 100.0
STEP = 3.0
TOL_LOG = math.log(2.0)  # both final brackets: within 2 × of the best (1.3 × took 25 % more points, same choice)
POINT_ITER = 6
# NDCG of a fold of a few pairs per user is noisy: at 10 % the search's choice ranked below the
# fixed λ = 0.01, α = 1 on test on the generated plays (0.0797 against 0.0806); at 20 % it ranked
# above on both sets (0.0818, and 0.3079 against 0.3061 on MovieLens as counts).
VALIDATION_FRACTION = 0.2
MAX_USERS = 5000  # NDCG is measured on at most this many validation users (those of smallest hashed key)

log = logging.getLogger("cfspark")


@dataclasses.dataclass(frozen=True)
class AlphaPlan:
    """What is searched: passes, the one-dimensional searches in order ("reg", "alpha"); reg,
    the λ kept when no pass searches it; reference, the α₀ the weights were made with."""

    reference: float
    passes: tuple[str, ...]
    reg: float = REG_MIDDLE
    k: int = K


def search_ranking(fit: tuple, held: dict, user_keys, item_keys, user_cfg: StepConfig, item_cfg: StepConfig,
                   plan: SearchPlan, *, alpha: AlphaPlan) -> tuple[dict, tuple | None]:  # fmt: skip
    """λ (and α) of the all-items model that maximise NDCG@k of the held pairs, as a search of
    search_factors_one_task: ({reg, alpha, ndcg, path: [{reg, alpha, ndcg, iterations}],
    widened, at_limit}, the (user, item) params a fit at its choice starts from). The params
    are None without a search, or if the chosen point diverged; else the item factors the chosen
    point ended with (the hashed init if they collapsed, train/saddle.py) and the users'
    hashed init, which does not matter: the fit's first half-step solves every user exactly
    from the items.

    From the hashed init the fit at the choice took 9 to 12 iterations on two generated
    play-count sets; from the chosen point's items, 2 to 4, to an NDCG@10 of the held pairs
    within 0.4 % of it (docs/benchmarks.md "The positive-only fit from the search's items")."""
    user_local, item_local, _, _, weight = fit
    n_users = len(user_keys)
    gain = np.zeros(len(user_local)) if weight is None or alpha.reference <= 0 else (weight - 1.0) / alpha.reference
    by_user = csr_by_row(user_local, item_local, n_users, gain)
    by_item = csr_by_row(item_local, user_local, len(item_keys), gain)
    known = held["user"] >= 0
    held_csr = csr_by_row(held["user"][known], held["item"][known], n_users)[:2]
    rows = np.flatnonzero(held_csr[0][1:] > held_csr[0][:-1])
    rows = rows[np.argsort(user_keys[rows], kind="stable")[:MAX_USERS]]
    init = (initial_params(user_keys, user_cfg.rank, scale=user_cfg.init_scale, side="user"),
            initial_params(item_keys, item_cfg.rank, scale=item_cfg.init_scale, side="item"))  # fmt: skip
    state = {"users": init[0], "items": init[1]}
    path: list[dict] = []
    per_row: list[np.ndarray] = []  # each path point's NDCG per validation user
    # Each path point's item factors, the fit at the choice starts from them: a finished pass
    # keeps its choice's alone, so at most one pass's points are held.
    ended: list[np.ndarray | None] = []
    tiled: tuple[dict, dict] = ({}, {})  # each side's tiling (step.solve_rows), made once for every point
    if not len(rows):  # too few pairs for a validation fold: the start grids' middles
        reg, a = alpha.reg, alpha.reference
        return {"reg": reg, "alpha": a, "ndcg": None, "path": [], "widened": "", "at_limit": False}, None

    def score(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, float]:
        """NDCG@k of each validation user, and 1 − their mean."""
        scores = ndcg_rows(users, items, rows, by_user[:2], held_csr, alpha.k)
        return scores, 1.0 - float(scores.mean())

    def settle(reg: float, a: float) -> float:
        """1 − NDCG@k once this (λ, α) has settled, from the last point's factors; a point the
        λ pass settled already (the α pass starts at its λ and α₀) is its score again."""
        done = [j for j, p in enumerate(path) if p["reg"] == reg and p["alpha"] == a and "reused" not in p]
        if done:
            j = done[-1]
            path.append({**path[j], "iterations": 0, "reused": True})
            per_row.append(per_row[j])
            ended.append(ended[j])
            return 1.0 - path[j]["ndcg"] if np.all(np.isfinite(per_row[j])) else np.inf
        ucfg, icfg = (dataclasses.replace(cfg, reg=reg * plan.unit) for cfg in (user_cfg, item_cfg))
        u_side = (by_user[0], by_user[1], None, None, 1.0 + a * by_user[2])
        i_side = (by_item[0], by_item[1], None, None, 1.0 + a * by_item[2])
        # Factors the last point collapsed would hold this one at the saddle, its NDCG flat while
        # they grow from nothing: it starts from the init instead, with the first point's budget.
        (users, items), restart = (
            warm_start((state["users"], state["items"]), init, user_cfg.rank) if path
            else ((state["users"], state["items"]), False)
        )  # fmt: skip
        iterations, last_loss, size, diverged = 0, None, factor_scale(users, items, user_cfg.rank), False
        # NDCG@k, the costliest part of an iteration, is measured only where a stop is decided on
        # it (an iteration that may stop and did not on the loss, and the one before it) and at
        # the point's last iteration: the same stops as measuring it at every iteration.
        measured: dict[int, tuple[np.ndarray, float]] = {}
        before = None  # the last iteration's (users, items)
        for _ in range(plan.point_iter if path and not restart else plan.first_iter):
            # The iteration's data loss is the item half-step's; each side's tiling is kept across points.
            users, _, (_, user_reg) = solve_rows(ucfg, *u_side, items, users, None, data_loss=False, cache=tiled[0])
            items, _, (data, item_reg) = solve_rows(icfg, *i_side, users, items, None, cache=tiled[1])
            iterations += 1
            loss = data + item_reg + user_reg
            if not np.isfinite(loss) or not np.all(np.isfinite(users)):
                diverged = True
                break
            converged = last_loss is not None and abs(last_loss - loss) <= plan.tol * abs(last_loss)
            last_loss = loss
            last_size, size = size, factor_scale(users, items, user_cfg.rank)
            if iterations >= MIN_ITER and not growing(last_size, size):
                if converged:
                    break
                if before is not None:
                    if iterations - 1 not in measured:
                        measured[iterations - 1] = score(*before)
                    measured[iterations] = score(users, items)
                    last_value, value = measured[iterations - 1][1], measured[iterations][1]
                    # Settled relative to NDCG itself: 1 − NDCG is near 1, where SETTLED would hide every step.
                    if abs(value - last_value) <= SETTLED * (1.0 - last_value):
                        break
            before = (users, items)
        if diverged:
            scores, value = np.full(len(rows), -np.inf), np.inf
        else:
            scores, value = measured[iterations] if iterations in measured else score(users, items)
        state["users"], state["items"] = users, items
        path.append({"reg": reg, "alpha": a, "ndcg": 1.0 - value, "iterations": iterations,
                     **({"restarted": True} if restart else {})})  # fmt: skip
        per_row.append(scores)
        ended.append(items)
        return value

    reg, a = alpha.reg, alpha.reference
    widened, at_limit, best, picked = [], False, None, None
    for dimension in alpha.passes:
        first = len(path)
        # Refinement stops where the validation users cannot tell the bracket's ends from its best.
        resolved = functools.partial(fold_resolution, per_row, first)
        if dimension == "reg":
            found = bracket_search(lambda r, a=a: settle(r, a), start=plan.start, step=plan.step, tol=plan.tol_log,
                                   low=plan.low, high=plan.high, resolution=resolved)  # fmt: skip
            # The best λ: the NDCG surface in λ is flat near its top, and within noise the stronger
            # λ ranked worse on test (MovieLens as counts), so λ takes no preference.
            chosen = int(np.argmax([p["ndcg"] for p in path[first:]]))
            reg = path[first + chosen]["reg"]
        elif dimension == "alpha" and np.any(gain):
            found = bracket_search(lambda x, reg=reg: settle(reg, x), start=ALPHA_START, step=STEP, tol=TOL_LOG,
                                   low=ALPHA_LOW, high=ALPHA_HIGH, resolution=resolved)  # fmt: skip
            # Within noise, the α nearest the reference α₀.
            near = math.log(alpha.reference)
            chosen = within_noise(
                per_row[first:], path[first:], prefer=lambda p, near=near: abs(math.log(p["alpha"]) - near)
            )
            a = path[first + chosen]["alpha"]
        else:
            continue
        best, picked = path[first + chosen]["ndcg"], first + chosen
        ended[:] = [items if j == picked else None for j, items in enumerate(ended)]
        widened += [f"{dimension}:{found.widened}"] if found.widened else []
        at_limit = at_limit or found.at_limit
    record = {"reg": reg, "alpha": a, "ndcg": best, "path": path, "widened": ",".join(widened), "at_limit": at_limit}
    if picked is None or not np.all(np.isfinite(ended[picked])):  # no point that did not diverge to start from
        return record, None
    start, _ = warm_start((init[0], ended[picked]), init, user_cfg.rank)
    return record, start


def fold_resolution(per_row: list[np.ndarray], first: int) -> float:
    """The difference of 1 − NDCG that the validation users resolve among the points of
    per_row from first on, relative to the best's 1 − NDCG: the median over the other points
    of the paired standard error of the best's NDCG minus theirs (0 before two points)."""
    values = [v for v in per_row[first:] if len(v) > 1 and np.all(np.isfinite(v))]
    if len(values) < 2:
        return 0.0
    top = max(range(len(values)), key=lambda j: float(np.mean(values[j])))
    errors = [paired_error(values[top] - v) for j, v in enumerate(values) if j != top]
    return float(np.median(errors)) / max(1.0 - float(np.mean(values[top])), 1e-12)


def paired_error(diff: np.ndarray) -> float:
    """The standard error of the mean of per-user differences diff (0 for fewer than two)."""
    return float(np.std(diff, ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0


def within_noise(per_row: list[np.ndarray], points: list[dict], prefer) -> int:
    """The index of the preferred point (smallest prefer(point)) among those whose mean NDCG is
    within one paired standard error of the best's: the one-standard-error rule, so that a
    difference the validation users cannot tell apart does not move λ or α."""
    means = [float(np.mean(v)) if len(v) else -np.inf for v in per_row]
    top = int(np.argmax(means))
    close = []
    for j, values in enumerate(per_row):
        diff = per_row[top] - values
        if not np.all(np.isfinite(diff)):
            continue
        if float(np.mean(diff)) <= paired_error(diff):
            close.append(j)
    return min(close, key=lambda j: (prefer(points[j]), -means[j]))


def choose_ranking(
    settings: FitSettings, confidences: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, *, alpha: AlphaPlan,
    tol: float, num_ratings: int, max_ratings: int = SEARCH_RATINGS,
) -> dict:  # fmt: skip
    """search_ranking's record for the positive-only training pairs (user, item, rating, weight =
    confidence under α₀; num_ratings of them), on a hashed validation fold of a user sample of
    them (search_fraction, past max_ratings); user_cfg/item_cfg the fit's half-steps. Its
    "factors" are the (user, item) tables the fit at the choice starts from, and their row
    counts (search_ranking)."""
    fraction = search_fraction(num_ratings, max_ratings)
    rows = sampled_users(confidences, fraction, settings.seed + SAMPLE_SEED)
    rows = search_rows(settings, rows, VALIDATION_FRACTION)
    search = functools.partial(search_ranking, alpha=alpha)
    users, items, counts, found = search_factors_one_task(
        rows, user_cfg, item_cfg, _plan(settings, tol), seed=settings.seed, search=search
    )
    return {**_reported(found, alpha, fraction), "factors": (users, items, counts)}


def choose_and_fit_ranking(
    settings: FitSettings, confidences: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, *, alpha: AlphaPlan,
    tol: float, fit_configs: Callable[[dict], tuple[StepConfig, StepConfig]], num_ratings: int,
    max_ratings: int = SEARCH_RATINGS,
) -> tuple[DataFrame, DataFrame, dict]:  # fmt: skip
    """choose_ranking (on the same user sample, inside the task: the other users' pairs are
    fitted, not searched on), then the fit of every pair from the search's factors with the
    half-steps fit_configs(record) gives, at tol and settings.maxIter, in one Spark job that
    reads the pairs into Python once: (user_factors, item_factors, record), the record's
    "search" choose_ranking's (without its factors)."""
    fraction = search_fraction(num_ratings, max_ratings)
    search = functools.partial(search_ranking, alpha=alpha)
    plan = dataclasses.replace(_plan(settings, tol), sample=fraction)
    users, items, record = search_then_fit_one_task(
        search_rows(settings, confidences, VALIDATION_FRACTION, sample=fraction), user_cfg, item_cfg, plan,
        seed=settings.seed, search=search, fit_configs=fit_configs, max_iter=settings.maxIter,
    )  # fmt: skip
    record["search"] = _reported(record["search"], alpha, fraction)
    return users, items, record


def _plan(settings: FitSettings, tol: float) -> SearchPlan:
    return SearchPlan(start=REG_START, unit=1.0, low=REG_LOW, high=REG_HIGH, step=STEP, tol_log=TOL_LOG,
                      first_iter=settings.maxIter, point_iter=POINT_ITER, tol=tol)  # fmt: skip


def _reported(found: dict, alpha: AlphaPlan, fraction: float) -> dict:
    """The search's record, logged, with its sample's share of the users and its metric."""
    for point in found["path"]:
        log.info("automatic λ, α: reg %.4g, alpha %.4g give validation NDCG@%d %.4f after %d iterations",
                 point["reg"], point["alpha"], alpha.k, point["ndcg"], point["iterations"])  # fmt: skip
    if found["at_limit"]:
        log.warning("automatic λ, α: the best is an end of the range (λ in [%g, %g], α in [%g, %g])",
                    REG_LOW, REG_HIGH, ALPHA_LOW, ALPHA_HIGH)  # fmt: skip
    log.info("automatic λ, α: chose reg = %.4g, alpha = %.4g on NDCG@%d, searched on %.0f %% of the users",
             found["reg"], found["alpha"], alpha.k, 100 * fraction)  # fmt: skip
    return {**found, "sample_fraction": fraction, "metric": f"ndcg@{alpha.k}"}
