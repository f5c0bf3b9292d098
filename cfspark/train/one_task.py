"""Small data: the whole alternating loop inside one Spark task.

When the ratings are few, the distributed loop's cost is mostly Spark's own: a job per
half-step (a fixed cost of a quarter of a second or more, whatever the data size), the
blocks' and messages' crossings into Python, plus setup's index, pack and init jobs. So a
fit small enough (fit/one_task.py's runs_in_one_task) sends the ratings to one task instead.
The task indexes both sides itself (Arrow's dictionary encoding, so ids of any type),
builds both sides' CSR arrays once, runs the same half-step (step.solve_rows) max_iter
times, and emits both factor tables and the loss history: one Spark job for the whole fit.

It is the same model as the distributed fit with one block per side: the same hashed
initial factors (xxhash64 of the id with the same seeds), the same kernel, the same J
and the same stopping rule; only the order of float sums differs
(tests/test_one_task.py). What it gives up is what a fit of a few seconds does not
need: per-iteration checkpoints to resume from (a failed task is retried whole).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.blocks.codec import list_rows
from cfspark.core.errors import InputError, RepeatedPairsError
from cfspark.core.plans import narrow_rows
from cfspark.core.schema import BIAS, FEATURES, ITEM, ITEM_MEAN, ITEM_RATINGS, OFFSET, TARGET, USER, WEIGHT
from cfspark.kernels.init import initial_params
from cfspark.kernels.layout import bias_col
from cfspark.kernels.order import stable_order
from cfspark.kernels.repeats import repeats
from cfspark.train.history import HalfStep, converged, history_entry, reached_max_iter
from cfspark.train.sampled import at_iteration, coarse_iterations, draws_ahead
from cfspark.train.step import StepConfig, solve_rows
from cfspark.train.trainer import checkpoint_level

# At most this many training labels of a bce fit with 0 labels go to one task, and as many
# ratings to an automatic λ search's task (the positive-only fit's limit is mse's). At 2M
# ratings one task still takes about half the blockwise fit's time on 2 cores (measured:
# 24.4 s against 43.9 s, mse, synthetic, 18 iterations each; 8.7 s against 17.3 s, a
# 1.93M-pair exposure fit, 10 each). mse's limit: fit/one_task.py.
ONE_TASK_RATINGS = 2_500_000

KIND = "kind"  # of an output row: 0 a user's factors, 1 an item's, 2 the fit's record
USERS, ITEMS, RECORD = 0, 1, 2
USER_KEY, ITEM_KEY = "user_key", "item_key"
RECORD_COL = "record"
PARTITION = "partition"  # of a record read back: the task that emitted it
REPEATED = "repeated"  # a record's repeated (user, item) pairs, which refuse the fit
REFUSED = "refused"  # a record's reason the input cannot be fitted (an InputError's message)
# The item stats a search-and-fit task emits beside the factors (mse), by column: name and dtype.
MSE_ITEM_COLUMNS = {ITEM_MEAN: np.float64, ITEM_RATINGS: np.int64}
_SQL_TYPES = {np.dtype(np.float64): T.DoubleType(), np.dtype(np.int64): T.LongType()}


def csr_by_row(own: np.ndarray, other: np.ndarray, n: int, *values: np.ndarray | None):
    """(row_ptr, cols, *values) of one side's ratings, rows in local order (each row's ratings
    in input order)."""
    order = stable_order(own)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(own, minlength=n))]).astype(np.int64)
    return (row_ptr, other[order].astype(np.int32), *(None if v is None else v[order] for v in values))


# Rows scored at a time by predictions: their gathered param rows (about 1 MiB a side at rank
# 10) stay in the CPU's cache, where gathering every row first allocates and faults in 0.4 GB
# a side at 4.2M ratings.
SCORE_ROWS = 8192


def predictions(users: np.ndarray, items: np.ndarray, user_local: np.ndarray, item_local: np.ndarray) -> np.ndarray:
    """The model's score of each (user, item) row: w·x + b + c, from the full param rows."""
    scores = np.empty(len(user_local))
    for lo in range(0, len(user_local), SCORE_ROWS):
        hi = lo + SCORE_ROWS
        # take gathers rows several times faster than fancy indexing (0.04 s against 0.2 s at 1M rows).
        np.einsum("ij,ij->i", users.take(user_local[lo:hi], axis=0), items.take(item_local[lo:hi], axis=0),
                  out=scores[lo:hi])  # fmt: skip
    return scores


