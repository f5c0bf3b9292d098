"""Read ratings from csv, parquet or MovieLens '::' files into (user, item, rating)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.core.errors import InputError

SAMPLE_RATINGS = Path("data", "mllib", "als", "sample_movielens_ratings.txt")


@dataclass(frozen=True)
class Columns:
    """The user's own column names, used on the way in and on every table out."""

    user: str
    item: str
    rating: str
    weight: str = ""  # a count or confidence per row (input.weight_col); "" for none

    @property
    def names(self) -> tuple[str, ...]:
        """The columns read: user, item, rating and, when set, weight."""
        return (self.user, self.item, self.rating, *((self.weight,) if self.weight else ()))


def pyspark_home() -> Path:
    """The installed pyspark folder on disk.

    Under spark-submit, pyspark.__file__ points into pyspark.zip, so SPARK_HOME and
    then sys.path are searched for a real directory instead.
    """
    candidates = [os.environ.get("SPARK_HOME", "")]
    candidates += [str(Path(p) / "pyspark") for p in sys.path if p]
    for c in candidates:
        if c and (Path(c) / SAMPLE_RATINGS).is_file():
            return Path(c)
    import pyspark

    here = Path(pyspark.__file__).resolve().parent
    for parent in [here, *here.parents]:
        if (parent / SAMPLE_RATINGS).is_file():
            return parent
    raise InputError("cannot find pyspark's sample ratings file; set input.path to your data")


def default_ratings_path() -> str:
    return str(pyspark_home() / SAMPLE_RATINGS)


def _load(spark: SparkSession, path: str, fmt: str, header: bool, delimiter: str) -> DataFrame:
    if fmt == "parquet":
        # mergeSchema reads every file's footer now: a file that is not Parquet, or files that
        # disagree on a column's type, are found here as bad input, not as a task failure later.
        return spark.read.option("mergeSchema", "true").parquet(path)
    if fmt == "csv":
        return spark.read.csv(path, header=header, sep=delimiter, inferSchema=False)
    lines = spark.read.text(path)
    parts = F.split(F.col("value"), "::")
    return lines.filter(F.trim("value") != "").select(
        parts[0].alias("_c0"), parts[1].alias("_c1"), parts[2].alias("_c2")
    )


def read_ratings(spark: SparkSession, input_cfg: dict) -> tuple[DataFrame, Columns]:
    """Return the raw ratings with the user's column names, before any validation."""
    cols = Columns(input_cfg["user_col"], input_cfg["item_col"], input_cfg["rating_col"], input_cfg["weight_col"])
    path, fmt = input_cfg["path"], input_cfg["format"]
    if not path:
        path, fmt = default_ratings_path(), "movielens"
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input.path {path} does not exist")
    try:
        df = _load(spark, path, fmt, input_cfg["header"], input_cfg["delimiter"])
        names = df.columns
    except Exception as e:  # AnalysisException, or what Spark raises for unreadable files (py4j's, Connect's)
        raise InputError(f"cannot read input.path {path} as {fmt}: {spark_message(e)}") from None
    positional = fmt == "movielens" or (fmt == "csv" and not input_cfg["header"])
    if positional:
        if len(names) < 3:
            raise InputError(
                f"input {path} has {len(names)} column(s) per line; expected user, item, rating "
                f"separated by {input_cfg['delimiter'] if fmt == 'csv' else '::'!r}"
            )
        df = df.select(
            F.col(names[0]).alias(cols.user), F.col(names[1]).alias(cols.item), F.col(names[2]).alias(cols.rating)
        )
    if positional and cols.weight:
        raise InputError(f"input.weight_col needs named columns, but {fmt} input {path} has none (use a header)")
    missing = [c for c in cols.names if c not in df.columns]
    if missing:
        raise InputError(
            f"input {path} has no column {', '.join(map(repr, missing))}; its columns are {df.columns} "
            f"(set input.user_col, input.item_col, input.rating_col, input.weight_col)"
        )
    return df.select(*cols.names), cols


def spark_message(e: Exception) -> str:
    """Spark's message on one line: without py4j's preamble, Java class names or the JVM stack."""
    kept = []
    for line in str(e).splitlines():
        line = line.strip().removeprefix(": ")
        if line.startswith("An error occurred while calling") or not line:
            continue
        if line.startswith(("at ", "Caused by:", "JVM stacktrace:")):
            break
        kept.append(re.sub(r"^([\w$]+\.)+[\w$]*(Exception|Error): ", "", line))
    return " ".join(kept)[:600] or type(e).__name__
