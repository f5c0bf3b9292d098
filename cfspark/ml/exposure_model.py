"""ExposureAwareModel: a bce model with an exposure part, which ranks by P(exposed)·P(like | shown).

Its own factors are the preference model's, P(like | shown); exposure_model, a CFModel
whose predictions are P(exposed), is the exposure part. Each method here adds that part to
what CFModel does, so CFModel itself never asks whether it has one.
"""

from __future__ import annotations

import dataclasses

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, P_EXPOSED, P_LIKE, RANK, SCORE, USER
from cfspark.fit.settings import Earlier
from cfspark.ml.model import NO_FOLD_IN, CFModel
from cfspark.ml.model_io import CFModelWriter


class ExposureAwareModel(CFModel):
    """A CFModel of P(like | shown) with exposure_model, the CFModel of P(exposed).

    transform adds p_exposed and score (their product) beside the prediction, P(like | shown);
    recommendations rank by score and carry both parts (p_like, p_exposed).
    """

    def earlier(self) -> Earlier:
        return dataclasses.replace(super().earlier(), exposure=self.exposure_model.earlier())

    def predict_canonical(self, pairs: DataFrame, *, cold_start: str = "mean") -> DataFrame:
        """P(like | shown) in the prediction column, P(exposed) beside it, and their product, the score."""
        out = super().predict_canonical(pairs, cold_start=cold_start)
        out = self.exposure_model.predict_canonical(out, cold_start="mean")
        return out.withColumn(SCORE, F.col(self.getPredictionCol()) * F.col(self.exposure_model.getPredictionCol()))

    def _extra_columns(self) -> list[str]:
        return [P_EXPOSED, SCORE]

    def _vectors(self) -> tuple[DataFrame, DataFrame]:
        """Each _v is this model's vector followed by the exposure part's: two logits that
        top-N's "sigmoid_product" link turns into σ(first)·σ(second)."""
        users, items = super()._vectors()
        exposed_users, exposed_items = self.exposure_model._vectors()

        def both(mine: DataFrame, theirs: DataFrame, key: str) -> DataFrame:
            joined = mine.join(theirs.withColumnRenamed("_v", "_e"), key)
            return joined.select(key, F.concat(F.col("_v"), F.col("_e")).alias("_v"))

        return both(users, exposed_users, USER), both(items, exposed_items, ITEM)

    def _link(self) -> str:
        return "sigmoid_product"

    def _with_probabilities(self, recs: DataFrame) -> DataFrame:
        parts = self.predict_canonical(recs.select(USER, ITEM, RANK, F.col(SCORE).alias("_score")))
        return parts.select(
            USER, ITEM, RANK, F.col("_score").alias(SCORE), F.col(self.getPredictionCol()).alias(P_LIKE),
            F.col(self.exposure_model.getPredictionCol()).alias(P_EXPOSED),
        )  # fmt: skip

    def foldIn(self, dataset: DataFrame) -> CFModel:
        raise ValueError(NO_FOLD_IN)

    def write(self) -> CFModelWriter:
        return CFModelWriter(self, parts={"exposure": self.exposure_model})

    def unpersist(self) -> None:
        """Drop every cached table this model holds, its exposure part's too."""
        self.exposure_model.unpersist()
        super().unpersist()
