"""CFModel on disk: Parquet tables and a metadata row, all written and read through Spark.

    <path>/metadata/         one JSON text row: class, uid, Params (pyspark.ml's layout), and
                             cfspark's own fields (global baseline, fit summary, run metadata)
    <path>/user_factors/     (userCol, features, bias)
    <path>/item_factors/     (itemCol, features, bias)
    <path>/item_stats/       μ_i (mse) or the item positive rates and offsets (bce)
    <path>/training_pairs/   (userCol, itemCol, ratingCol): what recommendations exclude by default
    <path>/exposure/         bce with exposure: the exposure model, saved the same way (no training pairs)

The metadata row holds the model's Params and its rank (in paramMap, where ALS's rank
would be). The reader sets the Params the model has and passes over any other, so models
saved with more Params (every estimator Param, before the model's own were split off) load.

Nothing goes through the driver's local file system, so the same code saves to a local
path, HDFS or S3, and over Spark Connect. The metadata is pyspark.ml's own layout, so a
Pipeline holding a CFModel saves and loads it as one of its stages. The metadata row is
written last: a save that fails half-way leaves no loadable model behind. It also holds each
table's row count and part files, which the reader checks, so a model with a part file
missing, truncated or replaced is refused with one line rather than loaded with rows lost.
An overwrite replaces a saved model, or a half-saved one, and refuses a path that holds
other files.
"""

from __future__ import annotations

import json
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.ml.util import DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import DataFrame
from pyspark.sql.utils import is_remote

from cfspark.core.fs import finite_json, normalise, scheme, split_uri, within
from cfspark.core.schema import ITEM, RATING, USER, renamed
from cfspark.data.read import spark_message
from cfspark.train.trainer import checkpoint_level

FORMAT_VERSION = 1
# A model's tables, as attributes of CFModel.
MODEL_TABLES = ("user_factors", "item_factors", "item_stats", "training_pairs")
# cfspark's own metadata fields; the rest is the job's run record
_OWN_FIELDS = ("format_version", "global_baseline", "tables", "parts", "summary", "exposure")


