"""CFModel: the learned tables, prediction, recommendation, save and load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.blocks.build import Blocks
from cfspark.data.read import Columns
from cfspark.factors import dot
from cfspark.fs import is_local, local_path, write_json
from cfspark.recommend import recommend_all
from cfspark.schema import BIAS, FEATURES, ITEM, ITEM_MEAN, ITEM_OFFSET, USER
from cfspark.train.trainer import TrainResult

# Per loss: the item table's name on disk, its baseline column, and the link to a score.
ITEM_TABLE = {"mse": "item_means", "bce": "item_offsets"}
BASELINE_COL = {"mse": ITEM_MEAN, "bce": ITEM_OFFSET}
LINK = {"mse": "identity", "bce": "sigmoid"}


def apply_link(z: Column, loss: str) -> Column:
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-z)) if LINK[loss] == "sigmoid" else z


@dataclass
class CFModel:
    """A fitted model. Tables use cfspark's internal names (user, item); the public
    accessors and everything written out use the caller's own column names.

    mse predicts w_j·x_i + b_j + c_i + μ_i; bce predicts P(y=1) = σ(w_j·x_i + b_j + c_i + o_i),
    where c_i is the learned item bias (0 when it is off). A user unseen in training gets
    the item term alone (μ_i + c_i, or σ(o_i + c_i)); an item unseen in training gets the
    global one (the global mean, or the global positive rate). No prediction is NaN.
    """

    user_factors: DataFrame  # (user, features, bias): b
    item_factors: DataFrame  # (item, features, bias): c
    item_stats: DataFrame  # mse: (item, item_mean); bce: (item, positives, labelled, positive_rate, item_offset)
    global_baseline: float  # the global mean (mse), or logit of the global positive rate (bce)
    rank: int
    columns: Columns
    loss: str = "mse"
    prediction_col: str = "prediction"
    blocks: Blocks | None = None  # present after fit: needed to exclude training items
    result: TrainResult | None = None
    reg_param: float | None = None  # the λ the factors were fitted with (chosen, under "auto")
    reg_path: list[dict] | None = None  # regParam = "auto": each λ tried and its validation score

    # -- public tables under the caller's column names ---------------------------------
    @property
    def userFactors(self) -> DataFrame:
        return self.user_factors.withColumnRenamed(USER, self.columns.user)

    @property
    def itemFactors(self) -> DataFrame:
        return self.item_factors.withColumnRenamed(ITEM, self.columns.item)

    @property
    def itemStats(self) -> DataFrame:
        """Item means (mse) or item offsets and positive rates (bce)."""
        return self.item_stats.withColumnRenamed(ITEM, self.columns.item)

    @property
    def history(self) -> list[dict]:
        return self.result.history if self.result else []

    # -- prediction ----------------------------------------------------------------------
    def predict_canonical(self, pairs: DataFrame) -> DataFrame:
        """pairs with (user, item, ...) → the same rows plus the prediction column."""
        w = self.user_factors.select(USER, F.col(FEATURES).alias("_w"), F.col(BIAS).alias("_b"))
        x = self.item_factors.select(ITEM, F.col(FEATURES).alias("_x"), F.col(BIAS).alias("_c"))
        base = self.item_stats.select(ITEM, F.col(BASELINE_COL[self.loss]).alias("_base"))
        joined = pairs.join(w, USER, "left").join(x, ITEM, "left").join(base, ITEM, "left")
        interaction = F.coalesce(dot(F.col("_w"), F.col("_x")) + F.col("_b"), F.lit(0.0))
        item_term = F.coalesce(F.col("_c"), F.lit(0.0)) + F.coalesce(F.col("_base"), F.lit(self.global_baseline))
        z = interaction + item_term
        return joined.withColumn(self.prediction_col, apply_link(z, self.loss)).drop("_w", "_b", "_x", "_c", "_base")

    def transform(self, dataset: DataFrame) -> DataFrame:
        """Add the prediction column to a DataFrame with the user and item columns."""
        canonical = dataset.withColumnRenamed(self.columns.user, USER).withColumnRenamed(self.columns.item, ITEM)
        out = self.predict_canonical(canonical)
        return out.withColumnRenamed(USER, self.columns.user).withColumnRenamed(ITEM, self.columns.item)

    # -- recommendation ------------------------------------------------------------------
    def recommend_canonical(self, n: int, *, exclude: str = "labelled") -> DataFrame:
        if self.blocks is None or self.result is None:
            raise RuntimeError("recommendations need the training blocks: call this on a model returned by fit()")
        return recommend_all(
            self.blocks,
            self.result.user_state(),
            self.result.item_state(),
            rank=self.rank,
            n=n,
            link=LINK[self.loss],
            exclude=exclude,
        )

    def recommendForAllUsers(self, numItems: int, *, exclude: str = "labelled") -> DataFrame:
        """Flat table (user, item, rank, score): each trained user's best items.

        exclude: which training items are left out: labelled (all, the default), positives
        (bce: only label 1), or none. score is the predicted rating, or P(y=1) for bce.
        """
        recs = self.recommend_canonical(numItems, exclude=exclude)
        return recs.withColumnRenamed(USER, self.columns.user).withColumnRenamed(ITEM, self.columns.item)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str, metadata: dict | None = None) -> None:
        """Parquet tables under path/, plus metadata.json (local paths)."""
        self.userFactors.write.mode("overwrite").parquet(f"{path}/user_factors")
        self.itemFactors.write.mode("overwrite").parquet(f"{path}/item_factors")
        self.itemStats.write.mode("overwrite").parquet(f"{path}/{ITEM_TABLE[self.loss]}")
        meta = {
            "rank": self.rank,
            "loss": self.loss,
            "global_baseline": self.global_baseline,
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
            item_stats=spark.read.parquet(f"{path}/{ITEM_TABLE[meta['loss']]}").withColumnRenamed(cols.item, ITEM),
            global_baseline=meta["global_baseline"],
            rank=meta["rank"],
            columns=cols,
            loss=meta["loss"],
        )

    def unpersist(self) -> None:
        """Drop every cached table this model holds."""
        for df in (self.user_factors, self.item_factors, self.item_stats):
            df.unpersist()
        if self.blocks:
            self.blocks.unpersist()
        if self.result:
            self.result.user_out.unpersist()
            self.result.item_out.unpersist()
