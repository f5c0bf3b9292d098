"""The automatic λ search inside one Spark task, on one set of CSR arrays.

The task receives the training part of the search's ratings and a validation fold (the
HELD rows), indexes both sides as the one-task fit does (train/one_task.py), and walks the
bracketing search of kernels/bracket.py: each λ starts from the factors the previous λ
ended with, and stops once its validation score (RMSE for mse, logloss for bce) no longer
improves, or its training loss has converged. The whole search is one Spark job: the
fixed cost per half-step of a distributed walk is paid once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.core.schema import ITEM, OFFSET, TARGET, USER, WEIGHT
from cfspark.kernels.bracket import bracket_search
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col
from cfspark.kernels.losses import sigmoid
from cfspark.train.one_task import ITEM_KEY, RECORD_COL, USER_KEY, csr_by_row
from cfspark.train.step import StepConfig, solve_rows

HELD = "held"  # 1 on a validation row, 0 on a training row
# A point of the path stops once an iteration changes its validation score by less than this
# fraction (either way), after at least MIN_ITER iterations: the first iteration from the last
# λ's factors may move the score either way, and the score that counts is where λ settles.
SETTLED = 1e-3
MIN_ITER = 2


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What the search walks: start grid and hard range in regUnits, λ = reg·unit in the kernel."""

    start: Sequence[float]
    unit: float
    low: float
    high: float
    step: float
    tol_log: float
    first_iter: int  # iterations at most for the first λ, which starts from the initial factors
    point_iter: int  # and for each later one, warm-started
    tol: float  # the training loss's relative change that ends a point, as the fit's tol


