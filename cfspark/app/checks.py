"""The train job's checks of config against things outside it: a warm start's model before
any data is read, and sizes (rank, top_n) against the data once it is read. Each failure is a
ConfigError (exit 2) of one line, before anything is trained or written.
"""

from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.app.config import Config, load_defaults
from cfspark.core.errors import ConfigError
from cfspark.core.schema import ITEM, USER
from cfspark.kernels.block import TILE

# What one Python task may allocate for a fit's factors and Gram matrices, when Spark does not
# say (spark.executor.pyspark.memory): a quarter of this machine's memory.
_FALLBACK_FRACTION = 4


def check_warm_start(spark: SparkSession, cfg: Config) -> None:
    """model.warm_start names a model that loads whole, of model.loss and of at most model.rank
    (automatic λ may have kept fewer directions: the warm start keeps its model's rank)."""
    path = cfg["model"]["warm_start"]
    if not path:
        return
    from cfspark.ml.model import CFModel

    try:
        earlier = CFModel.load(path)
    except Exception as e:  # ValueError from the reader's checks, or Spark's own
        raise ConfigError(f"model.warm_start {path} cannot be loaded: {_one_line(e)}") from None
    model = cfg["model"]
    if earlier.rank > model["rank"]:
        raise ConfigError(
            f"model.warm_start {path} has rank {earlier.rank}, above model.rank = {model['rank']}: "
            "a warm start keeps its model's rank, so model.rank must be at least that"
        )
    if earlier.getLoss() != model["loss"]:
        raise ConfigError(
            f"model.warm_start {path} was fitted with model.loss = {earlier.getLoss()!r}, "
            f"but model.loss is {model['loss']!r}"
        )


def check_sizes(spark: SparkSession, cfg: Config, ratings: DataFrame) -> None:
    """model.rank, output.top_n and output.similar_items against the data: a rank above
    min(#users, #items) adds nothing the data can fit, a top_n above #items asks for more items
    than there are, and similar_items above #items − 1 for more than an item has (itself is not
    among them). Each is refused once it is also above its shipped default, so the defaults run
    on any data. A rank whose Gram matrices would not fit in a task's memory is refused too. At
    or below the defaults nothing is counted (no Spark job)."""
    defaults = load_defaults()
    rank, top_n, similar = cfg["model"]["rank"], cfg["output"]["top_n"], cfg["output"]["similar_items"]
    if rank <= defaults["model"]["rank"] and top_n <= defaults["output"]["top_n"] and similar == 0:
        return
    counts = ratings.agg(F.count_distinct(USER).alias("users"), F.count_distinct(ITEM).alias("items")).first()
    users, items = counts["users"], counts["items"]
    if rank > min(users, items) and rank > defaults["model"]["rank"]:
        raise ConfigError(
            f"model.rank = {rank} is above the data's {users} users and {items} items: a rank above "
            f"min(#users, #items) = {min(users, items)} fits nothing more"
        )
    if top_n > items and top_n > defaults["output"]["top_n"]:
        raise ConfigError(f"output.top_n = {top_n} is above the data's {items} items: there are not that many")
    if similar > items - 1:
        raise ConfigError(
            f"output.similar_items = {similar} is above the data's {items} items less the item itself: "
            "there are not that many"
        )
    need, budget = fit_bytes(rank, users, items), task_memory(spark)
    if need > budget:
        raise ConfigError(
            f"model.rank = {rank} needs about {_size(need)} per task for the Gram matrices of {users} users and "
            f"{items} items, more than the {_size(budget)} a task may use: lower model.rank"
        )


def fit_bytes(rank: int, users: int, items: int) -> int:
    """What one task of a fit allocates at once whatever the blocks: a tile's Gram matrices,
    one per row of up to TILE rows, rank × rank float64 each (kernels/block.py)."""
    return 8 * rank * rank * min(TILE, max(users, items))


def task_memory(spark: SparkSession) -> int:
    """spark.executor.pyspark.memory if set, else a share of this machine's memory."""
    conf = spark.conf.get("spark.executor.pyspark.memory", None)
    if conf:
        return _parse_bytes(conf)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // _FALLBACK_FRACTION


def _parse_bytes(text: str) -> int:
    """Spark's sizes: 512m, 4g, 2t (a bare number is mebibytes, as Spark reads this key)."""
    text = text.strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * 2**20)


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _one_line(e: Exception) -> str:
    from cfspark.data.read import spark_message

    return str(e) if isinstance(e, ValueError) and "\n" not in str(e) else spark_message(e)
