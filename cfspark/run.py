"""A run of the job's config: read → split (→ fit → evaluate → write, in cfspark.job for now).

The data layer takes plain arguments; this module is where the job's config is turned into
them, so that nothing below the applications reads the config.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, SparkSession

from cfspark.config import Config
from cfspark.data.negatives import add_negatives
from cfspark.data.read import Columns, read_ratings
from cfspark.data.split import split_ratings
from cfspark.data.validate import validate_ratings


def load_ratings(spark: SparkSession, cfg: Config) -> tuple[DataFrame, Columns]:
    """Read and validate (for bce, labels or binarised ratings); cached."""
    threshold = cfg["input"]["binarize_threshold"]
    raw, cols = read_ratings(spark, cfg["input"])
    ratings = validate_ratings(
        raw, cols, id_type=cfg["input"]["id_type"], duplicates=cfg["input"]["duplicates"],
        labels=cfg["model"]["loss"] == "bce", binarize_threshold=None if math.isnan(threshold) else threshold,
    )  # fmt: skip
    return ratings.cache(), cols


def split_for_training(ratings: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """The hashed split, with sampled negatives added before it (scope all) or to train only."""
    neg, split = cfg["negatives"], cfg["split"]
    negatives = None
    if cfg["model"]["loss"] == "bce" and neg["per_positive"] > 0:
        negatives = add_negatives(ratings, per_positive=neg["per_positive"], sampling=neg["sampling"],
                                  seed=neg["seed"], only_new=True)  # fmt: skip
        if neg["scope"] == "all":
            ratings, negatives = ratings.unionByName(negatives), None
    train, test = split_ratings(ratings, test_fraction=split["test_fraction"], seed=split["seed"])
    if negatives is not None:
        train = train.unionByName(negatives)
    return train.cache(), test.cache()
