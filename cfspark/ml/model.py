"""CFModel: a fitted model that stands alone.

It holds the factor tables, the item baselines, its Params and a summary of the fit,
and (by default) the training pairs it excludes from recommendations. It holds no
training blocks and no training state, so it predicts and recommends the same after
save and load, in another session, or after the fit's checkpoints are gone. A model with
an exposure part is an ExposureAwareModel (exposure_model.py).

About 470 lines: the pyspark.ml model API (transform, four recommendFor* methods, four
similar* methods, ALS's output style, foldIn, save and load) is one class's, as ALSModel's
is; the work is in fit/predict.py, ml/ids.py, ml/recommend.py, ml/similar.py,
train/foldin.py and ml/model_io.py.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.core.schema import (
    BASELINE,
    BIAS,
    CALLER_ROW,
    FEATURES,
    ITEM,
    P_EXPOSED,
    P_LIKE,
    RANK,
    RATING,
    SCORE,
    USER,
    column,
    renamed,
)
from cfspark.data.read import Columns
from cfspark.data.validate import require_columns, validate_given
from cfspark.fit.predict import LINK, item_baseline, predict
from cfspark.fit.record import FitRecord
from cfspark.fit.settings import Earlier
from cfspark.ml.ids import as_model_ids
from cfspark.ml.model_io import MODEL_TABLES, CFModelReader, CFModelWriter
from cfspark.ml.params import _CFModelParams
from cfspark.ml.recommend import check_count, nested, top_n
from cfspark.ml.similar import most_similar
from cfspark.train.foldin import fold_in
from cfspark.train.step import StepConfig

log = logging.getLogger("cfspark")

TRAINING = "training"  # exclude=TRAINING: the pairs the model was fitted on (cfspark's default)
BY_STYLE = "default"  # exclude's default: TRAINING under outputStyle "cfspark", nothing under "als", as ALS
ALS_ID, ALS_RATING = "id", "rating"  # ALS's names: the factor tables' id, a recommendation's score
NO_FOLD_IN = "foldIn does not fold users into an exposure model yet; fit with exposure=False to fold in"


class CFModel(Model, _CFModelParams, MLWritable, MLReadable):
    """A fitted collaborative filter (see CollaborativeFilter for the Params; a model holds
    those of _CFModelParams, and its rank).

    mse predicts w_j·x_i + b_j + c_i + μ_i; bce predicts P(y=1) = σ(w_j·x_i + b_j + c_i + o_i),
    where c_i is the learned item bias (0 when it is off). With coldStartStrategy "mean"
    (the default), a user unseen in training gets the item term alone (μ_i + c_i, or
    σ(o_i + c_i)) and an item unseen in training the global one, so no prediction is NaN;
    "nan" gives NaN there, and "drop" drops those rows, as ALS does.

    Tables inside use cfspark's names (user, item); the public accessors, predictions and
    recommendations use the caller's userCol and itemCol.

    >>> import tempfile
    >>> from cfspark import CFModel, CollaborativeFilter
    >>> ratings = spark.createDataFrame(
    ...     [(u, i, float(1 + (u + 2 * i) % 5)) for u in range(20) for i in range(8) if (u * i) % 4],
    ...     ["user", "item", "rating"])
    >>> model = CollaborativeFilter(rank=3, maxIter=3).fit(ratings)
    >>> path = tempfile.mkdtemp() + "/model"
    >>> model.write().save(path)
    >>> loaded = CFModel.load(path)
    >>> sorted(loaded.recommendForAllUsers(2).collect()) == sorted(model.recommendForAllUsers(2).collect())
    True
    >>> newcomer = spark.createDataFrame([(100, 1, 5.0), (100, 2, 1.0)], ["user", "item", "rating"])
    >>> [r.item for r in loaded.foldIn(newcomer).recommendForUserSubset(newcomer, 8).collect()
    ...  if r.item in (1, 2)]  # what the newcomer rated is never recommended back
    []
    """

    # The exposure part, P(exposed): an ExposureAwareModel's (exposure_model.py); None here.
    exposure_model: CFModel | None = None

    def __init__(
        self,
        user_factors: DataFrame | None = None,
        item_factors: DataFrame | None = None,
        item_stats: DataFrame | None = None,
        global_baseline: float = 0.0,
        training_pairs: DataFrame | None = None,
        summary: dict | None = None,
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.user_factors = user_factors  # (user, features, bias): w_j and b_j
        self.item_factors = item_factors  # (item, features, bias): x_i and c_i
        self.item_stats = item_stats  # mse: (item, item_mean, ratings); bce: (item, …, item_offset)
        self.global_baseline = global_baseline  # the global mean (mse), or logit of the global rate (bce)
        self.training_pairs = training_pairs  # (user, item, rating): excluded from recommendations by default
        self.summary: dict[str, Any] = summary or {}  # history, reg, reg_path, stop_reason
        self.run_metadata: dict[str, Any] = {}  # what a job saved beside the model (config, counts, versions)
        self._rank = rank
        self._borrowed: set[str] = set()  # tables shared with the model this one was derived from

    @classmethod
    def from_record(cls, record: FitRecord, **parts: Any) -> CFModel:
        """A model of a fit's record (without Params: the estimator copies its own)."""
        model = cls(record.user_factors, record.item_factors, record.item_stats, record.global_baseline,
                    record.training_pairs, record.summary, rank=record.rank)  # fmt: skip
        for name, part in parts.items():
            setattr(model, name, part)
        return model

    @property
    def rank(self) -> int:
        """The number of latent features k, as ALSModel.rank."""
        return self._rank

    def getRank(self) -> int:
        return self._rank

    def setUserCol(self, value: str) -> CFModel:
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> CFModel:
        return self._set(itemCol=value)

    def setPredictionCol(self, value: str) -> CFModel:
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> CFModel:
        return self._set(coldStartStrategy=value)

    def setOutputStyle(self, value: str) -> CFModel:
        return self._set(outputStyle=value)

    def setBlockSize(self, value: int) -> CFModel:
        return self._set(blockSize=value)

    # -- public tables under the caller's column names ---------------------------------
    @property
    def userFactors(self) -> DataFrame:
        """(userCol, features, bias): each trained user's w_j and b_j. With outputStyle "als",
        ALS's (id, features), the biases folded in: features is [w_j, b_j, 1], so that its dot
        product with an item's features is the prediction (mse), or its logit (bce)."""
        if self.als_style():
            return self._als_factors(CFModel._vectors(self)[0], USER)
        return self.user_factors.withColumnRenamed(USER, self.getUserCol())

    @property
    def itemFactors(self) -> DataFrame:
        """(itemCol, features, bias): each trained item's x_i and c_i. With outputStyle "als",
        ALS's (id, features): features is [x_i, 1, c_i + μ_i] (bce: o_i in place of μ_i)."""
        if self.als_style():
            return self._als_factors(CFModel._vectors(self)[1], ITEM)
        return self.item_factors.withColumnRenamed(ITEM, self.getItemCol())

    @staticmethod
    def _als_factors(vectors: DataFrame, key: str) -> DataFrame:
        return vectors.select(F.col(key).alias(ALS_ID), F.col("_v").alias(FEATURES))

    @property
    def itemStats(self) -> DataFrame:
        """Item baselines: μ_i and the rating count (mse), or counts, positive rate and o_i (bce)."""
        return self.item_stats.withColumnRenamed(ITEM, self.getItemCol())

    @property
    def history(self) -> list[dict]:
        """One entry per training iteration: the training loss, seconds, and more."""
        return self.summary.get("history", [])

    # -- prediction ----------------------------------------------------------------------
    def predict_canonical(self, pairs: DataFrame, *, cold_start: str = "mean") -> DataFrame:
        """pairs with (user, item, ...) → the same rows plus the prediction column."""
        return predict(self, pairs, loss=self.getLoss(), prediction_col=self.getPredictionCol(), cold_start=cold_start)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        """Add the prediction column to a DataFrame with the user and item columns."""
        require_columns(dataset, (self.getUserCol(), self.getItemCol()))
        added = (self.getPredictionCol(), *self._extra_columns())
        taken = [c for c in added if c in dataset.columns]
        if taken:  # as Spark ALS refuses it: two columns of one name would make every later select ambiguous
            raise ValueError(f"the input already has a column {taken[0]!r}, which transform adds: drop or rename it")
        pairs = dataset.select(
            *self._ids(dataset, (USER, ITEM)), F.struct(*map(column, dataset.columns)).alias(CALLER_ROW)
        )
        out = self.predict_canonical(pairs, cold_start=self.getColdStartStrategy())
        row = F.col(CALLER_ROW)
        return out.select(*(row.getField(c).alias(c) for c in dataset.columns), *map(column, added))

    def _extra_columns(self) -> list[str]:
        """Columns transform adds besides the prediction."""
        return []

    def _canonical(self, df: DataFrame, sides: tuple[str, ...] = (USER, ITEM)) -> DataFrame:
        """The caller's columns of these sides (a subset's one, an exclusion's two), under
        cfspark's names, refused by name if missing; df's other columns (one called "user"
        among them) are not needed."""
        return df.select(*self._ids(df, sides))

    def _sides(self) -> dict[str, tuple[DataFrame, str]]:
        """Each side's factor table, whose id column holds the model's id type, and the
        caller's name for that id column."""
        return {USER: (self.user_factors, self.getUserCol()), ITEM: (self.item_factors, self.getItemCol())}

    def _ids(self, df: DataFrame, sides: tuple[str, ...]) -> list[Column]:
        """The caller's id columns of these sides, refused by name if missing, each as the
        model's id type under cfspark's name (ml/ids.py): null where an id cannot be one."""
        known = self._sides()
        require_columns(df, tuple(known[side][1] for side in sides))
        typed = {s: (df.schema[known[s][1]].dataType, known[s][0].schema[s].dataType) for s in sides}
        return [as_model_ids(column(known[s][1]), *typed[s], known[s][1]).alias(s) for s in sides]

    def _named(self, df: DataFrame) -> DataFrame:
        return renamed(df, {USER: self.getUserCol(), ITEM: self.getItemCol()})

    # -- recommendation ------------------------------------------------------------------
    def _vectors(self) -> tuple[DataFrame, DataFrame]:
        """(users with [w | b | 1], items with [x | 1 | c + baseline]) in _v: their dot product is the score."""
        users = self.user_factors.select(USER, F.concat(F.col(FEATURES), F.array(F.col(BIAS), F.lit(1.0))).alias("_v"))
        items = self.item_factors.join(item_baseline(self, self.getLoss()), ITEM, "left").select(
            ITEM,
            F.concat(
                F.col(FEATURES),
                F.array(F.lit(1.0), F.col(BIAS) + F.coalesce(F.col(BASELINE), F.lit(self.global_baseline))),
            ).alias("_v"),
        )
        return users, items

    def _exclusions(self, exclude: Any) -> DataFrame | None:
        if exclude is None:
            return None
        if isinstance(exclude, str):
            if exclude != TRAINING:
                raise ValueError(f'exclude must be a DataFrame, None or "{TRAINING}", got {exclude!r}')
            if self.training_pairs is None:
                log.warning("this model has no training pairs to exclude; recommending every item")
                return None
            return self.training_pairs.select(USER, ITEM)
        return exclude.select(USER, ITEM)

    def _theirs(self, exclude: Any) -> Any:
        """A caller's exclude DataFrame under cfspark's names (a word or None as it is; the
        style's default resolved: the training pairs, or none under ALS's style)."""
        if isinstance(exclude, str) and exclude == BY_STYLE:
            return None if self.als_style() else TRAINING
        return self._canonical(exclude) if isinstance(exclude, DataFrame) else exclude

    def recommend_canonical(
        self, n: int, *, subset: DataFrame | None = None, exclude: Any = TRAINING, by_item: bool = False
    ) -> DataFrame:
        """(user, item, rank, score) under cfspark's names: each user's n best items, or
        (by_item) each item's n best users. subset, a table of user (or item) ids, narrows the
        queries. exclude: "training", None, or a DataFrame of (user, item) under cfspark's names."""
        user_vecs, item_vecs = self._vectors()
        pairs = self._exclusions(exclude)
        if by_item:
            queries, candidates, q, c = item_vecs, user_vecs, ITEM, USER
        else:
            queries, candidates, q, c = user_vecs, item_vecs, USER, ITEM
        sizes = self.trained_counts()[::-1] if by_item else self.trained_counts()  # a subset is at most that many
        if subset is not None:
            queries = queries.join(subset.select(q).distinct(), q, "left_semi")
        recs = top_n(
            queries, candidates, n=n, query_col=q, candidate_col=c, query_vec=F.col("_v"),
            candidate_vec=F.col("_v"), exclude=pairs, link=self._link(), sizes=sizes,
        )  # fmt: skip
        return self._with_probabilities(recs.select(USER, ITEM, RANK, SCORE))

    def _link(self) -> str:
        return LINK[self.getLoss()]

    def _with_probabilities(self, recs: DataFrame) -> DataFrame:
        """bce: recommendations gain p_like, P(like | shown), and p_exposed, P(exposed), each
        null where the model has no such part (mse: neither column). A positive-only model's
        score is P(exposed); any other's is P(like | shown)."""
        if self.getLoss() != "bce":
            return recs
        missing = F.lit(None).cast("double")
        like, exposed = (missing, F.col(SCORE)) if self.summary.get("positive_only") else (F.col(SCORE), missing)
        return recs.select(USER, ITEM, RANK, SCORE, like.alias(P_LIKE), exposed.alias(P_EXPOSED))

    def trained_counts(self) -> tuple[int, int]:
        """(users, items) with factors: counted once, on the first recommendation, and kept in the summary."""
        if self.summary.get("num_users") is None or self.summary.get("num_items") is None:
            self.summary["num_users"] = self.user_factors.count()
            self.summary["num_items"] = self.item_factors.count()
        return self.summary["num_users"], self.summary["num_items"]

    def _public(self, recs: DataFrame, flat: bool | None, by_item: bool) -> DataFrame:
        named = self._named(recs)
        if flat or (flat is None and not self.als_style()):
            return named
        q, c = (self.getItemCol(), self.getUserCol()) if by_item else (self.getUserCol(), self.getItemCol())
        return nested(named, q, c, ALS_RATING if self.als_style() else SCORE)

    def recommendForAllUsers(self, numItems: int, exclude: Any = BY_STYLE, flat: bool | None = None) -> DataFrame:
        """Each trained user's numItems best items: a flat (user, item, rank, score) table,
        or nested, (user, recommendations: array<struct<item, score>>).

        exclude: "training" (the pairs this model was fitted on, remembered through save and
        load), a DataFrame of (userCol, itemCol) pairs, or None. score is the predicted rating
        (mse) or, for bce, P(exposed)·P(like | shown) (P(y=1) without an exposure model); bce
        adds p_like and p_exposed (null where the model has no such part).

        The defaults follow outputStyle: "cfspark" excludes the training pairs and is flat;
        "als" excludes nothing and nests as ALS does, the score named rating.
        """
        numItems = check_count(numItems, "numItems")
        return self._public(self.recommend_canonical(numItems, exclude=self._theirs(exclude)), flat, by_item=False)

    def recommendForUserSubset(
        self, dataset: DataFrame, numItems: int, exclude: Any = BY_STYLE, flat: bool | None = None
    ) -> DataFrame:
        """recommendForAllUsers for the users in dataset's userCol (users without factors get none)."""
        numItems = check_count(numItems, "numItems")
        users = self._canonical(dataset, (USER,))
        return self._public(
            self.recommend_canonical(numItems, subset=users, exclude=self._theirs(exclude)), flat, by_item=False
        )

    def recommendForAllItems(self, numUsers: int, exclude: Any = BY_STYLE, flat: bool | None = None) -> DataFrame:
        """Each trained item's numUsers best users, scored as recommendForAllUsers scores them."""
        numUsers = check_count(numUsers, "numUsers")
        return self._public(
            self.recommend_canonical(numUsers, exclude=self._theirs(exclude), by_item=True), flat, by_item=True
        )

    def recommendForItemSubset(
        self, dataset: DataFrame, numUsers: int, exclude: Any = BY_STYLE, flat: bool | None = None
    ) -> DataFrame:
        """recommendForAllItems for the items in dataset's itemCol."""
        numUsers = check_count(numUsers, "numUsers")
        items = self._canonical(dataset, (ITEM,))
        recs = self.recommend_canonical(numUsers, subset=items, exclude=self._theirs(exclude), by_item=True)
        return self._public(recs, flat, by_item=True)

    # -- similar items and users ---------------------------------------------------------
    def _similar(self, by_item: bool, k: int, subset: DataFrame | None) -> DataFrame:
        factors, key = (self.item_factors, ITEM) if by_item else (self.user_factors, USER)
        queries = None if subset is None else self._canonical(subset, (key,))
        size = self.trained_counts()[1 if by_item else 0]
        return self._named(most_similar(factors, key, k, queries=queries, size=size))

    def similarItems(self, dataset: DataFrame, k: int) -> DataFrame:
        """(itemCol, similar, rank, score): the k items most similar to each item in dataset's
        itemCol, by the cosine of their factors x (biases left out), the item itself excluded
        and ties going to the lower id. Items without factors get none."""
        return self._similar(True, k, dataset)

    def similarUsers(self, dataset: DataFrame, k: int) -> DataFrame:
        """(userCol, similar, rank, score): similarItems for the users in dataset's userCol, by their w."""
        return self._similar(False, k, dataset)

    def allSimilarItems(self, k: int) -> DataFrame:
        """similarItems for every item with factors, as recommendForAllItems is for every item."""
        return self._similar(True, k, None)

    def allSimilarUsers(self, k: int) -> DataFrame:
        """similarUsers for every user with factors."""
        return self._similar(False, k, None)

    # -- fold-in -------------------------------------------------------------------------
    def foldIn(self, dataset: DataFrame) -> CFModel:
        """A model that also knows the users of dataset (userCol, itemCol, ratingCol) whom
        this one has no factors for: each new user's w and b are solved against the fixed
        item factors, by the training kernel (one exact ridge step for mse, IRLS for bce).

        Users this model already knows keep their factors, and their rows in dataset are
        ignored; ratings of items it does not know carry no information about w and are
        ignored too. The new model excludes the new users' rated items as well.
        """
        if self.summary.get("positive_only"):
            raise ValueError(NO_FOLD_IN)
        cols = Columns(self.getUserCol(), self.getItemCol(), self.getRatingCol())
        ratings = self._in_trained_id_types(validate_given(dataset, cols, labels=self.getLoss() == "bce"))
        new = ratings.join(self.user_factors.select(USER), USER, "left_anti").cache()
        known = ratings.select(USER).distinct().count() - new.select(USER).distinct().count()
        if known:
            log.info("fold-in: %d users already have factors and keep them", known)
        reg = self.summary.get("reg", self.getRegParam())
        users = StepConfig(side="user", rank=self.rank, loss=self.getLoss(), reg=float(reg),
                           count_scaled=self.getRegScaling() == "count", bias_reg=self.getBiasReg())  # fmt: skip
        solved = fold_in(new, self.item_factors, item_baseline(self, self.getLoss()), users,
                         global_baseline=self.global_baseline)  # fmt: skip
        user_factors = self.user_factors.unionByName(solved).localCheckpoint()
        model = self._copy_with(
            user_factors=user_factors,
            training_pairs=(
                self.training_pairs.unionByName(new.select(USER, ITEM, RATING))
                if self.training_pairs is not None
                else new.select(USER, ITEM, RATING)
            ),
        )
        model.summary.pop("num_users", None)  # more users now: counted again when needed
        new.unpersist()  # the new factors are checkpointed; the pairs below recompute from dataset
        return model

    def _in_trained_id_types(self, ratings: DataFrame) -> DataFrame:
        """ratings (user, item, ...) with the ids in this model's id types, as lookups take
        them (ml/ids.py): a fold-in's users become rows of its user table, so an int model
        stays int. An id that has no value of the model's type (beyond an int model's range,
        a string that is no integer for an integer model) is refused, with an example."""
        for side, (table, name) in self._sides().items():
            want, got = table.schema[side].dataType, ratings.schema[side].dataType
            if want == got:
                continue
            cast = as_model_ids(F.col(side), got, want, name)
            lost = ratings.filter(cast.isNull()).select(side).limit(1).collect()  # validated: no null ids
            if lost:
                kind = "beyond the range of" if isinstance(got, T.IntegralType) else "that are not integers, as are"
                raise ValueError(
                    f"column {name!r} has ids {kind} this model's {want.simpleString()} ids, e.g. {lost[0][0]!r}"
                )
            ratings = ratings.withColumn(side, cast)
        return ratings

    def _copy_with(self, **tables: Any) -> CFModel:
        fields = dict(
            user_factors=self.user_factors,
            item_factors=self.item_factors,
            item_stats=self.item_stats,
            global_baseline=self.global_baseline,
            training_pairs=self.training_pairs,
            summary=dict(self.summary),
            rank=self.rank,
        )
        fields.update(tables)
        model = CFModel(**fields)
        model._borrowed = {name for name in MODEL_TABLES if name not in tables}
        return self._copyValues(model)

    def earlier(self) -> Earlier:
        """This model's factor tables, for a warm start (a positive-only model is its own exposure part)."""
        own = Earlier(self.uid, self.rank, self.user_factors, self.item_factors)
        return dataclasses.replace(own, exposure=own) if self.summary.get("positive_only") else own

    # -- persistence ---------------------------------------------------------------------
    def write(self) -> CFModelWriter:
        return CFModelWriter(self)

    @classmethod
    def read(cls) -> CFModelReader:
        from cfspark.ml.exposure_model import ExposureAwareModel  # it extends this class

        return CFModelReader(plain=CFModel, exposure_aware=ExposureAwareModel)

    def unpersist(self) -> None:
        """Drop every cached table this model holds."""
        for name in MODEL_TABLES:
            df = getattr(self, name)
            if df is not None and name not in self._borrowed:
                df.unpersist()
