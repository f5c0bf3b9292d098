"""Check ratings once, in one aggregate pass, and settle the types of ids and ratings (and an
input of many small partitions leaves in fewer: core/plans.py's fewer_partitions).

Each problem is reported as one line: the column, how many rows, and an example row.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.core.errors import InputError, RepeatedPairsError
from cfspark.core.plans import bounded_partitions, fewer_partitions, unreduced_groups
from cfspark.core.schema import ITEM, RATING, USER, WEIGHT, column
from cfspark.data.read import Columns

# Canonical names used inside cfspark; tables out are renamed back to the user's own.

_ID_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.StringType)
# Whole-number doubles, floats and decimals are integer ids too: StringIndexer writes
# doubles, and so does every ALS tutorial's pipeline. A fractional one is refused.
NUMBER_ID_TYPES = (T.FloatType, T.DoubleType, T.DecimalType)
_LONG_LIMIT = 2.0**63  # a whole number of this magnitude or more has no long
# The largest |rating| accepted. Squares of ratings, and sums of up to 1e100 of them (item
# means, losses), then stay finite in float64 (max about 1.8e308); any real rating is far below it.
MAX_ABS_RATING = 1e100
# The largest weight (input.weight_col) accepted, for the same reason: a weight multiplies a
# rating's squared error, Gram and gradient, and the sums of those must stay finite.
MAX_WEIGHT = 1e100

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def _example(df: DataFrame, cond: Column) -> str:
    row = df.filter(cond).limit(1).collect()
    return str(row[0].asDict()) if row else "(none)"


def _is_bad_double(c: Column) -> Column:
    return F.isnan(c) | (F.abs(c) == F.lit(float("inf")))


def not_whole(c: Column, dtype: T.DataType) -> Column:
    """A double, float or decimal id that is not a whole number a long can hold."""
    d = c.cast("double")
    bad = F.isnan(d) | (F.abs(d) >= F.lit(_LONG_LIMIT)) | (d != F.floor(d))
    if isinstance(dtype, T.DecimalType):
        bad = (F.abs(d) >= F.lit(_LONG_LIMIT)) | (c != F.floor(c))
    return c.isNotNull() & bad


def _label(c: Column, dtype: T.DataType) -> Column:
    """0/1 labels from booleans, numbers 0 and 1, or the strings 0, 1, true, false; else null."""
    if isinstance(dtype, T.BooleanType):
        return c.cast("double")
    if isinstance(dtype, T.StringType):
        s = F.lower(F.trim(c))
        return F.when(s.isin("1", "1.0", "true"), 1.0).when(s.isin("0", "0.0", "false"), 0.0)
    d = c.cast("double")
    return F.when(d == 1.0, 1.0).when(d == 0.0, 0.0)


def validate_ratings(
    df: DataFrame,
    cols: Columns,
    *,
    id_type: str,
    duplicates: str,
    labels: bool = False,
    binarize_threshold: float | None = None,
    setting: str = "input.duplicates",
) -> DataFrame:
    """Return (user, item, rating: double[, weight: double]) or raise InputError naming the first problem.

    id_type: auto (string ids become long when every id is an integer written as Spark
    writes it back: no leading zeros, no "+", no spaces, so "007" and "7" stay two ids), long,
    string, or keep.
    labels: the rating column must hold 0/1 labels (bce); with binarize_threshold, numeric
    ratings become labels instead, rating >= threshold → 1.
    cols.weight, if set, names a count or confidence per row: a finite number > 0 (a row
    with a count of 0 did not happen, and is refused rather than guessed at).
    """
    schema = {f.name: f.dataType for f in df.schema.fields}
    for name in (cols.user, cols.item):
        if not isinstance(schema[name], (*_ID_TYPES, *NUMBER_ID_TYPES)):
            raise InputError(
                f"column {name!r} has type {schema[name].simpleString()}; ids must be integers, strings "
                "or whole-number doubles"
            )
    if not isinstance(schema[cols.rating], (*_NUMERIC, T.StringType, T.BooleanType)):
        raise InputError(
            f"column {cols.rating!r} has type {schema[cols.rating].simpleString()}; ratings must be numbers"
        )

    if cols.weight and not isinstance(schema[cols.weight], (*_NUMERIC, T.StringType)):
        raise InputError(
            f"column {cols.weight!r} (input.weight_col) has type {schema[cols.weight].simpleString()}; "
            "weights must be numbers"
        )
    # true/false are labels: an mse fit would square their errors around each item's rate.
    labels_hint = 'true/false are labels: set model.loss = "bce" (loss="bce") to fit them, or cast them to numbers'
    if not labels and isinstance(schema[cols.rating], T.BooleanType):
        raise InputError(f"column {cols.rating!r} has type boolean; {labels_hint}")
    rating = column(cols.rating).try_cast("double")
    binarize = labels and binarize_threshold is not None
    if binarize and not isinstance(schema[cols.rating], (*_NUMERIC, T.StringType)):
        raise InputError(
            f"input.binarize_threshold needs numbers, but column {cols.rating!r} has type "
            f"{schema[cols.rating].simpleString()}"
        )
    not_number = (
        f"input.binarize_threshold needs numbers: column {cols.rating!r} has {{n}} value(s) that are not numbers"
        if binarize
        else f"column {cols.rating!r} has {{n}} value(s) that are not numbers"
    )
    checks: dict[str, tuple[Column, str]] = {
        "null_user": (column(cols.user).isNull(), f"column {cols.user!r} has {{n}} null id(s)"),
        "null_item": (column(cols.item).isNull(), f"column {cols.item!r} has {{n}} null id(s)"),
        "null_rating": (column(cols.rating).isNull(), f"column {cols.rating!r} has {{n}} null rating(s)"),
    }
    if labels and not binarize:
        label = _label(column(cols.rating), schema[cols.rating])
        checks["not_label"] = (
            column(cols.rating).isNotNull() & label.isNull(),
            f"column {cols.rating!r} has {{n}} label(s) other than 0/1 or true/false",
        )
    else:
        if not binarize and isinstance(schema[cols.rating], T.StringType):
            checks["text_label"] = (
                F.lower(F.trim(column(cols.rating))).isin("true", "false"),
                f"column {cols.rating!r} has {{n}} true/false value(s)",
            )
        checks["not_number"] = (column(cols.rating).isNotNull() & rating.isNull(), not_number)
        checks["not_finite"] = (
            rating.isNotNull() & _is_bad_double(rating),
            f"column {cols.rating!r} has {{n}} NaN or infinite rating(s)",
        )
        if not binarize:
            checks["too_large"] = (
                rating.isNotNull() & ~_is_bad_double(rating) & (F.abs(rating) > F.lit(MAX_ABS_RATING)),
                f"column {cols.rating!r} has {{n}} rating(s) above {MAX_ABS_RATING:g} in magnitude",
            )
        label = (rating >= F.lit(binarize_threshold)).cast("double") if binarize else rating
    weight = column(cols.weight).try_cast("double") if cols.weight else None
    if weight is not None:
        w = cols.weight
        checks["null_weight"] = (column(w).isNull(), f"column {w!r} (input.weight_col) has {{n}} null weight(s)")
        checks["weight_not_number"] = (
            column(w).isNotNull() & (weight.isNull() | _is_bad_double(weight)),
            f"column {w!r} (input.weight_col) has {{n}} value(s) that are not finite numbers",
        )
        checks["weight_not_positive"] = (
            weight.isNotNull() & ~_is_bad_double(weight) & (weight <= 0),
            f"column {w!r} (input.weight_col) has {{n}} count(s) that are not above 0",
        )
        checks["weight_too_large"] = (
            weight.isNotNull() & ~_is_bad_double(weight) & (weight > F.lit(MAX_WEIGHT)),
            f"column {w!r} (input.weight_col) has {{n}} weight(s) above {MAX_WEIGHT:g}, out of the range "
            "the loss's sums can hold",
        )
    hints: dict[str, str] = {"text_label": f"; {labels_hint}"}
    for name in (cols.user, cols.item):
        if isinstance(schema[name], NUMBER_ID_TYPES):
            checks[f"not_whole_{name}"] = (
                not_whole(column(name), schema[name]),
                f"column {name!r} has {{n}} id(s) that are not whole numbers",
            )
            hints[f"not_whole_{name}"] = (
                f"; ids must be integers or strings: cast the column, e.g. F.col({name!r}).cast('string'), "
                "or round it first if the fractions are noise"
            )
    id_casts = {}
    for name in (cols.user, cols.item):
        if isinstance(schema[name], T.StringType) and id_type == "auto":
            # An id is an integer only if its text is the integer's own spelling: "007", "+7"
            # and " 7" are not 7, so one of them keeps every id a string.
            id_casts[name] = column(name).isNotNull() & ~column(name).try_cast("long").cast("string").eqNullSafe(
                column(name)
            )
        if isinstance(schema[name], T.StringType) and id_type == "long":
            text = F.trim(column(name))
            integer = text.rlike(r"^[+-]?[0-9]+$")
            checks[f"not_long_{name}"] = (
                column(name).isNotNull() & ~integer,
                f"column {name!r} has {{n}} id(s) that are not integers",
            )
            checks[f"beyond_long_{name}"] = (
                column(name).isNotNull() & integer & text.try_cast("long").isNull(),
                f"column {name!r} has {{n}} integer id(s) out of range for long (beyond ±9223372036854775807; "
                'use input.id_type = "string")',
            )

    # The partition id is projected first: an aggregate may not take a nondeterministic argument.
    counts = (
        df.withColumn(_PARTITION, F.spark_partition_id())
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.max(_PARTITION).alias("last_partition"),  # the input's partitions, less one
            *[F.sum(cond.cast("long")).alias(key) for key, (cond, _) in checks.items()],
            *[F.sum(cond.cast("long")).alias(f"cast_{name}") for name, cond in id_casts.items()],
        )
        .first()
    )
    if counts["rows"] == 0:
        raise InputError("the input has no ratings (0 rows)")
    for key, (cond, message) in checks.items():
        n = counts[key] or 0
        if n:
            example = _example(df, cond)
            if key == "not_label":
                value = df.filter(cond).select(column(cols.rating)).limit(1).collect()[0][0]
                example = f"value {value!r} in {example}"
            raise InputError(f"{message.format(n=n)} out of {counts['rows']} rows, e.g. {example}{hints.get(key, '')}")

    def typed_id(name: str) -> Column:
        if isinstance(schema[name], NUMBER_ID_TYPES):  # whole numbers, checked above
            return column(name).cast("long").cast("string" if id_type == "string" else "long")
        if id_type == "keep":
            return column(name)
        if isinstance(schema[name], T.StringType):
            if id_type == "string" or (id_type == "auto" and (counts[f"cast_{name}"] or 0) > 0):
                return column(name)
            return F.trim(column(name)).cast("long")
        return column(name).cast("string") if id_type == "string" else column(name).cast("long")

    weights = [weight.alias(WEIGHT)] if weight is not None else []
    out = df.select(typed_id(cols.user).alias(USER), typed_id(cols.item).alias(ITEM), label.alias(RATING), *weights)
    # Coalesced after the duplicates rule: "last" keeps to the input's own partitions' order.
    checked = _check_duplicates(out, cols, duplicates, setting)
    return fewer_partitions(checked, counts["rows"], counts["last_partition"] + 1)


_PARTITION = "_partition"  # the input partition a row is in, for validation's count of them
_ORDER = "_order"  # the input's row order, which duplicates = "last" keeps to
_LEFT_TO_THE_FIT = "fit"  # duplicates = "error", the fit refusing them (validate_given's fit_refuses)


def _check_duplicates(df: DataFrame, cols: Columns, duplicates: str, setting: str = "input.duplicates") -> DataFrame:
    """Combine repeated (user, item) rows: mean, max or sum of their ratings, or the last
    row's in the input's order; or refuse them (error), naming setting, the key or Param
    that chooses. Repeated rows' counts (weight) add up, except under last."""
    counts = [F.sum(WEIGHT).alias(WEIGHT)] if WEIGHT in df.columns else []
    if duplicates in ("mean", "max", "sum"):
        combine = {"mean": F.avg, "max": F.max, "sum": F.sum}[duplicates]
        return df.groupBy(USER, ITEM).agg(combine(RATING).alias(RATING), *counts)
    if duplicates == "last":
        last = F.max_by(F.struct(*[c for c in df.columns if c not in (USER, ITEM)]), F.col(_ORDER))
        ordered = df.withColumn(_ORDER, F.monotonically_increasing_id())
        return ordered.groupBy(USER, ITEM).agg(last.alias("_last")).select(USER, ITEM, "_last.*")
    if duplicates == _LEFT_TO_THE_FIT:
        return df
    repeated = df.groupBy(USER, ITEM).count().filter(F.col("count") > 1)
    # Nearly every pair is distinct, so counting them before the shuffle would reduce nothing.
    with unreduced_groups(df.sparkSession):
        first = repeated.orderBy(F.col("count").desc(), USER, ITEM).limit(1).collect()
        n_pairs = repeated.count() if first else 0
    if first:
        row = first[0]
        raise repeated_pairs_error(RepeatedPairsError(n_pairs, row[USER], row[ITEM], row["count"]), cols, setting)
    return df


