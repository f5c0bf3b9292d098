"""bce on small data: the exposure fit (with exposure), the λ search and the preference fit
in one Spark job, each part on one set of arrays.

Fitted one after the other, each of the three is a Spark job of its own (rows moved into a
Python worker, indexed, fitted, the factor tables checkpointed), and the search's rows need
their own preparation jobs: on MovieLens latest-small ≥ 4 the fixed costs were about as long
as the exposure fit's iterations (docs/benchmarks.md). Here the job's tasks receive the
training labels once each, with each row's weight, validation flag, init keys and part, and:

1. one task fits the exposure part (every labelled pair a 1, fresh 0-labels drawn in each
   half-step, train/sampled.py) from the hashed init, if the model has one;
2. the other checks the labels (repeated pairs; global_rate's refusals) and sums the
   preference model's item table over them, the item offsets o_i among it, as
   data/offsets.py's global_rate and item_offsets do in Spark, so that no job before this
   one sums them (docs/benchmarks.md, "The bce item offsets summed in the task");
3. walks the λ search of train/search_task.py on the rows outside the validation fold,
   whose item offsets it computes from those rows alone, as fit/reg_search.py's search
   rows are (the held rows score with the fit part's offsets, or the global one for an
   unseen item);
4. and then fits the preference model at the chosen λ, started from the factors the search
   ended with there (the ids outside its fit part from the hashed init), or at the λ given
   from the hashed init.

Neither part reads what the other fits, so the two tasks run at once where two cores are
free: the exposure part is about two thirds of the work, and one task would leave a second
core idle where implicit ALS, the comparator, uses every core. Each task indexes the same
rows in the same order, so its arrays are the ones one task over them would build
(fit_both, which runs the two parts one after the other on them, gives the same models to
the bit).

The exposure fit is the one its own one-task fit would be, and the search the one
train/search_task.py's task walks (the same arrays in the same order, the same kernels);
only the offsets are summed in numpy rather than in Spark (for 0/1 labels without weights
the sums are whole numbers, and exact either way). Without exposure the
job is one task, bce's automatic λ on small data: the search, and the fit started from its
factors.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.plans import separate_unions
from cfspark.core.schema import (
    BIAS,
    FEATURES,
    ITEM,
    ITEM_OFFSET,
    LABELLED,
    POSITIVE_RATE,
    POSITIVES,
    TARGET,
    USER,
    WEIGHT,
)
from cfspark.data.offsets import refused_rate
from cfspark.kernels.baseline import shrunk_means
from cfspark.train.one_task import (
    ITEM_KEY,
    ITEMS,
    REFUSED,
    USER_KEY,
    USERS,
    factor_batch,
    factor_task_output,
    fit_arrays,
    keyed_rows,
    kind_tables,
    refusal_batch,
    refused_pairs,
)
from cfspark.train.sampled import at_reg
from cfspark.train.search_task import HELD, OUTSIDE, SearchPlan, carry_over, search_arrays, start_from_search
from cfspark.train.step import StepConfig

# The output's kinds beside one_task's USERS (0), ITEMS (1) and RECORD (2), which hold the
# preference model's factors and the record.
EXPOSURE_USERS, EXPOSURE_ITEMS = 3, 4
# The part a task fits, a column of its rows and a key of its record.
PART = "part"
# The exposure part's λ search (cfg.exposure_plan): 1 on its validation fold, 0 on its fit part,
# search_task's OUTSIDE on a row of a user outside its sample; the preference search reads HELD.
EXPOSURE_HELD = "exposure_held"
EXPOSURE, PREFERENCE = "exposure", "preference"
# The preference model's item table, by column and dtype, as data/offsets.py's item_offsets
# gives it: the preference part's task sums it from the labels it holds, and sends it out
# with the item factors (every part's batches carry the columns, null where they have none).
ITEM_TABLE = {POSITIVES: np.int64, LABELLED: np.int64, POSITIVE_RATE: np.float64, ITEM_OFFSET: np.float64}


@dataclasses.dataclass(frozen=True)
class BceTaskConfig:
    """What the task fits: each model's half-steps (the preference's λ is the search's choice
    when plan is set; no exposure part without its half-steps), the item offsets' prior, and
    the loop's limits."""

    user: StepConfig
    item: StepConfig
    exposure_user: StepConfig | None
    exposure_item: StepConfig | None
    plan: SearchPlan | None  # None: λ fixed at user.reg, nothing held out
    offset_prior: float  # the search's item offsets, smoothed as data/offsets.py's item_offsets
    item_offset: bool
    max_iter: int
    tol: float
    # The exposure part's λ search: its walk and the search itself (fit/exposure_search.py's
    # search_exposure, search_arrays' signature), or None for the λ in exposure_user/item.
    exposure_plan: SearchPlan | None = None
    exposure_search: Callable[..., tuple[dict, tuple | None]] | None = None