class CFModelWriter(MLWriter):
    """model.write().overwrite().save(path); .metadata(dict) adds fields (the job's run record).

    parts, {"exposure": model} for an exposure-aware model, are saved the same way in a
    folder of their own below path."""

    def __init__(self, instance, parts: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.instance = instance
        self.parts = parts or {}
        self.extra: dict[str, Any] = {}

    def metadata(self, extra: dict[str, Any]) -> CFModelWriter:
        self.extra = dict(extra)
        return self

    def save(self, path: str) -> None:
        if self.shouldOverwrite:
            _refuse_foreign(self.sparkSession, path)
            self._hold_tables_read_from(path)
        # pyspark's overwrite deletes the path through the JVM, which Spark Connect has no
        # handle on; there, each table is overwritten in place instead.
        if self.shouldOverwrite and not is_remote():
            self._handleOverwrite(path)
        elif not self.shouldOverwrite and _holds_files(self.sparkSession, path):
            # As pyspark.ml's writers do: never write a model's tables beside files already there.
            raise FileExistsError(f"{path} already exists; to replace it, use write().overwrite().save(path)")
        self.saveImpl(path)

    def _hold_tables_read_from(self, path: str) -> None:
        """A loaded model saved back over its own path (after a fold-in, say) reads its tables
        from the files the overwrite deletes first: each such table is materialised in Spark's
        block store before, and the model keeps that copy, so that the save writes it whole
        and the model stays usable, even if the save then fails."""
        target = normalise(path)
        level = checkpoint_level(self.sparkSession)
        for model in (self.instance, *self.parts.values()):
            for name in MODEL_TABLES:
                df = getattr(model, name)
                if df is not None and any(_below(f, target) for f in df.inputFiles()):
                    setattr(model, name, df.localCheckpoint(eager=True, storageLevel=level))

    def saveImpl(self, path: str) -> None:
        model, spark = self.instance, self.sparkSession
        mode = "overwrite" if self.shouldOverwrite else "error"
        tables = {
            "user_factors": model._named(model.user_factors),  # cfspark's tables, whatever outputStyle shows
            "item_factors": model._named(model.item_factors),
            "item_stats": model.itemStats,
            "training_pairs": None if model.training_pairs is None else model._named(model.training_pairs),
        }
        if model.training_pairs is not None:
            tables["training_pairs"] = tables["training_pairs"].withColumnRenamed(RATING, model.getRatingCol())
        parts = {}
        for name, df in tables.items():
            if df is not None:
                df.write.mode(mode).parquet(f"{path}/{name}")
                parts[name] = _inventory(spark.read.parquet(f"{path}/{name}"))
        for name, part in self.parts.items():  # before the metadata row: a half-saved model is never loadable
            writer = part.write().session(spark)
            (writer.overwrite() if self.shouldOverwrite else writer).saveImpl(f"{path}/{name}")
        extra = finite_json(
            {
                "cfspark": {
                    "format_version": FORMAT_VERSION,
                    "global_baseline": model.global_baseline,
                    "tables": [name for name, df in tables.items() if df is not None],
                    "parts": parts,
                    "exposure": "exposure" in self.parts,
                    "summary": model.summary,
                    **self.extra,
                }
            }
        )
        params = {**{p.name: v for p, v in model._paramMap.items()}, "rank": model.rank}
        text = DefaultParamsWriter._get_metadata_to_save(model, spark, extraMetadata=extra, paramMap=params)
        spark.createDataFrame([(text,)], "value string").coalesce(1).write.mode(mode).text(f"{path}/metadata")


def _below(file: str, folder: str) -> bool:
    """file (a URI, as inputFiles gives it) lies in folder (normalised); a folder given
    without a scheme is compared with the file's path alone (Spark's default file system)."""
    return within(_comparable(file, folder), folder)


def _comparable(file: str, folder: str) -> str:
    """file normalised, without its scheme and host where folder (normalised) has none."""
    here = normalise(file)
    return here if scheme(folder) else split_uri(here)[2]


# What a model's save writes below its path: its tables, its exposure part and its metadata row.
_SAVED_NAMES = frozenset((*MODEL_TABLES, "exposure", "metadata"))


def _refuse_foreign(spark, path: str) -> None:
    """Refuse an overwrite of a path that holds files but no saved model.

    pyspark.ml's overwrite deletes whatever the path holds, so a mistyped path (a home
    folder, a table's root) would be lost whole. A path may be replaced when its metadata
    row reads as a saved pyspark.ml stage's (a cfspark model, an ALS model, a pipeline), or
    when every file below it lies in a folder that a model's save writes (a save that failed
    before its metadata row); a missing or empty path is written as a fresh one."""
    target = normalise(path)
    tops = {f: _top_name(f, target) for f in _paths_below(spark, path)}
    foreign = [f for f, top in tops.items() if top not in _SAVED_NAMES]  # in _paths_below's order
    if not foreign or ("metadata" in tops.values() and _is_saved_stage(spark, path)):
        return
    raise FileExistsError(
        f"{path} holds {len(foreign)} file(s) that are not part of a saved model, e.g. {foreign[0]}; overwrite "
        "replaces only a saved model: delete the folder yourself, or save to another path"
    )


def _top_name(file: str, folder: str) -> str:
    """The name of the entry directly below folder (normalised) that holds file."""
    return _comparable(file, folder)[len(folder.rstrip("/")) :].lstrip("/").split("/", 1)[0]


def _is_saved_stage(spark, path: str) -> bool:
    """path's metadata row reads as pyspark.ml's (a class and a uid)."""
    try:
        meta = read_metadata(spark, path)
    except ValueError:  # no metadata row, or one that is not JSON (json.JSONDecodeError is a ValueError)
        return False
    return isinstance(meta, dict) and "class" in meta and "uid" in meta


def _file_names(df: DataFrame) -> list[str]:
    """The names of the files a table read from a folder is made of (no job runs)."""
    return sorted(f.rstrip("/").rsplit("/", 1)[-1] for f in df.inputFiles())


def _inventory(df: DataFrame) -> dict[str, Any]:
    """What the metadata records of a written table: its row count and its files."""
    return {"rows": df.count(), "files": _file_names(df)}


def _checked_table(spark, path: str, name: str, saved: dict[str, Any] | None) -> DataFrame:
    """path/name as written, or a one-line ValueError: a part file missing, unreadable, or
    rows that differ from the count saved in the metadata. (Models saved without an
    inventory are read as they are.)"""
    where = f"{path}/{name}"
    try:
        df = spark.read.parquet(where)
        if saved is None:
            return df
        _refuse_missing(path, name, saved, _file_names(df))
        rows = df.count()
    except ValueError:
        raise
    except Exception as e:  # Spark's errors for a missing folder or a damaged Parquet file
        if saved is not None:  # a table whose every part is gone cannot be read at all
            _refuse_missing(path, name, saved, _parquet_files(spark, where))
        raise ValueError(f"the saved model {path} is damaged: {name} cannot be read: {spark_message(e)}") from None
    if rows != saved["rows"]:
        raise ValueError(f"the saved model {path} is damaged: {name} holds {rows} rows, but {saved['rows']} were saved")
    return df


def _refuse_missing(path: str, name: str, saved: dict[str, Any], present: list[str]) -> None:
    missing = sorted(set(saved["files"]) - set(present))
    if missing:
        raise ValueError(
            f"the saved model {path} is incomplete: {name} lacks {len(missing)} of its "
            f"{len(saved['files'])} part files, e.g. {missing[0]}"
        )


def _parquet_files(spark, folder: str) -> list[str]:
    """The names of the Parquet files in folder, listed through Spark (none if it is gone)."""
    try:
        found = spark.read.format("binaryFile").option("pathGlobFilter", "*.parquet").load(folder)
        return sorted(r[0].rstrip("/").rsplit("/", 1)[-1] for r in found.select("path").collect())
    except AnalysisException:
        return []


def _holds_files(spark, path: str) -> bool:
    """Whether path is a file or a folder with a file anywhere below it."""
    return bool(_paths_below(spark, path, limit=1))


def _paths_below(spark, path: str, limit: int | None = None) -> list[str]:
    """The files below path (path itself if it is a file; Spark skips names starting with _
    or .), at most limit of them, asked through Spark (any file system, Spark Connect too):
    none for a missing path, which is "not found" when it is resolved.

    The path is given twice. Given one path, Spark first looks in it for a streaming sink's
    metadata log, and for a path that does not exist it logs a WARN with a stack trace
    (FileStreamSink: "Assume no metadata directory") before the "not found" that answers the
    question; a model saved to a fresh path would log one in every good run. With more than
    one path Spark skips that look and only lists them, so a missing path is just "not found".
    """
    try:
        found = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load([path, path])
        found = found.select("path") if limit is None else found.select("path").limit(limit)
        return sorted({r[0] for r in found.collect()})
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e.getCondition()) or "Path does not exist" in str(e):
            return []
        raise


