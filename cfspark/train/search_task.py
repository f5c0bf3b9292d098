"""The automatic λ search inside one Spark task, on one set of CSR arrays.

The task receives the training part of the search's ratings and a validation fold (the
HELD rows), indexes both sides as the one-task fit does (train/one_task.py), and walks the
bracketing search of kernels/bracket.py: each λ starts from the factors of the nearest λ
fitted so far, and stops once its validation score (RMSE for mse, logloss for bce) no longer
improves, or its training loss has converged. The whole search is one Spark job: the
fixed cost per half-step of a distributed walk is paid once.

Zero factors are a stationary point of the loss at every λ (train/saddle.py): a minimum at a
strong λ, a saddle at a weaker one. A strong λ shrinks the factors towards it, and a weaker
λ warm-started from there stays beside it, its score flat because it moves with the square
of the factors. So a point whose factors have collapsed is never a start (with no other,
the next point takes the hashed init), a point whose factor term still grows has not settled however flat its score, and
every collapsed point (one model, the biases alone) takes the first one's score.

Under biasReg = "auto" (mse) λ_b is estimated twice: from y − μ_i before the first point,
then from what the chosen point's factors leave, and λ is bracketed again at the second
(from a tol-wide start around the choice), as it is again at a rank the rank step cuts to.
A λ the caller fixed (SearchPlan.fixed) is fitted as the one point, for λ_b's second
estimate alone: the caller's fit runs at it, from its own start.

The search and the fit at its choice share one task where the fit runs in one (mse): the task
reads every training rating once, and past the search's size the users outside a hashed
sample are OUTSIDE rows, fitted once the search is done but not searched on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.core.schema import ITEM, OFFSET, TARGET, USER, WEIGHT
from cfspark.kernels.baseline import shrunk_means, target_moments
from cfspark.kernels.bracket import Bracketed, bracket_search
from cfspark.kernels.dof import factor_dof
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col
from cfspark.kernels.losses import sigmoid
from cfspark.kernels.priors import prior_from_rows
from cfspark.kernels.truncate import principal_factors, truncated_rank
from cfspark.train.one_task import (
    ITEM_KEY,
    MSE_ITEM_COLUMNS,
    RECORD_COL,
    USER_KEY,
    csr_by_row,
    factor_batch,
    fit_arrays,
    keyed_rows,
    predictions,
    refused_pairs,
    run_factor_task,
)
from cfspark.train.saddle import collapsed, factor_scale, growing, keep_near_best, nearest
from cfspark.train.step import StepConfig, solve_rows

HELD = "held"  # 1 on a validation row, 0 on a training row, OUTSIDE on a row the search does not see
# A row of a user outside the search's sample: fitted once the search is done, not searched on.
OUTSIDE = 2
FACTOR_ROWS = "factor_rows"  # the factor tables' (users, items) rows: the fit's warm start need not count them
# A point of the path stops once an iteration changes its validation score by less than this
# fraction (either way), after at least MIN_ITER iterations: the first iteration from the last
# λ's factors may move the score either way, and the score that counts is where λ settles.
SETTLED = 1e-3
MIN_ITER = 2


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What the search walks: start grid and hard range in regUnits, λ = reg·unit in the kernel."""

    start: Sequence[float]
    # None: the spread of the mse targets over every row, taken in the search-and-fit task
    # (_with_targets), which also scales the initial factors' spread by its root.
    unit: float | None
    low: float
    high: float
    step: float
    tol_log: float
    first_iter: int  # iterations at most for the first λ, which starts from the initial factors
    point_iter: int  # and for each later one, warm-started
    tol: float  # the final fit's training-loss tol where no validation score bounds it
    # mse: (meanPrior, global mean): the task centres y on item means. A None is estimated there:
    # meanPrior on the fit part's rows, both on every row in the search-and-fit task (_with_targets).
    centre: tuple[float | None, float | None] | None = None
    bias_prior: bool = False  # mse, biasReg = "auto": λ_b estimated from the fit part's users (kernels/priors.py)
    fixed: bool = False  # start is one λ the caller fixed: fitted for λ_b's estimates, not searched
    # The share of the users whose rows are searched on (the rest are OUTSIDE): mse's choice is
    # carried over to every row by transfer_factor (_carry_over); the ranking search keeps its own.
    sample: float = 1.0


def _log_reg(reg: float) -> float:
    """The key of a λ among the points fitted: log λ, and −∞ for a λ fixed at 0 (no penalty),
    which is weaker than any other."""
    return math.log(reg) if reg > 0 else -math.inf


def transfer_factor(sample: dict, fraction: float, num_ratings: int, num_items: int) -> float:
    """λ(all users) / λ(the sample), from the ratings per factor vector N / (U + I) in each.

    Count scaling gives a vector with n ratings a penalty λ·n: λ·2N / (U + I) on average over
    the U + I vectors. A user sample keeps each user's ratings but leaves each item fewer, so
    the sample has more vectors per rating and chooses a larger λ; what carries over is the
    average penalty per vector (measured: the sample's λ over all users' follows the ratio
    of vectors per rating at fractions 1/2 to 1/8, docs/benchmarks.md). sample holds the
    sample's ratings, users and items; the whole has num_ratings ratings, num_items items
    and about users / fraction users (the sample is a hashed share of them)."""
    if fraction >= 1:
        return 1.0
    per_sample = sample["ratings"] / (sample["users"] + sample["items"])
    per_whole = num_ratings / (sample["users"] / fraction + num_items)
    return per_sample / per_whole