def search_offsets(item: np.ndarray, y: np.ndarray, weight: np.ndarray | None, fit_rows: np.ndarray,
                   n_items: int, prior: float) -> tuple[np.ndarray, float]:  # fmt: skip
    """(o_i of each of n_items from the fit rows, the global offset logit(p)): item_table's
    offsets over the fit rows alone, p their weighted share of 1s."""
    fit_y = y[fit_rows]
    found = "no labels" if not len(fit_y) else item_table(
        item[fit_rows], fit_y, None if weight is None else weight[fit_rows], n_items, prior, item_offset=True
    )  # fmt: skip
    if isinstance(found, str):
        raise ValueError(f"the λ search's fit part holds labels of one value only ({found})")
    columns, p = found
    return columns[ITEM_OFFSET], float(np.log(p / (1.0 - p)))


def item_table(item: np.ndarray, y: np.ndarray, weight: np.ndarray | None, n_items: int, prior: float,
               item_offset: bool) -> tuple[dict[str, np.ndarray], float] | str:  # fmt: skip
    """(ITEM_TABLE's columns over every local item, p) from the task's labels, as global_rate
    and item_offsets give them in Spark: p the weighted share of 1s, each item's rate
    (Σa·y + m·p) / (Σa + m) and o_i = logit(rate), 0 without item offsets; or global_rate's
    refusal (labels all one value, weights that swamp one of them)."""
    a = np.ones(len(y)) if weight is None else weight
    low, high = float(y.min()), float(y.max())
    p = float((a * y).sum() / a.sum()) if low != high else low
    refusal = refused_rate(len(y), p, (low, high), (float(a.min()), float(a.max())))
    if refusal:
        return refusal
    rate, labelled = shrunk_means(item, y, weight, n_items, prior=prior, global_mean=p)
    offset = np.log(rate / (1.0 - rate)) if item_offset else np.zeros(n_items)
    positives = np.bincount(item, weights=y, minlength=n_items).astype(np.int64)
    return dict(zip(ITEM_TABLE, (positives, labelled, rate, offset), strict=True)), p


def search_input(user: np.ndarray, item: np.ndarray, y: np.ndarray, weight: np.ndarray | None, held: np.ndarray,
                 user_keys: np.ndarray, item_keys: np.ndarray, cfg: BceTaskConfig):  # fmt: skip
    """((fit, held, user_keys, item_keys) for search_arrays, (user, item) dense) from the task's
    rows (local ids over every row): dense maps each local id to its id over the rows outside
    the fold, −1 for an id only the fold holds."""
    fit_rows = ~held
    local, keys, dense = {}, {}, {}
    for side, codes, side_keys in (("user", user, user_keys), ("item", item, item_keys)):
        seen = np.unique(codes[fit_rows])
        dense[side] = np.full(len(side_keys), -1, np.int64)
        dense[side][seen] = np.arange(len(seen))
        local[side], keys[side] = dense[side][codes], side_keys[seen]
    offset = None
    if cfg.item_offset:
        per_item, glob = search_offsets(local["item"], y, weight, fit_rows, len(keys["item"]), cfg.offset_prior)
        offset = np.where(local["item"] >= 0, per_item[np.maximum(local["item"], 0)], glob)
    fit = (local["user"][fit_rows], local["item"][fit_rows], y[fit_rows],
           None if offset is None else offset[fit_rows], None if weight is None else weight[fit_rows])  # fmt: skip
    held_rows = {"user": local["user"][held], "item": local["item"][held], "y": y[held],
                 "offset": None if offset is None else offset[held]}  # fmt: skip
    return (fit, held_rows, keys["user"], keys["item"]), (dense["user"], dense["item"])