def fit_arrays(
    user_local: np.ndarray,
    item_local: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None,
    weight: np.ndarray | None,
    user_keys: np.ndarray,
    item_keys: np.ndarray,
    user_cfg: StepConfig,
    item_cfg: StepConfig,
    *,
    max_iter: int,
    tol: float,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    settle: float | None = None,
    still: float | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict], str]:
    """The alternating loop on dense local ids: (user params, item params, history, stop reason).

    user_local/item_local index user_keys/item_keys, the init keys; every user and item
    has at least one rating. The history has the trainer's fields, with task seconds.
    start, if given, is the (user, item) params to begin from instead of the hashed init.
    settle, if given, replaces the training loss's tol: the loop stops once an iteration
    moves the predictions of the training rows by at most settle in root mean square,
    which bounds how much that iteration could change any RMSE over those rows; still, if
    given with settle, also stops it once an iteration (after the second) changes the
    training rows' RMSE by at most that fraction.
    """
    n_users, n_items = len(user_keys), len(item_keys)
    by_user = csr_by_row(user_local, item_local, n_users, y, offset, weight)
    by_item = csr_by_row(item_local, user_local, n_items, y, offset, weight)
    # Sampled 0-labels are drawn a half-step ahead, beside the solve (sampled.DrawsAhead).
    ahead = draws_ahead([(user_cfg, by_user, user_keys, n_items), (item_cfg, by_item, item_keys, n_users)], max_iter)
    if start is None:
        users = initial_params(user_keys, user_cfg.rank, scale=user_cfg.init_scale, side="user")
        items = initial_params(item_keys, item_cfg.rank, scale=item_cfg.init_scale, side="item")
    else:
        users, items = start
    scores = predictions(users, items, user_local, item_local) if settle is not None else None
    last_rmse = np.inf
    user_state = item_state = None
    tiled: tuple[dict, dict] = ({}, {})  # each side's ratings, tiled once for every half-step (step.solve_rows)
    history: list[dict] = []
    stop_reason = reached_max_iter(max_iter)
    coarse = coarse_iterations(user_cfg, item_cfg)
    began = time.perf_counter()
    try:
        for iteration in range(1, max_iter + 1):
            step_began = time.perf_counter()
            step, drawn = at_iteration(user_cfg, iteration), ahead.take(iteration, 0) if ahead else None
            # The iteration's data loss is the item half-step's: the user half-step's is not computed.
            users, user_state, (_, user_reg) = solve_rows(step, *by_user, items, users, user_state, keys=user_keys,
                                                          data_loss=False, cache=tiled[0], drawn=drawn)  # fmt: skip
            half_way = time.perf_counter()
            step, drawn = at_iteration(item_cfg, iteration), ahead.take(iteration, 1) if ahead else None
            items, item_state, (data, item_reg) = solve_rows(step, *by_item, users, items, item_state, keys=item_keys,
                                                             cache=tiled[1], drawn=drawn)  # fmt: skip
            now = time.perf_counter()
            user_step = HalfStep(0.0, user_reg, half_way - step_began)
            item_step = HalfStep(data, item_reg, now - half_way)
            entry = history_entry(
                iteration, user_step, item_step, seconds=now - step_began, elapsed=now - began,
                user_seconds=half_way - step_began,
            )  # fmt: skip
            history.append(entry)
            if not np.isfinite(entry["train_loss"]):
                stop_reason = f"diverged: the training loss is {entry['train_loss']} at iteration {iteration}"
                break
            if settle is None:
                reason = converged(history[coarse:], tol)
            else:
                last, scores = scores, predictions(users, items, user_local, item_local)
                moved = float(np.sqrt(np.mean((scores - last) ** 2)))
                residual = (scores + (0.0 if offset is None else offset) - y) ** 2
                fit_rmse = float(np.sqrt(np.average(residual, weights=weight)))
                entry["moved"] = moved
                reason = None
                if moved <= settle:
                    reason = f"settled: the predictions moved by {moved:.3g} (RMS), at most {settle:.3g}"
                elif still is not None and iteration > 1 and abs(fit_rmse - last_rmse) <= still * last_rmse:
                    change = abs(fit_rmse - last_rmse)
                    reason = f"settled: the training RMSE changed by {change:.3g}, at most {still:g} of it"
                last_rmse = fit_rmse
            if reason:
                stop_reason = reason
                break
    finally:
        if ahead:
            ahead.close()
    history[-1]["stop"] = stop_reason
    return users, items, history, stop_reason