def validation_score(loss: str, users: np.ndarray, items: np.ndarray, held: dict, rank: int) -> float:
    """RMSE (mse) or logloss (bce) of the held rows under these params, with the cold-start
    rule of fit/predict.py: an unseen user gets the item bias alone, an unseen item neither."""
    losses = held_losses(loss, users, items, held, rank)
    return float(np.sqrt(np.mean(losses))) if loss == "mse" else float(np.mean(losses))


def held_losses(loss: str, users: np.ndarray, items: np.ndarray, held: dict, rank: int) -> np.ndarray:
    """Each held row's squared error (mse) or logloss (bce), as validation_score scores them."""
    u, i = held["user"], held["item"]
    both = (u >= 0) & (i >= 0)
    z = np.zeros(len(u))
    z[both] = predictions(users, items, u[both], i[both])
    item_only = (u < 0) & (i >= 0)
    z[item_only] = items[:, bias_col(rank, "item")].take(i[item_only])
    if held["offset"] is not None:
        z += held["offset"]
    if loss == "mse":
        return (z - held["y"]) ** 2
    p = np.clip(sigmoid(z), 1e-15, 1 - 1e-15)
    y = held["y"]
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def search_arrays(fit: tuple, held: dict, user_keys, item_keys, user_cfg: StepConfig, item_cfg: StepConfig,
                  plan: SearchPlan, *, choose_rank: bool = False) -> tuple[dict, tuple | None]:  # fmt: skip
    """The bracketing search on dense local ids: fit is (user_local, item_local, y, offset, weight)
    of the training rows; held has user, item (−1 if unseen in fit), y and offset of the
    validation rows. Returns ({reg, path, widened, at_limit[, fixed]} with reg in regUnits, and
    the (user, item) params the chosen λ ended with, None if there was no search)."""
    user_local, item_local, y, offset, weight = fit
    chosen: dict = {"fixed": True} if plan.fixed else {}
    if plan.bias_prior:  # before any point, from y − μ_i: re-estimated once the factors are fitted
        chosen["bias_reg"] = prior_from_rows(user_local, y, weight, len(user_keys))
        user_cfg, item_cfg = (dataclasses.replace(cfg, bias_reg=chosen["bias_reg"]) for cfg in (user_cfg, item_cfg))
    if not len(held["y"]):  # too few ratings for a validation fold: the start grid's middle
        return {"reg": plan.start[len(plan.start) // 2], "path": [], "widened": "", "at_limit": False, **chosen}, None
    by_user = csr_by_row(user_local, item_local, len(user_keys), y, offset, weight)
    by_item = csr_by_row(item_local, user_local, len(item_keys), y, offset, weight)
    init = (initial_params(user_keys, user_cfg.rank, scale=user_cfg.init_scale, side="user"),
            initial_params(item_keys, item_cfg.rank, scale=item_cfg.init_scale, side="item"))  # fmt: skip
    # The directions the factors use (fewer once the rank step drops some), and λ_b.
    state = {"rank": user_cfg.rank, "bias_reg": user_cfg.bias_reg}
    metric = "rmse" if user_cfg.loss == "mse" else "logloss"
    tiled: tuple[dict, dict] = ({}, {})  # each side's ratings, tiled once for every half-step (step.solve_rows)
    path: list[dict] = []
    best: dict = {"key": (np.inf, np.inf)}  # the params of the best point so far, as bracket_search ranks them
    # The points whose factors did not collapse, at the rank the factors use now: log λ → (score,
    # users, items). A point starts from the nearest of them in log λ, its best predictor.
    fitted: dict[float, tuple] = {}

    def point(reg: float, users: np.ndarray, items: np.ndarray, max_iter: int) -> tuple:
        """(users, items, validation score, iterations) of a fit at reg from users, items."""
        ucfg = dataclasses.replace(user_cfg, reg=reg * plan.unit, bias_reg=state["bias_reg"])
        icfg = dataclasses.replace(item_cfg, reg=reg * plan.unit, bias_reg=state["bias_reg"])
        user_state = item_state = None
        value, last_value, iterations = np.inf, None, 0
        size = factor_scale(users, items, user_cfg.rank)
        for _ in range(max_iter):
            # The score is on the validation rows: the training data loss is not read.
            users, user_state, (_, user_reg) = solve_rows(ucfg, *by_user, items, users, user_state, data_loss=False,
                                                          cache=tiled[0])  # fmt: skip
            items, item_state, (_, item_reg) = solve_rows(icfg, *by_item, users, items, item_state, data_loss=False,
                                                          cache=tiled[1])  # fmt: skip
            iterations += 1
            value = validation_score(user_cfg.loss, users, items, held, user_cfg.rank)
            if not np.isfinite(value) or not np.isfinite(item_reg + user_reg):
                value = np.inf
                break
            # Only the validation score ends a point: the training loss can settle while the
            # score it is chosen by still moves. Near the zero saddle the score moves with the
            # square of the factors, so a flat score there counts only once they stop growing.
            last_size, size = size, factor_scale(users, items, user_cfg.rank)
            settled = last_value is not None and abs(value - last_value) <= SETTLED * last_value
            settled = settled and not growing(last_size, size)
            last_value = value
            if iterations >= MIN_ITER and settled:
                break
        return users, items, value, iterations

    def score(reg: float) -> float:
        kept = state["rank"]
        if fitted:
            _, users, items = fitted[nearest(fitted, _log_reg(reg))]
        else:
            # The first point, or every point so far collapsed, which would hold this λ at the
            # saddle: it starts from the init, with the first point's budget. (After the rank
            # step fitted holds its factors, so the init here has every direction.)
            users, items = init
        restart = bool(path) and not fitted
        max_iter = plan.first_iter if not fitted else plan.point_iter
        users, items, value, iterations = point(reg, users, items, max_iter)
        zero = collapsed((users, items), init, kept)
        if zero:
            # Every collapsed point is the model with no factors, whose scores differ only by how
            # far its biases got: one score for all of them, so that the bracket takes the weakest
            # (the ties' rule) and probes between it and the next weaker λ, where the factors
            # switch on and may beat it.
            value = state.setdefault("no_factors", value)
        if not zero:
            fitted[_log_reg(reg)] = (value, users, items)
            keep_near_best(fitted)
        path.append({"reg": reg, "reg_als": reg * plan.unit, metric: value, "iterations": iterations,
                     "rank": kept, "bias_reg": state["bias_reg"], **({"restarted": True} if restart else {}),
                     **({"collapsed": True} if zero else {})})  # fmt: skip
        if (value, _log_reg(reg)) < best["key"]:
            best.update(key=(value, _log_reg(reg)), params=(users, items))
        return value

    def again(params: tuple, reg: float, start: tuple[float, ...]) -> tuple[float, tuple]:
        """λ bracketed anew from start around reg, from params, once the model it was chosen
        for has changed (fewer directions, another λ_b): (the new choice, its params)."""
        fitted.clear()
        fitted[_log_reg(reg)] = (np.inf, *params)
        best.update(key=(np.inf, np.inf), params=params)
        state.pop("no_factors", None)  # the biases' model is scored afresh too
        if len(start) == 1:  # reg refitted, not searched
            score(reg)
            return reg, best["params"]
        found = bracket_search(score, start=start, step=plan.step, tol=plan.tol_log, low=plan.low, high=plan.high,
                               resolution=SETTLED)  # fmt: skip
        return found.reg, best["params"]

    if plan.fixed:
        reg = plan.start[0]
        found = Bracketed(reg, score(reg))
    else:
        found = bracket_search(score, start=plan.start, step=plan.step, tol=plan.tol_log, low=plan.low,
                               high=plan.high, resolution=SETTLED)  # fmt: skip
    record = {"reg": found.reg, "path": path, "widened": found.widened, "at_limit": found.at_limit, **chosen}
    params = best.get("params")
    if plan.bias_prior and params is not None:
        # A fixed λ can be far weaker than the data's best, with factors that fit the noise: their
        # residual's degrees are counted. The search's choice is near the best, where counting
        # them moved no test RMSE (docs/benchmarks.md, 5 Dec 2026): it is not paid for there.
        at = dataclasses.replace(item_cfg, reg=record["reg"] * plan.unit, bias_reg=state["bias_reg"])
        state["bias_reg"] = record["bias_reg"] = bias_prior_after_factors(fit, params, at, spent=plan.fixed)
        record["bias_reg_before"] = chosen["bias_reg"]
        if plan.fixed:  # the estimate is all the caller's fit takes
            return record, params
        # λ_b moves the biases, and λ's best barely: the bracket starts a tol wide around the
        # choice, which stands after three points unless a side beats it. A choice whose factors
        # collapsed is refitted alone: its neighbours tie with it, and the ties would walk the
        # bracket down to a λ whose factors only switch on in a fit longer than a point's.
        reg, half = record["reg"], math.exp(plan.tol_log / 2)
        start = (reg,) if collapsed(params, init, state["rank"]) else (reg, reg / half, reg * half)
        record["reg"], params = again(params, reg, start)
    if choose_rank and not plan.fixed and params is not None:
        began = time.perf_counter()
        params = _rank_step(params, held, user_cfg.rank, user_cfg.loss, record["reg"], point, plan, record)
        if record["rank"] < user_cfg.rank:  # λ again at the kept rank: fewer directions want less shrinkage
            state["rank"] = record["rank"]
            reg = record["reg"]
            record["reg"], params = again(params, reg, (reg, reg / math.sqrt(plan.step)))
        record["rank_seconds"] = round(time.perf_counter() - began, 3)
    return record, params


def bias_prior_after_factors(fit: tuple, params: tuple, step: StepConfig, *, spent: bool = True) -> float:
    """λ_b = σ²/τ² with σ² from what the factors in params, fitted with step's λ and λ_b (mse,
    the item half-step's config), leave of the fit part's y.

    Before the factors, the users' within-group variance of y − μ_i counts the factors' signal
    as noise, so σ²/τ² comes out too large wherever the factors are strong (18 pseudo-ratings
    on a planted rank-3 set whose σ²/τ² is 2.8; 3.2 from here). Within a user, the residual
    with every term but the user's bias, y − w·x − c, varies by the noise alone, less the part
    of it the fitted factors absorbed: if spent, its sum of squares is divided by the degrees
    of freedom they leave (kernels/dof.py), or a λ far weaker than the data's best, whose
    factors fit the noise, would take λ_b towards 0. τ² stays the spread of y's user means
    (kernels/priors.py's prior_from_rows says why)."""
    user_local, item_local, y, offset, weight = fit
    users, items = params  # at the layout's rank: a direction the rank step dropped is zeros
    rank = step.rank
    seen_users, seen_items = users.take(user_local, axis=0), items.take(item_local, axis=0)
    rest = np.einsum("ij,ij->i", seen_users[:, :rank], seen_items[:, :rank]) + seen_items[:, bias_col(rank, "item")]
    if offset is not None:
        rest += offset
    dof = 0.0
    if spent:
        dof = factor_dof(user_local, item_local, weight, users[:, :rank], items[:, :rank], reg=step.reg,
                         count_scaled=step.count_scaled, item_bias=step.learn_bias, bias_reg=step.bias_reg)  # fmt: skip
    return prior_from_rows(user_local, y, weight, len(users), residual=y - rest, dof=dof)


def _rank_step(params: tuple, held: dict, rank: int, loss: str, reg: float, point: Callable, plan: SearchPlan,
               record: dict) -> tuple:  # fmt: skip
    """The rank at the chosen λ: the factors rewritten as W·Xᵀ's SVD directions, the rank
    the truncated directions score best at on the validation fold, then one less at a time,
    each refitted from its truncation for up to point_iter iterations, while the refitted
    validation score beats the full rank's, refitted alike, by more than SETTLED and by
    more than a standard error of the held rows' gains (kernels/truncate.py). Returns the
    params of the rank kept."""
    cuts = truncations(params, rank)
    if cuts is None:
        record["rank"] = rank
        return params
    start, truncated = truncated_rank(rank, lambda j: validation_score(loss, *cuts(j), held, rank))
    record["rank_truncated"] = [round(v, 6) for v in truncated]
    # The full rank refitted as each cut is, so that the iterations are not what is compared.
    users, items, kept_score, iterations = point(reg, *params, plan.point_iter)
    kept, kept_params = rank, (users, items)
    tried = [{"rank": rank, "score": kept_score, "iterations": iterations}]
    for j in range(start, 0, -1):
        if j == rank:
            continue
        users, items, value, iterations = point(reg, *cuts(j), plan.point_iter)
        tried.append({"rank": j, "score": value, "iterations": iterations})
        # A gain within a point's own resolution is none, and on a small fold chance alone
        # makes a cut win: it must also win by more than a standard error of the rows' gains.
        gains = held_losses(loss, *kept_params, held, rank) - held_losses(loss, users, items, held, rank)
        clear = len(gains) > 1 and gains.mean() > gains.std(ddof=1) / math.sqrt(len(gains))
        if not (value < kept_score * (1 - SETTLED) and clear):
            break
        kept, kept_params, kept_score = j, (users, items), value
    record["rank"], record["rank_path"] = kept, tried
    return kept_params


def truncations(params: tuple, rank: int) -> Callable[[int], tuple[np.ndarray, np.ndarray]] | None:
    """j ↦ params with their factors cut to W·Xᵀ's j strongest SVD directions (None if a side
    has fewer rows than rank, where there is nothing to choose)."""
    users, items = params
    if min(len(users), len(items)) < rank:
        return None
    W, X, _ = principal_factors(users[:, :rank], items[:, :rank])

    def cut(j: int) -> tuple[np.ndarray, np.ndarray]:
        u, i = users.copy(), items.copy()
        u[:, :rank], i[:, :rank] = 0.0, 0.0
        u[:, :j], i[:, :j] = W[:, :j], X[:, :j]
        return u, i

    return cut


def start_from_search(params: tuple | None, dense: tuple[np.ndarray, np.ndarray], keys: tuple[np.ndarray, np.ndarray],
                      cfgs: tuple[StepConfig, StepConfig]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The (user, item) params a fit at the search's choice starts from: the params the search
    ended with there for the ids it fitted, the hashed init (of keys, under cfgs) for the rest.
    dense maps each of the fit's local ids, side by side, to the search's (−1: not searched).

    From the hashed init a fit just below the λ that collapses the factors meets the
    zero-factor saddle (train/saddle.py): its factors shrink for an iteration or two before
    they grow, and its loss moves by less than tol meanwhile, so it stops there. The search's
    factors at its choice are past the saddle (a point restarted from the init is not settled
    while they grow)."""
    start = []
    for part, (side, side_dense, side_keys, cfg) in enumerate(zip(("user", "item"), dense, keys, cfgs, strict=True)):
        begin = initial_params(side_keys, cfg.rank, scale=cfg.init_scale, side=side)
        if params is not None:
            searched = side_dense >= 0
            begin[searched] = params[part][side_dense[searched]]
        start.append(begin)
    return start[0], start[1]


def search_record(*args, choose_rank: bool = False) -> dict:
    """search_arrays' record alone (what the search-only job returns)."""
    return search_arrays(*args, choose_rank=choose_rank)[0]


class _Rows(NamedTuple):
    """A search task's rows as arrays (_read_rows), before any centring."""

    is_held: np.ndarray
    fit_rows: np.ndarray
    local: dict  # per side, every row's dense local id in the fit part (−1: no fit row)
    keys: dict  # per side, the init key of each local id
    codes: dict  # per side, (Arrow dictionary encoding, every row's code, code → local id)
    values: dict  # TARGET, OFFSET and WEIGHT as floats, None where the column is null


def _read_rows(table: pa.Table) -> _Rows:
    held_col = table.column(HELD).to_numpy()
    is_held, fit_rows = held_col == 1, held_col == 0
    local, keys, codes = {}, {}, {}
    for side, key_col in ((USER, USER_KEY), (ITEM, ITEM_KEY)):
        encoded = table.column(side).combine_chunks().dictionary_encode()
        code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        seen = np.unique(code[fit_rows])
        dense = np.full(len(encoded.dictionary), -1, np.int64)
        dense[seen] = np.arange(len(seen))
        local[side], codes[side] = dense[code], (encoded, code, dense)
        side_keys = np.empty(len(seen), np.int64)
        side_keys[local[side][fit_rows]] = table.column(key_col).to_numpy()[fit_rows]
        keys[side] = side_keys
    values = {name: _floats(table.column(name)) for name in (TARGET, OFFSET, WEIGHT)}
    return _Rows(is_held, fit_rows, local, keys, codes, values)


def _search_input(table: pa.Table, plan: SearchPlan, rows: _Rows | None = None):
    """(fit, held, user_keys, item_keys, codes, (y, weight)) of the search's rows: codes maps
    each side's Arrow dictionary code to its dense local id in the fit part (−1 if it has no
    fit row); y and weight are every row's, as read (None where the column is null), which
    the fit after the search reuses. Under plan.centre the rows' y is the rating, centred
    here on the fit part's item means. rows: the table's _read_rows, if already read."""
    is_held, fit_rows, local, keys, codes, values = _read_rows(table) if rows is None else rows
    y = rating = values[TARGET]
    weight = values[WEIGHT]
    if plan.centre is not None:
        prior, glob = plan.centre
        item = local[ITEM]
        fold = weight[fit_rows] if weight is not None else None
        if prior is None:  # meanPrior = "auto" unresolved (fit_ratings resolves it): the fit part's own
            prior = prior_from_rows(item[fit_rows], y[fit_rows], fold, len(keys[ITEM]))
        means, _ = shrunk_means(item[fit_rows], y[fit_rows], fold, len(keys[ITEM]), prior=prior, global_mean=glob)
        y = y - np.where(item >= 0, means[np.maximum(item, 0)], glob)

    def rows_of(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
        return None if values is None else values[rows]

    offset = values[OFFSET]
    fit = (local[USER][fit_rows], local[ITEM][fit_rows], y[fit_rows], rows_of(offset, fit_rows),
           rows_of(weight, fit_rows))  # fmt: skip
    held = {"user": local[USER][is_held], "item": local[ITEM][is_held], "y": y[is_held],
            "offset": rows_of(offset, is_held)}  # fmt: skip
    return fit, held, keys[USER], keys[ITEM], codes, (rating, weight)


def _checked_input(table: pa.Table, plan: SearchPlan, *, item_stats: bool = False, rows: _Rows | None = None):
    """(_search_input's tuple, refused) of a search-and-fit task's rows: refused is
    refused_pairs' batch when a (user, item) pair repeats, over every row (fit part and
    validation fold alike), else None; item_stats: the task's batches carry MSE_ITEM_COLUMNS."""
    found = _search_input(table, plan, rows)
    codes = found[4]
    ids = codes[USER][0].dictionary, codes[ITEM][0].dictionary
    columns = MSE_ITEM_COLUMNS if item_stats else None
    return found, refused_pairs(*ids, codes[USER][1], codes[ITEM][1], item_columns=columns)


def _with_targets(rows: _Rows, plan: SearchPlan, cfgs: tuple[StepConfig, StepConfig]):
    """(plan, cfgs, targets, item means) with what plan leaves open taken from every row (mse): the global
    mean g and the prior count m of centre, and the spread s where unit is None, which is then
    the unit and scales the initial factors' spread by √s (fit/reg_search.py's search_settings);
    a fixed λ is then λ·s at unit 1, in ALS's units as fit/settings.py's in_als_units makes it
    on every path. targets holds (g, m, s) for the fit's record, which then needs no Spark job
    to take them from the ratings; the item means are every row's (means, counts) at (m, g), by
    Arrow dictionary code: the fit's baseline."""
    prior, glob = plan.centre
    items, code, _ = rows.codes[ITEM]
    rating, weight = rows.values[TARGET], rows.values[WEIGHT]
    moments = target_moments(code, rating, weight, len(items.dictionary), prior=prior, global_mean=glob)
    g, m, s = moments.global_mean, moments.prior, moments.spread
    targets = {"global_mean": g, "mean_prior": m, "spread": s}
    plan = dataclasses.replace(plan, centre=(m, g))
    if plan.unit is None:
        cfgs = tuple(dataclasses.replace(cfg, init_scale=cfg.init_scale * math.sqrt(s)) for cfg in cfgs)
        fixed = {"start": tuple(reg * s for reg in plan.start), "unit": 1.0}
        plan = dataclasses.replace(plan, **(fixed if plan.fixed else {"unit": s}))
    return plan, cfgs, targets, (moments.means, moments.counts)


def _every_key(table: pa.Table, codes: dict) -> dict:
    """Each side's init keys by Arrow dictionary code, over every row (the fit after a search
    fits the validation fold's rows too, which _search_input's keys leave out)."""
    keys = {}
    for side, key_col in ((USER, USER_KEY), (ITEM, ITEM_KEY)):
        encoded, code, _ = codes[side]
        keys[side] = np.empty(len(encoded.dictionary), np.int64)
        keys[side][code] = table.column(key_col).to_numpy()
    return keys


def _sizes(table: pa.Table, codes: dict) -> dict:
    """The ratings, users and items of the rows the search saw (validation fold included; a
    table's OUTSIDE rows left out)."""
    searched = table.column(HELD).to_numpy() != OUTSIDE
    return {"ratings": int(searched.sum()),
            **{name: int(np.count_nonzero(np.bincount(codes[side][1][searched], minlength=1)))
               for name, side in (("users", USER), ("items", ITEM))}}  # fmt: skip


def _floats(column: pa.ChunkedArray) -> np.ndarray | None:
    values = column.to_numpy().astype(np.float64)
    return None if np.isnan(values).any() else values


def _search_body(user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, search: Callable):
    """mapInArrow body over the one partition that holds the search's rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        began = time.perf_counter()
        table = pa.Table.from_batches(batches)
        fit, held, user_keys, item_keys, codes, _ = _search_input(table, plan)
        indexed = time.perf_counter()
        record = {**search(fit, held, user_keys, item_keys, user_cfg, item_cfg, plan), "sample": _sizes(table, codes)}
        record["task_seconds"] = {"input": round(indexed - began, 3), "search": round(time.perf_counter() - indexed, 3)}
        yield pa.RecordBatch.from_arrays([pa.array([json.dumps(record)], pa.string())], names=[RECORD_COL])

    return run


def _search_factors_body(user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, search: Callable):
    """mapInArrow body: the search, then the factors of the fit part's users and items at its
    choice (at the rank it keeps), which the blockwise fit at that choice starts from
    (start_from_search says why); search walks the arrays as search_arrays does."""
    rank = user_cfg.rank

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        began = time.perf_counter()
        table = pa.Table.from_batches(batches)
        fit, held, user_keys, item_keys, codes, _ = _search_input(table, plan)
        indexed = time.perf_counter()
        record, params = search(fit, held, user_keys, item_keys, user_cfg, item_cfg, plan)
        record["sample"] = _sizes(table, codes)
        # Where the task's seconds went, from its first batch in hand (what reading them took is not seen here).
        record["task_seconds"] = {"input": round(indexed - began, 3), "search": round(time.perf_counter() - indexed, 3)}
        kept = record.get("rank", rank)
        if params is None:  # no search (no validation fold): nothing to start from
            params = tuple(np.zeros((0, cfg.width)) for cfg in (user_cfg, item_cfg))
            codes = {side: (encoded, code, np.full_like(dense, -1)) for side, (encoded, code, dense) in codes.items()}
        W, X = (np.delete(side, np.s_[kept:rank], axis=1) for side in params)
        record[FACTOR_ROWS] = [len(W), len(X)]
        # Local id j is the j-th dictionary code with a fit row (_search_input).
        ids = [codes[side][0].dictionary.take(pa.array(np.flatnonzero(codes[side][2] >= 0))) for side in (USER, ITEM)]
        yield factor_batch(*ids, W, X, kept, record)

    return run


def search_factors_one_task(
    rows: DataFrame,
    user_cfg: StepConfig,
    item_cfg: StepConfig,
    plan: SearchPlan,
    *,
    seed: int,
    search: Callable[..., tuple[dict, tuple | None]],
) -> tuple[DataFrame, DataFrame, tuple[int, int], dict]:
    """The search over rows as search_one_task's, in one Spark job, and the factors it ended
    with at its choice: (user_factors, item_factors, their row counts, record), the tables (id,
    features, bias) at the kept rank, materialised, for the fit's warm start. search returns
    (record, params) as search_arrays does (mse's and bce's; fit/rank_search.py's ranking
    search swaps it)."""
    body = _search_factors_body(user_cfg, item_cfg, plan, search)
    users, items, _, record = run_factor_task(_keyed(rows, seed), body)
    return users, items, tuple(record.pop(FACTOR_ROWS)), record


def _search_and_fit_body(given_user: StepConfig, given_item: StepConfig, given: SearchPlan, max_iter: int):
    """mapInArrow body: what the plan leaves open taken from every row (_with_targets), the
    search (on plan.sample of the users, its λ carried over to every row: _carry_over), then
    the fit of every row (fit part, validation fold and the users outside the sample) at the
    chosen λ and rank, started from the params the search ended with there (start_from_search:
    the hashed init for ids it did not fit). The fit stops when an iteration moves the
    predictions by at most SETTLED of the chosen λ's validation RMSE (which bounds that
    iteration's change of any RMSE), or at max_iter. A λ the caller fixed (plan.fixed, fitted
    alone for λ_b) keeps the caller's stop, plan.tol."""
    rank = given_user.rank

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        began = time.perf_counter()
        table = pa.Table.from_batches(batches)
        rows = _read_rows(table)
        plan, (user_cfg, item_cfg), targets, (means, counts) = _with_targets(rows, given, (given_user, given_item))
        (fit, held, user_keys, item_keys, codes, (rating, weight)), refused = _checked_input(
            table, plan, item_stats=True, rows=rows
        )
        if refused is not None:
            yield refused
            return
        indexed = time.perf_counter()
        found, params = search_arrays(fit, held, user_keys, item_keys, user_cfg, item_cfg, plan, choose_rank=True)
        if plan.sample < 1:
            _carry_over(found, plan, table, codes)
        searched = time.perf_counter()
        kept = found.get("rank", rank)
        if params is not None and kept < rank:  # the fit runs at the kept rank, without the dropped columns
            params = tuple(np.delete(side, np.s_[kept:rank], axis=1) for side in params)
        reg = found["reg"] * plan.unit
        bias_reg = found.get("bias_reg", user_cfg.bias_reg)
        ucfg = dataclasses.replace(user_cfg, reg=reg, rank=kept, bias_reg=bias_reg)
        icfg = dataclasses.replace(item_cfg, reg=reg, rank=kept, bias_reg=bias_reg)
        keys = _every_key(table, codes)
        start = start_from_search(params, (codes[USER][2], codes[ITEM][2]), (keys[USER], keys[ITEM]), (ucfg, icfg))
        user_code, item_code = codes[USER][1], codes[ITEM][1]
        # The chosen λ's last point at the kept rank (the sample's own λ, if carried over): its
        # validation RMSE bounds the fit's settle move.
        scored = found.get("sample_reg", found["reg"])
        chosen = [p for p in found["path"] if math.isclose(p["reg"], scored, rel_tol=1e-9) and p["rank"] == kept]
        # tol = 0: every iteration; a fixed λ: tol alone, as any fit at a λ the caller chose.
        settle = SETTLED * chosen[-1]["rmse"] if chosen and plan.tol > 0 and not plan.fixed else None
        W, X, history, stop = fit_arrays(
            user_code, item_code, rating - means[item_code], None, weight, keys[USER], keys[ITEM], ucfg, icfg,
            max_iter=max_iter, tol=plan.tol, start=start, settle=settle, still=SETTLED,
        )  # fmt: skip
        # Where the task's seconds went: the rank step's (and its second bracket's) are within the search's.
        found["task_seconds"] = {"input": round(indexed - began, 3), "search": round(searched - indexed, 3),
                                 "fit": round(time.perf_counter() - searched, 3)}  # fmt: skip
        record = {"history": history, "stop": stop, "users": len(W), "items": len(X), "search": found,
                  "targets": targets}  # fmt: skip
        stats = dict(zip(MSE_ITEM_COLUMNS, (means, counts), strict=True))
        yield factor_batch(codes[USER][0].dictionary, codes[ITEM][0].dictionary, W, X, kept, record, stats)

    return run


def _carry_over(found: dict, plan: SearchPlan, table: pa.Table, codes: dict) -> None:
    """found (a search of plan.sample of the users in table) with its λ carried over to every
    row by transfer_factor, within the plan's range; the sample's own choice is kept as
    sample_reg, with the factor (transfer) and the sample's size (sample). A λ the caller
    fixed is that λ in the sample too (count scaling: the same penalty per rating)."""
    found["sample"] = _sizes(table, codes)
    if plan.fixed or not found["path"]:
        return
    carry_over(found, plan, table.num_rows, len(codes[ITEM][0].dictionary))


def carry_over(found: dict, plan: SearchPlan, num_ratings: int, num_items: int) -> None:
    """found's λ, chosen on plan.sample of the users (found["sample"] their sizes), carried over
    to num_ratings ratings of num_items items by transfer_factor, within the plan's range; the
    sample's own choice is kept as sample_reg, the factor as transfer."""
    factor = transfer_factor(found["sample"], plan.sample, num_ratings, num_items)
    found.update(sample_reg=found["reg"], transfer=factor, reg=min(plan.high, max(plan.low, found["reg"] * factor)))


def _search_then_fit_body(user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, search: Callable,
                          fit_configs: Callable[[dict], tuple[StepConfig, StepConfig]], max_iter: int):  # fmt: skip
    """mapInArrow body: search over the fit part (returning (record, params) as search_arrays
    does; on plan.sample of the users, its choice kept as it is), then the fit of every row
    (fit part, validation fold and the users outside the sample) with the half-steps
    fit_configs(record) gives at the search's choice and plan.tol, started from the params
    (start_from_search): the blockwise fit at that choice, started from the same factors,
    without a second pass of the rows into Python."""
    rank = user_cfg.rank

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        began = time.perf_counter()
        table = pa.Table.from_batches(batches)
        (fit, held, user_keys, item_keys, codes, (y, weight)), refused = _checked_input(table, plan)
        if refused is not None:
            yield refused
            return
        indexed = time.perf_counter()
        found, params = search(fit, held, user_keys, item_keys, user_cfg, item_cfg, plan)
        searched = time.perf_counter()
        keys = _every_key(table, codes)
        offset = _floats(table.column(OFFSET))
        cfgs = fit_configs(found)
        start = start_from_search(params, (codes[USER][2], codes[ITEM][2]), (keys[USER], keys[ITEM]), cfgs)
        W, X, history, stop = fit_arrays(
            codes[USER][1], codes[ITEM][1], y, offset, weight, keys[USER], keys[ITEM], *cfgs,
            max_iter=max_iter, tol=plan.tol, start=start,
        )  # fmt: skip
        found["sample"] = _sizes(table, codes)
        found["task_seconds"] = {"input": round(indexed - began, 3), "search": round(searched - indexed, 3),
                                 "fit": round(time.perf_counter() - searched, 3)}  # fmt: skip
        record = {"history": history, "stop": stop, "users": len(W), "items": len(X), "search": found}
        yield factor_batch(codes[USER][0].dictionary, codes[ITEM][0].dictionary, W, X, rank, record)

    return run


def search_then_fit_one_task(
    rows: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, *, seed: int,
    search: Callable[..., tuple[dict, tuple | None]], fit_configs: Callable[[dict], tuple[StepConfig, StepConfig]],
    max_iter: int,
) -> tuple[DataFrame, DataFrame, dict]:  # fmt: skip
    """search over rows as search_factors_one_task's, then the fit of every row at its choice
    (the half-steps fit_configs(record) gives), started from the search's params, in one Spark
    job: (user_factors, item_factors, record), the record holding the fit's history, stop
    reason, sizes and the search's."""
    body = _search_then_fit_body(user_cfg, item_cfg, plan, search, fit_configs, max_iter)
    users, items, _, record = run_factor_task(_keyed(rows, seed), body)
    return users, items, record


def search_one_task(rows: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, *,
                    seed: int, search: Callable[..., dict] | None = None) -> dict:  # fmt: skip
    """The search over rows (user, item, y, offset, weight, held), in one task; the held rows'
    offset is their whole fixed term (0 for mse, whose y is already relative to it), and
    under plan.centre y is the rating itself. search walks the arrays as search_record does
    (same arguments, a JSON-able record back): a search of another model or on another
    validation metric (fit/rank_search.py) swaps it."""
    schema = T.StructType([T.StructField(RECORD_COL, T.StringType())])
    body = _search_body(user_cfg, item_cfg, plan, search or search_record)
    found = _keyed(rows, seed).mapInArrow(body, schema).collect()
    if not found:
        raise ValueError("there are no training ratings to choose λ on")
    return json.loads(found[0][RECORD_COL])


def search_and_fit_one_task(rows: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, *,
                            seed: int, max_iter: int) -> tuple[DataFrame, DataFrame, DataFrame, dict]:  # fmt: skip
    """The search and the fit at its choice, in one Spark job, over rows as search_one_task's
    under plan.centre (mse): (user_factors, item_factors, item_stats, record), the record
    holding the fit's history, stop reason, sizes and the search ("search")."""
    body = _search_and_fit_body(user_cfg, item_cfg, plan, max_iter)
    users, items, stats, record = run_factor_task(_keyed(rows, seed), body, item_stats=True)
    return users, items, stats, record


def _keyed(rows: DataFrame, seed: int) -> DataFrame:
    return keyed_rows(
        rows.select(USER, ITEM, TARGET, F.col(OFFSET).cast("double").alias(OFFSET),
                    F.col(WEIGHT).cast("double").alias(WEIGHT), F.col(HELD).cast("int").alias(HELD)),
        seed,
    )  # fmt: skip