def fit_exposure(user: np.ndarray, item: np.ndarray, weight: np.ndarray | None, user_keys: np.ndarray,
                 item_keys: np.ndarray, cfg: BceTaskConfig,
                 fold: np.ndarray | None = None) -> tuple[tuple[np.ndarray, np.ndarray], dict]:  # fmt: skip
    """((W, X), record) of the exposure part on dense local ids over every training row: each
    labelled pair a 1 with its label's weight, the 0-labels drawn in its half-steps. Under
    cfg.exposure_plan, fold (EXPOSURE_HELD of each row) says which rows its λ search fits and
    holds out; the fit at its choice starts from the factors the search ended with there."""
    ones = np.ones(len(user))
    weight = ones if weight is None else weight
    ucfg, icfg, found, start = cfg.exposure_user, cfg.exposure_item, None, None
    if cfg.exposure_plan is not None and cfg.exposure_search is not None and fold is not None:
        searched = fold != OUTSIDE
        plain = dataclasses.replace(cfg, item_offset=False)  # the exposure part has no item offsets
        arrays, dense = search_input(user[searched], item[searched], ones[searched], weight[searched],
                                     fold[searched] == 1, user_keys, item_keys, plain)  # fmt: skip
        plan = cfg.exposure_plan
        found, params = cfg.exposure_search(*arrays, ucfg, icfg, plan)
        found["sample"] = {"ratings": int(searched.sum()), "users": len(np.unique(user[searched])),
                           "items": len(np.unique(item[searched]))}  # fmt: skip
        if plan.sample < 1 and found["path"]:  # a share of the users chose: λ carried over to all
            carry_over(found, plan, len(user), len(item_keys))
        reg = found["reg"] * plan.unit
        # From the search's factors the fit begins near its optimum: no coarse first draws.
        coarse = 0 if params is not None else None
        ucfg, icfg = at_reg(ucfg, reg, coarse), at_reg(icfg, reg, coarse)
        start = start_from_search(params, dense, (user_keys, item_keys), (ucfg, icfg))
    W, X, history, stop = fit_arrays(user, item, ones, None, weight, user_keys, item_keys, ucfg, icfg,
                                     max_iter=cfg.max_iter, tol=cfg.tol, start=start)  # fmt: skip
    return (W, X), {"history": history, "stop": stop, "users": len(W), "items": len(X), "search": found}


def fit_preference(user: np.ndarray, item: np.ndarray, y: np.ndarray, offset: np.ndarray | None,
                   weight: np.ndarray | None, held: np.ndarray, user_keys: np.ndarray, item_keys: np.ndarray,
                   cfg: BceTaskConfig) -> tuple[tuple[np.ndarray, np.ndarray], dict]:  # fmt: skip
    """((W, X), record) of the preference model, after the λ search if cfg has a plan; the
    arrays as fit_both's. It reads nothing the exposure part fits, so the two can run apart."""
    began = time.perf_counter()
    ucfg, icfg, found, start = cfg.user, cfg.item, None, None
    if cfg.plan is not None:
        arrays, dense = search_input(user, item, y, weight, held, user_keys, item_keys, cfg)
        found, params = search_arrays(*arrays, cfg.user, cfg.item, cfg.plan)
        reg = found["reg"] * cfg.plan.unit
        ucfg, icfg = dataclasses.replace(ucfg, reg=reg), dataclasses.replace(icfg, reg=reg)
        # From the search's factors at its choice: from the hashed init a fit near the λ that
        # collapses them stops at the zero-factor saddle (start_from_search).
        start = start_from_search(params, dense, (user_keys, item_keys), (ucfg, icfg))
    searched = time.perf_counter()
    W, X, history, stop = fit_arrays(user, item, y, offset, weight, user_keys, item_keys, ucfg, icfg,
                                     max_iter=cfg.max_iter, tol=cfg.tol, start=start)  # fmt: skip
    record = {
        "history": history, "stop": stop, "users": len(W), "items": len(X), "search": found,
        "task_seconds": {"search": round(searched - began, 3), "fit": round(time.perf_counter() - searched, 3)},
    }  # fmt: skip
    return (W, X), record


