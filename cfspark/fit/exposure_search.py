"""λ of the exposure part, chosen on NDCG@k of P(exposed) over a validation fold.

The exposure part ranks: a user's recommendations are ordered by P(exposed)·P(like | shown),
and P(exposed) spreads over every item the user has no label for. How much of it the factors
should carry, against the biases alone, depends on the data. On MovieLens latest-small ≥ 4,
where who watched what follows taste, λ = 0.01 ranked best of four and 0.1 cost 40 % of
NDCG@10; on a generated set whose exposure is popularity alone, λ ≥ 0.04 fits the factors to
zero and ranked 2.8 × better than 0.01, whose factors follow the sampled 0-labels' noise
(docs/benchmarks.md, "The exposure part's λ on the synthetic binary set"). No constant serves
both, so exposureRegParam = "auto" chooses λ on the data, as the all-items model's is chosen
(fit/rank_search.py).

The labelled pairs (the exposure part's 1s) of a hashed validation fold are held out; the
exposure part is fitted on the rest, with its 0-labels drawn in each half-step as in the fit,
at λ points bracketed in log λ (kernels/bracket.py), strong to weak, each warm-started from the
one before unless that one collapsed onto the zero-factor saddle (train/saddle.py); each point
is scored by NDCG@k of P(exposed) with the held pairs relevant and the user's fit pairs
excluded, which tracked the product's NDCG@10 on test within 0.0003 at every λ on the generated
set. The fit at the choice starts from the factors the chosen point ended with.

Each point is a fit of the exposure part, so the search costs a few of them: a warm-started
point runs at most POINT_ITER iterations, and the bracket is not narrowed below the start
grid's step. Its points draw every 0-label: coarse draws throughout shifted the optimum (on
MovieLens they chose 0.03, not 0.01). On MovieLens ≥ 4 it chose 0.01 on each of four splits
(NDCG@10 of the score level with λ fixed at 0.01 on their mean) and the bce fit took
1.7–2.0 × as long; on the generated set it chose 0.07 from a share of the users, NDCG@10 0.0360
against 0.0132, in 0.92–1.06 × the time (docs/benchmarks.md, "The exposure model's λ chosen on NDCG").
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from pyspark.sql import DataFrame

from cfspark.core.schema import ITEM
from cfspark.fit.rank_search import MAX_USERS, fold_resolution
from cfspark.fit.reg_search import SAMPLE_SEED, VALIDATION_FRACTION, sampled_users, search_rows
from cfspark.fit.settings import FitSettings
from cfspark.fit.warm import search_start
from cfspark.kernels.bracket import bracket_search
from cfspark.kernels.init import initial_params
from cfspark.kernels.ranking import ndcg_rows
from cfspark.train.one_task import csr_by_row, fit_arrays
from cfspark.train.saddle import warm_start
from cfspark.train.sampled import at_reg
from cfspark.train.search_task import SearchPlan, carry_over, search_factors_one_task
from cfspark.train.step import StepConfig

K = 10  # NDCG@K of P(exposed) is what the search maximises
# Strong to weak, each point warm-started from a simpler model, around the λ that ranked best on
# MovieLens (0.01): where that is the optimum, three points bracket it.
REFERENCE = 0.01  # the λ whose half-steps the search's configs carry until it chooses
STEP = 3.0
REG_START = (REFERENCE * STEP, REFERENCE, REFERENCE / STEP)
REG_LOW, REG_HIGH = 1e-4, 10.0
# The bracket is not narrowed below the start grid's step: each point costs a fit of the exposure
# part, and the NDCG surface is flat within a step of its top (on MovieLens, λ 0.0152 and 0.01
# scored 0.1578 and 0.1577 on the fold).
TOL_LOG = 2.0 * math.log(STEP) * 1.001
POINT_ITER = 3  # iterations at most for a warm-started point; the first, from the init, may take maxIter
# Past this many labelled pairs the search takes a hashed share of the users, SEARCH_LABELS'
# worth but at least MIN_FRACTION, and its λ is carried over to every user by the ratings per
# factor vector (train/search_task.py's transfer_factor), as mse's is. A sample chooses a
# stronger λ: on MovieLens ≥ 4, half and a quarter of the users chose 0.03 where all chose 0.01,
# carried over to 0.019 and 0.014; on the generated 300k set an eighth to a half chose 0.09,
# carried over to 0.04–0.075, where its factors still collapse as they should.
SEARCH_LABELS = 100_000
MIN_FRACTION = 1 / 8  # mse's transfer was measured down to an eighth of the users

log = logging.getLogger("cfspark")


def exposure_fraction(num_labels: int) -> float:
    """The share of the users the search takes: all up to SEARCH_LABELS labelled pairs, then
    SEARCH_LABELS' worth, at least MIN_FRACTION."""
    return 1.0 if num_labels <= SEARCH_LABELS else max(SEARCH_LABELS / num_labels, MIN_FRACTION)


def exposure_plan(max_iter: int, tol: float, sample: float = 1.0) -> SearchPlan:
    """The search's walk: REG_START to a bracket in log λ, λ in absolute units (unit 1), on
    sample of the users."""
    return SearchPlan(start=REG_START, unit=1.0, low=REG_LOW, high=REG_HIGH, step=STEP, tol_log=TOL_LOG,
                      first_iter=max_iter, point_iter=POINT_ITER, tol=tol, sample=sample)  # fmt: skip