def factor_batch(
    user_ids: pa.Array,
    item_ids: pa.Array,
    W: np.ndarray,
    X: np.ndarray,
    rank: int,
    record: dict,
    item_columns: dict[str, np.ndarray | type] | None = None,
    kinds: tuple[int, int] = (USERS, ITEMS),
) -> pa.RecordBatch:
    """One table, three kinds of rows (KIND): each user's and item's factors under the id
    types they arrived in (of kinds, (USERS, ITEMS) unless a task emits a second model), and
    the record; item_columns, if given, are more columns of each item's (name: int64 or
    float64 values, in item_ids' order), null on the other rows (the item stats: the mse
    search's μ_i and counts, bce's rates and offsets). A column given by its dtype alone is
    null on every row: a batch that has none of them keeps the body's one schema."""
    n_u, n_i = len(W), len(X)
    columns = {
        KIND: pa.array(np.r_[np.full(n_u, kinds[0]), np.full(n_i, kinds[1]), [RECORD]].astype(np.int32)),
        USER: pa.concat_arrays([user_ids, pa.nulls(n_i + 1, user_ids.type)]),
        ITEM: pa.concat_arrays([pa.nulls(n_u, item_ids.type), item_ids, pa.nulls(1, item_ids.type)]),
        FEATURES: pa.concat_arrays(
            [list_rows(W[:, :rank]), list_rows(X[:, :rank]), pa.nulls(1, pa.list_(pa.float64()))]
        ),
        BIAS: pa.array(np.r_[W[:, bias_col(rank, "user")], X[:, bias_col(rank, "item")], [np.nan]]),
        RECORD_COL: pa.array([None] * (n_u + n_i) + [json.dumps(record)], pa.string()),
    }
    for name, values in (item_columns or {}).items():
        if not isinstance(values, np.ndarray):
            columns[name] = pa.nulls(n_u + n_i + 1, pa.from_numpy_dtype(np.dtype(values)))
            continue
        mine = np.r_[np.zeros(n_u, bool), np.ones(len(values), bool), [False]]
        columns[name] = pa.array(np.r_[np.zeros(n_u, values.dtype), values, np.zeros(1, values.dtype)], mask=~mine)
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def refusal_batch(user_ids: pa.Array, item_ids: pa.Array, record: dict,
                  item_columns: dict[str, type] | None = None) -> pa.RecordBatch:  # fmt: skip
    """A factor_batch of the record alone, no factors: a task's refusal, which
    factor_task_output raises on. item_columns (name: dtype) as the body's other batches'."""
    none = np.zeros((0, 3))  # rank 1 and its two bias columns, with no rows
    return factor_batch(user_ids.slice(0, 0), item_ids.slice(0, 0), none, none, 1, record, item_columns)


def refused_pairs(
    user_ids: pa.Array,
    item_ids: pa.Array,
    user_local: np.ndarray,
    item_local: np.ndarray,
    *,
    item_columns: dict[str, np.dtype] | None = None,
) -> pa.RecordBatch | None:
    """A refusal_batch naming the task's repeated (user, item) pairs in their own ids
    (user_local/item_local index the Arrow dictionaries user_ids/item_ids), or None when
    every pair is distinct; item_columns as refusal_batch's. The task has each row's
    indices in hand, so the estimator's duplicate check is a sort here, not a shuffle."""
    found = repeats(user_local, item_local, len(item_ids))
    if found is None:
        return None
    pairs, user, item, times = found
    found = {"pairs": pairs, "user": user_ids[user].as_py(), "item": item_ids[item].as_py(), "times": times}
    return refusal_batch(user_ids, item_ids, {REPEATED: found}, item_columns)


def _fit_body(user_cfg: StepConfig, item_cfg: StepConfig, max_iter: int, tol: float):
    """mapInArrow body over the one partition that holds every training rating."""
    rank = user_cfg.rank

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        users = table.column(USER).combine_chunks().dictionary_encode()
        items = table.column(ITEM).combine_chunks().dictionary_encode()
        user_local = users.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        item_local = items.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        user_keys = np.empty(len(users.dictionary), np.int64)
        user_keys[user_local] = table.column(USER_KEY).to_numpy()
        item_keys = np.empty(len(items.dictionary), np.int64)
        item_keys[item_local] = table.column(ITEM_KEY).to_numpy()
        refused = refused_pairs(users.dictionary, items.dictionary, user_local, item_local)
        if refused is not None:
            yield refused
            return
        offset, weight = (table.column(name) for name in (OFFSET, WEIGHT))
        W, X, history, stop = fit_arrays(
            user_local, item_local, table.column(TARGET).to_numpy().astype(np.float64),
            None if offset.null_count else offset.to_numpy().astype(np.float64),
            None if weight.null_count else weight.to_numpy().astype(np.float64),
            user_keys, item_keys, user_cfg, item_cfg, max_iter=max_iter, tol=tol,
        )  # fmt: skip
        record = {"history": history, "stop": stop, "users": len(W), "items": len(X)}
        yield factor_batch(users.dictionary, items.dictionary, W, X, rank, record)

    return run