def fit_both(user: np.ndarray, item: np.ndarray, y: np.ndarray, offset: np.ndarray | None,
             weight: np.ndarray | None, held: np.ndarray, user_keys: np.ndarray, item_keys: np.ndarray,
             cfg: BceTaskConfig, fold: np.ndarray | None = None) -> tuple[tuple, tuple | None, dict]:  # fmt: skip
    """((W, X), (exposure W, X) or None, record) on dense local ids over every training row,
    one part after the other; offset is each row's o_i over all of them (None without item
    offsets), held the validation fold, fold the exposure search's (fit_exposure)."""
    began = time.perf_counter()
    exposure = None
    if cfg.exposure_user is not None and cfg.exposure_item is not None:
        exposure = fit_exposure(user, item, weight, user_keys, item_keys, cfg, fold)
    exposed = time.perf_counter()
    preference, record = fit_preference(user, item, y, offset, weight, held, user_keys, item_keys, cfg)
    record["exposure"] = exposure[1] if exposure else None
    record["task_seconds"] = {"exposure": round(exposed - began, 3), **record["task_seconds"]}
    return preference, exposure[0] if exposure else None, record


def _floats(column: pa.ChunkedArray) -> np.ndarray | None:
    return None if column.null_count else column.to_numpy().astype(np.float64)


def _body(cfg: BceTaskConfig):
    """mapInArrow body over a partition that holds every training label once per part it
    fits (PART): the exposure part, or the search and the preference model. Planned as one
    task per part (separate_unions), a partition holds one; a planner that merged them
    would give one task both, fitted one after the other, each on its own rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        parts = table.column(PART)
        for part in pc.unique(parts).to_pylist():
            yield _fit_part(cfg, part, table.filter(pc.equal(parts, part)))

    return run


def _fit_part(cfg: BceTaskConfig, part: str, table: pa.Table) -> pa.RecordBatch:
    """The factor_batch of one part fitted on its rows, its record naming the part; the
    preference part's carries the item table, the offsets it fitted with."""
    ids, local, keys = {}, {}, {}
    for side, key_col in ((USER, USER_KEY), (ITEM, ITEM_KEY)):
        encoded = table.column(side).combine_chunks().dictionary_encode()
        local[side] = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        keys[side] = np.empty(len(encoded.dictionary), np.int64)
        keys[side][local[side]] = table.column(key_col).to_numpy()
        ids[side] = encoded.dictionary
    weight = _floats(table.column(WEIGHT))
    if part == EXPOSURE:
        began = time.perf_counter()
        fold = table.column(EXPOSURE_HELD).to_numpy() if cfg.exposure_plan is not None else None
        (W, X), fitted = fit_exposure(local[USER], local[ITEM], weight, keys[USER], keys[ITEM], cfg, fold)
        took = {"exposure": round(time.perf_counter() - began, 3)}
        record = {PART: EXPOSURE, "exposure": fitted, "task_seconds": took}
        # ITEM_TABLE's columns by dtype alone, null: every part's batches have one schema.
        return factor_batch(ids[USER], ids[ITEM], W, X, cfg.user.rank, record, ITEM_TABLE,
                            kinds=(EXPOSURE_USERS, EXPOSURE_ITEMS))  # fmt: skip
    # Every part gets every row, and every job has the preference part: it alone checks them
    # (repeated pairs, labels fit for bce), off the exposure part's task, the job's longest.
    refused = refused_pairs(ids[USER], ids[ITEM], local[USER], local[ITEM], item_columns=ITEM_TABLE)
    if refused is not None:
        return refused
    y = table.column(TARGET).to_numpy().astype(np.float64)
    found = item_table(local[ITEM], y, weight, len(ids[ITEM]), cfg.offset_prior, cfg.item_offset)
    if isinstance(found, str):
        return refusal_batch(ids[USER], ids[ITEM], {PART: PREFERENCE, REFUSED: found}, ITEM_TABLE)
    stats, rate = found
    offset = stats[ITEM_OFFSET][local[ITEM]] if cfg.item_offset else None
    (W, X), record = fit_preference(local[USER], local[ITEM], y, offset, weight, table.column(HELD).to_numpy() == 1,
                                    keys[USER], keys[ITEM], cfg)  # fmt: skip
    return factor_batch(ids[USER], ids[ITEM], W, X, cfg.user.rank, {PART: PREFERENCE, "rate": rate, **record}, stats)