def validation_score(loss: str, users: np.ndarray, items: np.ndarray, held: dict, rank: int) -> float:
    """RMSE (mse) or logloss (bce) of the held rows under these params, with the cold-start
    rule of fit/predict.py: an unseen user gets the item bias alone, an unseen item neither."""
    u, i = held["user"], held["item"]
    both = (u >= 0) & (i >= 0)
    z = np.zeros(len(u))
    z[both] = np.einsum("ij,ij->i", users[u[both]], items[i[both]])
    item_only = (u < 0) & (i >= 0)
    z[item_only] = items[i[item_only], bias_col(rank, "item")]
    z += held["offset"]
    if loss == "mse":
        return float(np.sqrt(np.mean((z - held["y"]) ** 2)))
    p = np.clip(sigmoid(z), 1e-15, 1 - 1e-15)
    y = held["y"]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def search_arrays(fit: tuple, held: dict, user_keys, item_keys, user_cfg: StepConfig, item_cfg: StepConfig,
                  plan: SearchPlan) -> dict:  # fmt: skip
    """The bracketing search on dense local ids: fit is (user_local, item_local, y, offset, weight)
    of the training rows; held has user, item (−1 if unseen in fit), y and offset of the
    validation rows. Returns {reg, path, widened, at_limit} with reg in regUnits."""
    if not len(held["y"]):  # too few ratings for a validation fold: the start grid's middle
        return {"reg": plan.start[len(plan.start) // 2], "path": [], "widened": "", "at_limit": False}
    user_local, item_local, y, offset, weight = fit
    by_user = csr_by_row(user_local, item_local, len(user_keys), y, offset, weight)
    by_item = csr_by_row(item_local, user_local, len(item_keys), y, offset, weight)
    state = {
        "users": initial_params(user_keys, user_cfg.rank, scale=user_cfg.init_scale, side="user"),
        "items": initial_params(item_keys, item_cfg.rank, scale=item_cfg.init_scale, side="item"),
    }
    metric = "rmse" if user_cfg.loss == "mse" else "logloss"
    path: list[dict] = []

    def score(reg: float) -> float:
        ucfg = dataclasses.replace(user_cfg, reg=reg * plan.unit)
        icfg = dataclasses.replace(item_cfg, reg=reg * plan.unit)
        users, items = state["users"], state["items"]
        user_state = item_state = None
        value, last_value, last_loss, iterations = np.inf, None, None, 0
        for _ in range(plan.first_iter if not path else plan.point_iter):
            users, user_state, (_, user_reg) = solve_rows(ucfg, *by_user, items, users, user_state)
            items, item_state, (data, item_reg) = solve_rows(icfg, *by_item, users, items, item_state)
            iterations += 1
            value = validation_score(user_cfg.loss, users, items, held, user_cfg.rank)
            loss = data + item_reg + user_reg
            if not np.isfinite(value) or not np.isfinite(loss):
                value = np.inf
                break
            settled = last_value is not None and abs(value - last_value) <= SETTLED * last_value
            converged = last_loss is not None and abs(last_loss - loss) <= plan.tol * abs(last_loss)
            last_value, last_loss = value, loss
            if iterations >= MIN_ITER and (settled or converged):
                break
        state["users"], state["items"] = users, items
        path.append({"reg": reg, "reg_als": reg * plan.unit, metric: value, "iterations": iterations})
        return value

    found = bracket_search(score, start=plan.start, step=plan.step, tol=plan.tol_log, low=plan.low, high=plan.high)
    return {"reg": found.reg, "path": path, "widened": found.widened, "at_limit": found.at_limit}


def _search_body(user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, search: Callable):
    """mapInArrow body over the one partition that holds the search's rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        is_held = table.column(HELD).to_numpy() == 1
        local = {}
        keys = {}
        for side, key_col in ((USER, USER_KEY), (ITEM, ITEM_KEY)):
            codes = table.column(side).combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
            codes = codes.astype(np.int64)
            seen = np.unique(codes[~is_held])
            dense = np.full(codes.max() + 1, -1, np.int64)
            dense[seen] = np.arange(len(seen))
            local[side] = dense[codes]
            side_keys = np.empty(len(seen), np.int64)
            side_keys[local[side][~is_held]] = table.column(key_col).to_numpy()[~is_held]
            keys[side] = side_keys
        column = {name: table.column(name) for name in (TARGET, OFFSET, WEIGHT)}
        fit_rows = ~is_held

        def part(name: str, rows: np.ndarray) -> np.ndarray | None:
            values = column[name].to_numpy(zero_copy_only=False)[rows]
            return None if np.isnan(values.astype(np.float64)).any() else values.astype(np.float64)

        fit = (local[USER][fit_rows], local[ITEM][fit_rows], part(TARGET, fit_rows), part(OFFSET, fit_rows),
               part(WEIGHT, fit_rows))  # fmt: skip
        held = {
            "user": local[USER][is_held],
            "item": local[ITEM][is_held],
            "y": part(TARGET, is_held),
            "offset": part(OFFSET, is_held),
        }
        record = search(fit, held, keys[USER], keys[ITEM], user_cfg, item_cfg, plan)
        yield pa.RecordBatch.from_arrays([pa.array([json.dumps(record)], pa.string())], names=[RECORD_COL])

    return run


def search_one_task(rows: DataFrame, user_cfg: StepConfig, item_cfg: StepConfig, plan: SearchPlan, *,
                    seed: int, search: Callable = search_arrays) -> dict:  # fmt: skip
    """The search over rows (user, item, y, offset, weight, held), in one task; the held rows'
    offset is their whole fixed term (0 for mse, whose y is already relative to it). search
    walks the arrays as search_arrays does (same arguments, a JSON-able record back): a
    search of another model or on another validation metric (fit/rank_search.py) swaps it."""
    keyed = rows.select(
        USER, ITEM, TARGET, F.col(OFFSET).cast("double").alias(OFFSET), F.col(WEIGHT).cast("double").alias(WEIGHT),
        F.xxhash64(F.col(USER), F.lit(seed)).alias(USER_KEY),  # the fit's init keys
        F.xxhash64(F.col(ITEM), F.lit(seed + 1)).alias(ITEM_KEY),
        F.col(HELD).cast("int").alias(HELD),
    ).coalesce(1)  # fmt: skip
    schema = T.StructType([T.StructField(RECORD_COL, T.StringType())])
    found = keyed.mapInArrow(_search_body(user_cfg, item_cfg, plan, search), schema).collect()
    if not found:
        raise ValueError("there are no training ratings to choose λ on")
    return json.loads(found[0][RECORD_COL])