def read_metadata(spark, path: str) -> dict:
    """The metadata row of a saved model, parsed: pyspark.ml's fields and cfspark's own."""
    try:
        rows = spark.read.text(f"{path}/metadata").collect()
    except Exception as e:  # no such folder, or one Spark cannot list
        raise ValueError(f"{path} holds no saved CFModel: {spark_message(e)}") from None
    if len(rows) != 1:
        raise ValueError(f"{path}/metadata holds {len(rows)} rows, expected 1: not a saved CFModel")
    return json.loads(rows[0][0])


def _set_params(model, meta: dict) -> None:
    """The saved Params that the model has, set as they were saved (set, or default)."""
    for name, value in meta["paramMap"].items():
        if model.hasParam(name):
            model.set(model.getParam(name), value)
    for name, value in meta["defaultParamMap"].items():
        if model.hasParam(name):
            model._setDefault(**{name: value})


class CFModelReader(MLReader):
    """Loads a plain model, or an exposure-aware one when the metadata says it has that part."""

    def __init__(self, *, plain: type, exposure_aware: type) -> None:
        super().__init__()
        self.plain, self.exposure_aware = plain, exposure_aware

    def load(self, path: str):
        spark = self.sparkSession
        meta = read_metadata(spark, path)
        ours = meta.get("cfspark")
        if ours is None or ours.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a CFModel saved by this cfspark (format {FORMAT_VERSION})")
        model = (self.exposure_aware if ours.get("exposure") else self.plain)()
        model._resetUid(meta["uid"])
        _set_params(model, meta)
        model._rank = meta["paramMap"].get("rank", meta["defaultParamMap"].get("rank"))
        user, item = model.getUserCol(), model.getItemCol()

        def table(name: str) -> DataFrame | None:
            if name not in ours["tables"]:
                return None
            df = _checked_table(spark, path, name, ours.get("parts", {}).get(name))
            df = renamed(df, {user: USER, item: ITEM})
            return df.withColumnRenamed(model.getRatingCol(), RATING) if name == "training_pairs" else df

        model.user_factors = table("user_factors")
        model.item_factors = table("item_factors")
        model.item_stats = table("item_stats")
        model.training_pairs = table("training_pairs")
        model.global_baseline = ours["global_baseline"]
        model.summary = ours.get("summary", {})
        model.run_metadata = {k: v for k, v in ours.items() if k not in _OWN_FIELDS}
        if ours.get("exposure"):
            part = CFModelReader(plain=self.plain, exposure_aware=self.exposure_aware)
            model.exposure_model = part.session(spark).load(f"{path}/exposure")
        return model