def fit_both_one_task(rows: DataFrame, cfg: BceTaskConfig, *, seed: int) -> tuple[tuple, tuple | None, dict]:
    """((user_factors, item_factors, item_table), (the exposure part's factors, None without
    one), record) from rows (user, item, y, weight, held), in one Spark job: with an exposure
    part, two tasks that each receive every row, one fitting the exposure part, the other the
    search and the preference model, on two cores at once; the record's tasks are the
    partitions each part ran in, and its rate the labels' weighted share of 1s. The factor
    tables are (id, features, bias) under the input's id types and the item table is the
    preference model's (item, ITEM_TABLE's columns), materialised in Spark's block store
    (localCheckpoint). Labels that global_rate refuses raise its InputError."""
    fold = F.col(EXPOSURE_HELD) if EXPOSURE_HELD in rows.columns else F.lit(0)
    keyed = keyed_rows(rows.select(USER, ITEM, TARGET, F.col(WEIGHT).cast("double").alias(WEIGHT),
                                   F.col(HELD).cast("int").alias(HELD), fold.cast("int").alias(EXPOSURE_HELD)),
                       seed)  # fmt: skip
    exposed = cfg.exposure_user is not None and cfg.exposure_item is not None
    parts = [keyed.withColumn(PART, F.lit(part)) for part in ((EXPOSURE,) if exposed else ()) + (PREFERENCE,)]
    # Each part's input is the one partition of every row, in the same order, with no shuffle:
    # each task's arrays are the ones one task over the rows would build.
    with separate_unions(rows.sparkSession):  # planned by the output's localCheckpoint
        out, records, level = factor_task_output(functools.reduce(DataFrame.union, parts), _body(cfg), ITEM_TABLE)
    by_part = {found.pop(PART): (partition, found) for partition, found in records}
    partition, record = by_part[PREFERENCE]
    record["tasks"] = {PREFERENCE: partition}
    record["exposure"] = None
    if exposed:
        partition, found = by_part[EXPOSURE]
        record["tasks"][EXPOSURE] = partition
        record["exposure"] = found["exposure"]
        record["task_seconds"] = {**found["task_seconds"], **record["task_seconds"]}
    # The item factors and the item table share one checkpoint of the preference items' rows.
    kinds = [(USERS, (USER, FEATURES, BIAS)), (ITEMS, (ITEM, FEATURES, BIAS, *ITEM_TABLE))]
    if exposed:
        kinds += [(EXPOSURE_USERS, (USER, FEATURES, BIAS)), (EXPOSURE_ITEMS, (ITEM, FEATURES, BIAS))]
    users, items, *exposure = kind_tables(out, kinds, level)
    preference = users, items.select(ITEM, FEATURES, BIAS), items.select(ITEM, *ITEM_TABLE)
    out.unpersist()
    return preference, tuple(exposure) or None, record