# How each setting combines repeated pairs, as its error message lists them.
_COMBINE = dict.fromkeys(("input.duplicates", "the duplicates Param"), '"mean", "max", "last" or "sum"')
PARAM = "the duplicates Param"  # the estimator's setting


def repeated_pairs_error(found: RepeatedPairsError, cols: Columns, setting: str = PARAM) -> InputError:
    """The refusal of repeated (user, item) pairs, in the input's column names, naming the
    setting that combines them; found by the check above or by a fit (RepeatedPairsError)."""
    return InputError(
        f"{found.pairs} (user, item) pair(s) appear more than once, e.g. "
        f"{{{cols.user}: {found.user!r}, {cols.item}: {found.item!r}}} appears {found.times} times "
        f"(set {setting} to combine them: {_COMBINE[setting]})"
    )


def require_columns(df: DataFrame, names: tuple[str, ...]) -> None:
    """Refuse a caller's DataFrame without one of the columns named (ValueError naming it)."""
    for name in names:
        if name not in df.columns:
            raise ValueError(f"the input has no column {name!r} (columns: {', '.join(df.columns)})")


def validate_given(
    df: DataFrame, cols: Columns, *, labels: bool, duplicates: str = "error", fit_refuses: bool = False
) -> DataFrame:
    """The library's way in (a fit, a fold-in): cols' columns of df, validated with their ids
    kept as they are (whole-number doubles become longs) and repeated (user, item) pairs
    refused or combined as the estimator's duplicates Param says. The job reads its own
    input with the id type and duplicates rule its config chooses.

    fit_refuses: the rows go to a fit, which refuses repeated pairs itself where it sorts
    them anyway (RepeatedPairsError; the caller words it with repeated_pairs_error), so under
    duplicates = "error" they are not looked for here: that would cost a shuffle of every pair."""
    if len(set(cols.names)) < len(cols.names):
        raise ValueError(f"the user, item, rating and weight columns must be different columns, got {list(cols.names)}")
    require_columns(df, cols.names)
    rule = _LEFT_TO_THE_FIT if fit_refuses and duplicates == "error" else duplicates
    # A DataFrame, unlike the job's files (split by bytes), may come in many small partitions.
    return validate_ratings(
        bounded_partitions(df.select(*map(column, cols.names))), cols, id_type="keep", duplicates=rule, labels=labels,
        setting=PARAM,
    )  # fmt: skip
