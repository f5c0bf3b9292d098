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
from cfspark.core.schema import column

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
    lines = spark.read.text(path).filter(F.trim("value") != "")
    parts = F.split(F.col("value"), "::")
    short = lines.filter(F.size(parts) < 3)
    first = short.limit(1).collect()
    if first:
        raise InputError(
            f"input {path} is not in the movielens format (user::item::rating...): {short.count()} of "
            f"{lines.count()} line(s) have fewer than 3 '::'-separated fields, e.g. {first[0][0]!r} "
            '(for a tab or comma separated file, set input.format = "csv" and input.delimiter)'
        )
    return lines.select(parts[0].alias("_c0"), parts[1].alias("_c1"), parts[2].alias("_c2"))


_PARQUET_MAGIC = b"PAR1"


def _data_files(folder: str) -> list[str]:
    """The files Spark reads in a local folder: every file below it, except hidden ones
    (names starting with "." or "_", such as _SUCCESS and .crc files)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith((".", "_"))]
    return found


def _is_parquet(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _PARQUET_MAGIC


def check_one_format(path: str, fmt: str) -> None:
    """A local input folder must hold files of one kind: Parquet files read as text (or text
    read as Parquet) give garbage rows or a Parquet reader's error, not a message."""
    if "://" in path or not os.path.isdir(path):
        return
    files = _data_files(path)
    parquet = [f for f in files if _is_parquet(f)]
    other = [f for f in files if f not in set(parquet)]
    if parquet and other:
        names = [os.path.relpath(f, path) for f in (parquet[0], other[0])]
        raise InputError(
            f"input.path {path} mixes Parquet files ({len(parquet)}, e.g. {names[0]}) with other files "
            f"({len(other)}, e.g. {names[1]}); read as {fmt}, one kind would be misread: keep one format per folder"
        )


def read_ratings(spark: SparkSession, input_cfg: dict) -> tuple[DataFrame, Columns]:
    """Return the raw ratings with the user's column names, before any validation."""
    cols = Columns(input_cfg["user_col"], input_cfg["item_col"], input_cfg["rating_col"], input_cfg["weight_col"])
    path, fmt = input_cfg["path"], input_cfg["format"]
    if not path:
        path, fmt = default_ratings_path(), "movielens"
    if "://" not in path and not os.path.exists(path):
        raise InputError(f"input.path {path} does not exist")
    check_one_format(path, fmt)
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
            column(names[0]).alias(cols.user), column(names[1]).alias(cols.item), column(names[2]).alias(cols.rating)
        )
    if positional and cols.weight:
        raise InputError(f"input.weight_col needs named columns, but {fmt} input {path} has none (use a header)")
    missing = [c for c in cols.names if c not in df.columns]
    if missing:
        raise InputError(
            f"input {path} has no column {', '.join(map(repr, missing))}; its columns are {df.columns} "
            f"(set input.user_col, input.item_col, input.rating_col, input.weight_col)"
        )
    return df.select(*map(column, cols.names)), cols


def spark_message(e: Exception) -> str:
    """Spark's message on one line: without py4j's preamble, Java class names or the JVM stack."""
    text = str(e)
    cause = python_cause(text)
    if cause:
        return cause
    kept = []
    for line in text.splitlines():
        line = line.strip().removeprefix(": ")
        if line.startswith("An error occurred while calling") or not line:
            continue
        if line.startswith(("at ", "Caused by:", "JVM stacktrace:")):
            break
        kept.append(re.sub(r"^([\w$]+\.)+[\w$]*(Exception|Error): ", "", line))
    return " ".join(kept)[:600] or type(e).__name__


def python_cause(text: str) -> str:
    """The exception line that ends a Python worker's traceback inside a Spark error, e.g.
    "MemoryError: Unable to allocate 4.37 TiB for an array ...", or "" when there is none."""
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line)
    except ValueError:
        return ""
    for line in lines[start + 1 :]:
        if line.startswith(("\tat ", "JVM stacktrace:")) or line.strip().startswith("at org."):
            break
        if line and not line[0].isspace() and not line.startswith("Traceback"):
            return re.sub(r"^([\w$]+\.)+(?=[\w$]+: )", "", line.strip())[:600]
    return ""