def search_exposure(fit: tuple, held: dict, user_keys: np.ndarray, item_keys: np.ndarray, user_cfg: StepConfig,
                    item_cfg: StepConfig, plan: SearchPlan) -> tuple[dict, tuple | None]:  # fmt: skip
    """λ of the exposure part that maximises NDCG@K of its held labelled pairs, with the
    signature of train/search_task.py's searches: ({reg, ndcg, path: [{reg, ndcg, iterations}],
    widened, at_limit}, the (user, item) params the chosen point ended with, None if none
    finished). fit is (user, item, y = 1, offset, weight) of the fit part on dense local ids;
    held the fold's (user, item) on those ids, −1 for an id only the fold holds; the configs
    carry the fit's draws, whose coarse first iterations only a point from the init takes."""
    user_local, item_local, ones, _, weight = fit
    n_users = len(user_keys)
    seen = csr_by_row(user_local, item_local, n_users)[:2]
    known = held["user"] >= 0
    held_csr = csr_by_row(held["user"][known], held["item"][known], n_users)[:2]
    rows = np.flatnonzero(held_csr[0][1:] > held_csr[0][:-1])
    rows = rows[np.argsort(user_keys[rows], kind="stable")[:MAX_USERS]]
    if not len(rows):  # too few pairs for a fold: the reference λ, from the init
        return {"reg": REFERENCE, "ndcg": None, "path": [], "widened": "", "at_limit": False}, None
    init = (initial_params(user_keys, user_cfg.rank, scale=user_cfg.init_scale, side="user"),
            initial_params(item_keys, item_cfg.rank, scale=item_cfg.init_scale, side="item"))  # fmt: skip
    path: list[dict] = []
    per_row: list[np.ndarray] = []
    ended: list[tuple | None] = []

    def score(reg: float) -> float:
        """1 − NDCG@K of the held pairs once the exposure part has settled at reg."""
        previous = next((params for params in reversed(ended) if params is not None), None)
        (users, items), restart = (init, True) if previous is None else warm_start(previous, init, user_cfg.rank)
        # Coarse first draws start a fit from the init; a warm-started point takes none.
        coarse = None if restart else 0
        ucfg, icfg = (at_reg(cfg, reg * plan.unit, coarse) for cfg in (user_cfg, item_cfg))
        users, items, history, _ = fit_arrays(
            user_local, item_local, ones, None, weight, user_keys, item_keys, ucfg, icfg,
            max_iter=plan.first_iter if restart else plan.point_iter, tol=plan.tol, start=(users, items),
        )  # fmt: skip
        if not (np.all(np.isfinite(users)) and np.all(np.isfinite(items))):
            values, params = np.full(len(rows), -np.inf), None
        else:
            values, params = ndcg_rows(users, items, rows, seen, held_csr, K), (users, items)
        path.append({"reg": reg, "ndcg": float(values.mean()), "iterations": len(history),
                     **({"restarted": True} if restart and path else {})})  # fmt: skip
        per_row.append(values)
        ended.append(params)
        return 1.0 - path[-1]["ndcg"] if params is not None else math.inf

    found = bracket_search(score, start=plan.start, step=plan.step, tol=plan.tol_log, low=plan.low, high=plan.high,
                           resolution=functools.partial(fold_resolution, per_row, 0))  # fmt: skip
    best = int(np.argmax([p["ndcg"] for p in path]))
    record = {"reg": path[best]["reg"], "ndcg": path[best]["ndcg"], "path": path, "widened": found.widened,
              "at_limit": found.at_limit}  # fmt: skip
    return record, ended[best]


def choose_exposure(settings: FitSettings, part: FitSettings, exposed: DataFrame, num_labels: int) -> tuple:
    """(part at the chosen λ, the search's record) for the exposure part's fit over exposed (its
    1s, user, item, rating, weight; num_labels of them), searched in one Spark task on a hashed
    share of the users (exposure_fraction); part carries its draws. Unless the
    caller warm-starts, the fit starts from the factors the search ended with at its choice."""
    fraction = exposure_fraction(num_labels)
    rows = search_rows(settings, sampled_users(exposed, fraction, settings.seed + SAMPLE_SEED), VALIDATION_FRACTION)
    user_cfg, item_cfg = (part.step_config(side, REFERENCE) for side in ("user", "item"))
    plan = exposure_plan(settings.maxIter, settings.tol, fraction)
    users, items, counts, found = search_factors_one_task(rows, user_cfg, item_cfg, plan, seed=settings.seed,
                                                          search=search_exposure)  # fmt: skip
    if fraction < 1 and found["path"]:  # λ carried over from the sample to every user
        carry_over(found, plan, num_labels, exposed.select(ITEM).distinct().count())
    found["sample_fraction"] = fraction
    log_exposure_search(found)
    chosen = part.carry(regParam=found["reg"])
    if part.initialModel is None and found["path"]:
        chosen = chosen.replace(initialModel=search_start((users, items, counts), part.rank))
    return chosen, found


def log_exposure_search(found: dict) -> None:
    """The search's path and choice, in the job's log."""
    for point in found["path"]:
        log.info("automatic exposure λ: reg %.4g gives validation NDCG@%d %.4f of P(exposed) after %d iterations",
                 point["reg"], K, point["ndcg"], point["iterations"])  # fmt: skip
    if found["at_limit"]:
        log.warning("automatic exposure λ: the best is an end of the range [%g, %g]", REG_LOW, REG_HIGH)
    if "sample_reg" in found:
        log.info("automatic exposure λ: chose %.4g on NDCG@%d of P(exposed) over %.0f %% of the users, carried over "
                 "to all as %.4g", found["sample_reg"], K, 100 * found["sample_fraction"], found["reg"])  # fmt: skip
    else:
        log.info("automatic exposure λ: chose %.4g on NDCG@%d of P(exposed)", found["reg"], K)