def fit_one_task(
    targets: DataFrame,
    user_cfg: StepConfig,
    item_cfg: StepConfig,
    *,
    max_iter: int,
    tol: float,
    seed: int,
) -> tuple[DataFrame, DataFrame, dict]:
    """(user_factors, item_factors, record) from targets (user, item, y, offset, weight), from
    the hashed init; the record holds the loss history, the stop reason and the numbers of
    users and items.

    The factor tables are (id, features, bias) under the input's id types, materialised
    in Spark's block store (localCheckpoint), as a distributed fit's final tables are.
    """
    rows = keyed_rows(targets.select(USER, ITEM, TARGET, OFFSET, WEIGHT), seed)
    users, items, _, record = run_factor_task(rows, _fit_body(user_cfg, item_cfg, max_iter, tol))
    return users, items, record


def keyed_rows(rows: DataFrame, seed: int) -> DataFrame:
    """rows with each side's init key (xxhash64 of the id, as the distributed fit's), in one partition."""
    return rows.select(
        "*",
        F.xxhash64(F.col(USER), F.lit(seed)).alias(USER_KEY),
        F.xxhash64(F.col(ITEM), F.lit(seed + 1)).alias(ITEM_KEY),
    ).coalesce(1)


def run_factor_task(
    rows: DataFrame, body, *, item_stats: bool = False
) -> tuple[DataFrame, DataFrame, DataFrame | None, dict]:
    """Run a factor_batch body over rows in one Spark job: (user_factors, item_factors,
    item_stats (item, item_mean, ratings) if asked for, else None, record)."""
    out, records, level = factor_task_output(rows, body, MSE_ITEM_COLUMNS if item_stats else None)
    ((_, record),) = records  # rows come in one partition
    kinds = [(USERS, (USER, FEATURES, BIAS)), (ITEMS, (ITEM, FEATURES, BIAS))]
    kinds += [(ITEMS, (ITEM, *MSE_ITEM_COLUMNS))] if item_stats else []
    user_factors, item_factors, *stats = kind_tables(out, kinds, level)
    out.unpersist()
    return user_factors, item_factors, stats[0] if stats else None, record


def factor_task_output(
    rows: DataFrame, body, item_columns: dict[str, type] | None = None
) -> tuple[DataFrame, list[tuple[int, dict]], StorageLevel]:
    """A factor_batch body's output over rows (kind, user, item, features, bias, record, then
    item_columns, by name and numpy dtype), checkpointed as it is computed; its records, each
    with the partition (the task) that emitted it, read in the one job that fits; and the
    storage level for the tables taken from it (kind_tables). A record that refuses raises:
    RepeatedPairsError for repeated pairs, InputError for REFUSED."""
    ids = {f.name: f.dataType for f in rows.schema.fields}
    fields = [
        T.StructField(KIND, T.IntegerType()),
        T.StructField(USER, ids[USER]),
        T.StructField(ITEM, ids[ITEM]),
        T.StructField(FEATURES, T.ArrayType(T.DoubleType())),
        T.StructField(BIAS, T.DoubleType()),
        T.StructField(RECORD_COL, T.StringType()),
        *(T.StructField(name, _SQL_TYPES[np.dtype(dtype)]) for name, dtype in (item_columns or {}).items()),
    ]
    level = checkpoint_level(rows.sparkSession)
    out = rows.mapInArrow(body, T.StructType(fields)).localCheckpoint(eager=False, storageLevel=level)
    records = out.filter(F.col(KIND) == RECORD).select(F.spark_partition_id().alias(PARTITION), RECORD_COL)
    with narrow_rows(rows.sparkSession):  # the rows are ratings
        found = records.collect()
    if not found:  # the collect is the one job that fits
        raise ValueError("there are no training ratings to fit")
    records = [(row[PARTITION], json.loads(row[RECORD_COL])) for row in found]
    for _, record in records:
        if REPEATED in record:  # a task that found repeated pairs fitted nothing
            out.unpersist()
            raise RepeatedPairsError(**record[REPEATED])
        if REFUSED in record:  # a task that found its input unfit to fit fitted nothing
            out.unpersist()
            raise InputError(record[REFUSED])
    return out, records, level


def kind_tables(out: DataFrame, kinds: Sequence[tuple[int, tuple[str, ...]]], level: StorageLevel) -> list[DataFrame]:
    """The rows of each (kind, columns) of a factor task's output, with those columns, each in
    Spark's block store, filled in one job: a job's fixed cost on the driver is paid once, not
    once a table (three of a small fit's twelve jobs were a table each). Spark's "noop"
    sink computes every partition of the union, so every table is stored, and writes nothing."""
    kept = [
        out.filter(F.col(KIND) == kind).select(*columns).localCheckpoint(eager=False, storageLevel=level)
        for kind, columns in kinds
    ]
    filled = functools.reduce(DataFrame.union, [table.select(F.lit(0).alias(KIND)) for table in kept])
    filled.write.format("noop").mode("overwrite").save()
    return kept
