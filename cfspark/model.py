"""CFModel: the learned tables, prediction, recommendation, save and load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.data.normalise import ITEM_MEAN
from cfspark.data.read import Columns
from cfspark.data.validate import ITEM, USER
from cfspark.factors import BIAS, FEATURES, dot
from cfspark.fs import is_local, local_path, write_json
from cfspark.recommend import RANK, SCORE, recommend_all
from cfspark.train.trainer import TrainResult

TABLES = ("user_factors", "item_factors", "item_means")


@dataclass
class CFModel:
    """A fitted model. Tables use cfspark's internal names (user, item); the public
    accessors and everything written out use the caller's own column names.

    Prediction is w_j·x_i + b_j + μ_i. A user unseen in training gets μ_i, an item
    unseen in training gets the global training mean, so no prediction is NaN.
    """

    user_factors: DataFrame  # (user, features, bias)
    item_factors: DataFrame  # (item, features)
    item_means: DataFrame  # (item, item_mean)
    global_mean: float
    rank: int
    columns: Columns
    loss: str = "mse"
    prediction_col: str = "prediction"
    blocks: Blocks | None = None  # present after fit: needed to exclude training items
    result: TrainResult | None = None

    # -- public tables under the caller's column names ---------------------------------
    @property
    def userFactors(self) -> DataFrame:  # noqa: N802 (pyspark.ml naming)
        return self.user_factors.withColumnRenamed(USER, self.columns.user)

    @property
    def itemFactors(self) -> DataFrame:  # noqa: N802
        return self.item_factors.withColumnRenamed(ITEM, self.columns.item)

    @property
    def itemMeans(self) -> DataFrame:  # noqa: N802
        return self.item_means.withColumnRenamed(ITEM, self.columns.item)

    @property
    def history(self) -> list[dict]:
        return self.result.history if self.result else []

    # -- prediction ----------------------------------------------------------------------
    def predict_canonical(self, pairs: DataFrame) -> DataFrame:
        """pairs with (user, item, ...) → the same rows plus the prediction column."""
        w = self.user_factors.select(USER, F.col(FEATURES).alias("_w"), F.col(BIAS).alias("_b"))
        x = self.item_factors.select(ITEM, F.col(FEATURES).alias("_x"))
        mu = self.item_means.select(ITEM, F.col(ITEM_MEAN).alias("_mu"))
        joined = pairs.join(w, USER, "left").join(x, ITEM, "left").join(mu, ITEM, "left")
        interaction = F.coalesce(dot(F.col("_w"), F.col("_x")) + F.col("_b"), F.lit(0.0))
        prediction = interaction + F.coalesce(F.col("_mu"), F.lit(self.global_mean))
        return joined.withColumn(self.prediction_col, prediction).drop("_w", "_b", "_x", "_mu")

    def transform(self, dataset: DataFrame) -> DataFrame:
        """Add the prediction column to a DataFrame with the user and item columns."""
        canonical = dataset.withColumnRenamed(self.columns.user, USER).withColumnRenamed(self.columns.item, ITEM)
        out = self.predict_canonical(canonical)
        return out.withColumnRenamed(USER, self.columns.user).withColumnRenamed(ITEM, self.columns.item)

    # -- recommendation ------------------------------------------------------------------
    def recommend_canonical(self, n: int) -> DataFrame:
        if self.blocks is None or self.result is None:
            raise RuntimeError("recommendations need the training blocks: call this on a model returned by fit()")
        return recommend_all(self.blocks, self.result, rank=self.rank, n=n)

    def recommendForAllUsers(self, numItems: int) -> DataFrame:  # noqa: N802, N803
        """Flat table (user, item, rank, score): each trained user's best unrated items."""
        recs = self.recommend_canonical(numItems)
        return recs.withColumnRenamed(USER, self.columns.user).withColumnRenamed(ITEM, self.columns.item)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str, metadata: dict | None = None) -> None:
        """Parquet tables under path/, plus metadata.json (local paths)."""
        self.userFactors.write.mode("overwrite").parquet(f"{path}/user_factors")
        self.itemFactors.write.mode("overwrite").parquet(f"{path}/item_factors")
        self.itemMeans.write.mode("overwrite").parquet(f"{path}/item_means")
        meta = {
            "rank": self.rank,
            "loss": self.loss,
            "global_mean": self.global_mean,
            "columns": {"user": self.columns.user, "item": self.columns.item, "rating": self.columns.rating},
            **(metadata or {}),
        }
        if is_local(path):
            write_json(os.path.join(local_path(path), "metadata.json"), meta)

    @classmethod
    def load(cls, spark: SparkSession, path: str) -> CFModel:
        """Tables and metadata written by save(); prediction works, recommendation needs fit()."""
        with open(os.path.join(local_path(path), "metadata.json")) as f:
            meta = json.load(f)
        cols = Columns(**meta["columns"])
        return cls(
            user_factors=spark.read.parquet(f"{path}/user_factors").withColumnRenamed(cols.user, USER),
            item_factors=spark.read.parquet(f"{path}/item_factors").withColumnRenamed(cols.item, ITEM),
            item_means=spark.read.parquet(f"{path}/item_means").withColumnRenamed(cols.item, ITEM),
            global_mean=meta["global_mean"],
            rank=meta["rank"],
            columns=cols,
            loss=meta["loss"],
        )

    def unpersist(self) -> None:
        """Drop every cached table this model holds."""
        for df in (self.user_factors, self.item_factors, self.item_means):
            df.unpersist()
        if self.blocks:
            self.blocks.unpersist()
        if self.result:
            self.result.user_out.unpersist()
            self.result.item_out.unpersist()


__all__ = ["CFModel", "RANK", "SCORE", "TABLES"]
