"""CollaborativeFilter: the estimator, a pyspark.ml Estimator over cfspark's fit paths.

It holds the Params, validates the input, and hands a FitSettings to fit/paths.py; the
FitRecord that comes back becomes a CFModel (or an ExposureAwareModel).

About 340 lines: most of it is the @keyword_only signature and one setter per Param, written
out as pyspark.ml's estimators write them so that help() and IDEs show every one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cfspark.core.errors import RepeatedPairsError
from cfspark.core.plans import cache_plain
from cfspark.core.schema import ITEM, RATING, USER, WEIGHT
from cfspark.data.read import Columns
from cfspark.data.validate import repeated_pairs_error, validate_given
from cfspark.data.weights import confidence
from cfspark.fit.paths import fit_ratings
from cfspark.fit.record import FitRecord
from cfspark.fit.settings import FitSettings, InitialModel
from cfspark.ml.exposure_model import ExposureAwareModel
from cfspark.ml.model import CFModel
from cfspark.ml.params import DEFAULTS, NOT_FIT_PARAMS, _CFParams, keyword_params

__all__ = ["CollaborativeFilter"]


def _model_or_path(value: Any) -> Any:
    if isinstance(value, (str, CFModel)):
        return value
    raise TypeError(f"must be a fitted CFModel or the path of a saved one, got {type(value).__name__}")


class CollaborativeFilter(Estimator, _CFParams, DefaultParamsWritable, DefaultParamsReadable):
    """Learns item features X, user weights W and biases by alternating blockwise steps.

    A pyspark.ml Estimator: its Params (explainParams() lists them, with their defaults)
    follow ALS's names where the meanings match, and fit() returns a CFModel.

    >>> from cfspark import CollaborativeFilter
    >>> ratings = spark.createDataFrame(
    ...     [(u, i, float(1 + (u * i) % 5)) for u in range(30) for i in range(12) if (u + i) % 3],
    ...     ["user", "item", "rating"])
    >>> cf = CollaborativeFilter(rank=4, maxIter=5)
    >>> cf.getRegParam(), cf.getOptimizer()
    ('auto', 'newton')
    >>> model = cf.fit(ratings)
    >>> recs = model.recommendForAllUsers(3)
    >>> recs.columns
    ['user', 'item', 'rank', 'score']
    >>> recs.filter("user = 0").count()
    3
    >>> seen = ratings.filter("user = 0").select("item")
    >>> recs.filter("user = 0").join(seen, "item").count()  # items rated in training are left out
    0
    >>> model.transform(ratings.filter("user = 0 and item = 1")).select("prediction").first()[0] > 0
    True
    """

    initialModel = Param(
        Params._dummy(),
        "initialModel",
        "warm start: a fitted CFModel, or the path of a saved one, whose factors the fit starts from",
        typeConverter=_model_or_path,
    )

    @keyword_params
    def __init__(
        self,
        *,
        rank: int = DEFAULTS["rank"],
        maxIter: int = DEFAULTS["maxIter"],
        regParam: float | str = DEFAULTS["regParam"],
        regScaling: str = DEFAULTS["regScaling"],
        regUnits: str = DEFAULTS["regUnits"],
        biasReg: float | str = DEFAULTS["biasReg"],
        itemBias: bool = DEFAULTS["itemBias"],
        meanPrior: float | str = DEFAULTS["meanPrior"],
        tol: float = DEFAULTS["tol"],
        loss: str = DEFAULTS["loss"],
        optimizer: str = DEFAULTS["optimizer"],
        learningRate: float = DEFAULTS["learningRate"],
        innerSteps: int = DEFAULTS["innerSteps"],
        numUserBlocks: int = DEFAULTS["numUserBlocks"],
        numItemBlocks: int = DEFAULTS["numItemBlocks"],
        maxBlockRatings: int = DEFAULTS["maxBlockRatings"],
        float32: bool = DEFAULTS["float32"],
        seed: int = DEFAULTS["seed"],
        initScale: float = DEFAULTS["initScale"],
        itemOffset: bool = DEFAULTS["itemOffset"],
        offsetPrior: float = DEFAULTS["offsetPrior"],
        checkpointDir: str = DEFAULTS["checkpointDir"],
        checkpointInterval: int = DEFAULTS["checkpointInterval"],
        userCol: str = DEFAULTS["userCol"],
        itemCol: str = DEFAULTS["itemCol"],
        ratingCol: str = DEFAULTS["ratingCol"],
        predictionCol: str = DEFAULTS["predictionCol"],
        coldStartStrategy: str = DEFAULTS["coldStartStrategy"],
        weightCol: str = DEFAULTS["weightCol"],
        alpha: float | str = DEFAULTS["alpha"],
        weightMapping: str = DEFAULTS["weightMapping"],
        weightEpsilon: float = DEFAULTS["weightEpsilon"],
        exposure: bool = DEFAULTS["exposure"],
        exposureRegParam: float | str = DEFAULTS["exposureRegParam"],
        exposureNegatives: int = DEFAULTS["exposureNegatives"],
        exposureCoarseIterations: int = DEFAULTS["exposureCoarseIterations"],
        negativeWeight: float = DEFAULTS["negativeWeight"],
        negativeSampling: str = DEFAULTS["negativeSampling"],
        outputStyle: str = DEFAULTS["outputStyle"],
        blockSize: int = DEFAULTS["blockSize"],
        implicitPrefs: bool = DEFAULTS["implicitPrefs"],
        nonnegative: bool = DEFAULTS["nonnegative"],
        duplicates: str = DEFAULTS["duplicates"],
        intermediateStorageLevel: str = DEFAULTS["intermediateStorageLevel"],
        finalStorageLevel: str = DEFAULTS["finalStorageLevel"],
        implicit: str = DEFAULTS["implicit"],
        initialModel: Any = None,
    ) -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_params(like=__init__)
    def setParams(self, **params: Any) -> CollaborativeFilter:
        """Set any of the Params by name (those of the constructor, whose signature lists them)."""
        return self._set(**self._input_kwargs)

    def setRank(self, value: int) -> CollaborativeFilter:
        return self._set(rank=value)

    def setMaxIter(self, value: int) -> CollaborativeFilter:
        return self._set(maxIter=value)

    def setRegParam(self, value: float | str) -> CollaborativeFilter:
        return self._set(regParam=value)

    def setRegScaling(self, value: str) -> CollaborativeFilter:
        return self._set(regScaling=value)

    def setRegUnits(self, value: str) -> CollaborativeFilter:
        return self._set(regUnits=value)

    def setBiasReg(self, value: float | str) -> CollaborativeFilter:
        return self._set(biasReg=value)

    def setItemBias(self, value: bool) -> CollaborativeFilter:
        return self._set(itemBias=value)

    def setMeanPrior(self, value: float | str) -> CollaborativeFilter:
        return self._set(meanPrior=value)

    def setTol(self, value: float) -> CollaborativeFilter:
        return self._set(tol=value)

    def setLoss(self, value: str) -> CollaborativeFilter:
        return self._set(loss=value)

    def setOptimizer(self, value: str) -> CollaborativeFilter:
        return self._set(optimizer=value)

    def setLearningRate(self, value: float) -> CollaborativeFilter:
        return self._set(learningRate=value)

    def setInnerSteps(self, value: int) -> CollaborativeFilter:
        return self._set(innerSteps=value)

    def setNumUserBlocks(self, value: int) -> CollaborativeFilter:
        return self._set(numUserBlocks=value)

    def setNumItemBlocks(self, value: int) -> CollaborativeFilter:
        return self._set(numItemBlocks=value)

    def setMaxBlockRatings(self, value: int) -> CollaborativeFilter:
        return self._set(maxBlockRatings=value)

    def setFloat32(self, value: bool) -> CollaborativeFilter:
        return self._set(float32=value)

    def setSeed(self, value: int) -> CollaborativeFilter:
        return self._set(seed=value)

    def setInitScale(self, value: float) -> CollaborativeFilter:
        return self._set(initScale=value)

    def setItemOffset(self, value: bool) -> CollaborativeFilter:
        return self._set(itemOffset=value)

    def setOffsetPrior(self, value: float) -> CollaborativeFilter:
        return self._set(offsetPrior=value)

    def setCheckpointDir(self, value: str) -> CollaborativeFilter:
        return self._set(checkpointDir=value)

    def setCheckpointInterval(self, value: int) -> CollaborativeFilter:
        return self._set(checkpointInterval=value)

    def setUserCol(self, value: str) -> CollaborativeFilter:
        return self._set(userCol=value)

    def setItemCol(self, value: str) -> CollaborativeFilter:
        return self._set(itemCol=value)

    def setRatingCol(self, value: str) -> CollaborativeFilter:
        return self._set(ratingCol=value)

    def setPredictionCol(self, value: str) -> CollaborativeFilter:
        return self._set(predictionCol=value)

    def setColdStartStrategy(self, value: str) -> CollaborativeFilter:
        return self._set(coldStartStrategy=value)

    def setWeightCol(self, value: str) -> CollaborativeFilter:
        return self._set(weightCol=value)

    def setAlpha(self, value: float | str) -> CollaborativeFilter:
        return self._set(alpha=value)

    def setWeightMapping(self, value: str) -> CollaborativeFilter:
        return self._set(weightMapping=value)

    def setWeightEpsilon(self, value: float) -> CollaborativeFilter:
        return self._set(weightEpsilon=value)

    def setImplicit(self, value: str) -> CollaborativeFilter:
        return self._set(implicit=value)

    def setExposure(self, value: bool) -> CollaborativeFilter:
        return self._set(exposure=value)

    def setExposureRegParam(self, value: float | str) -> CollaborativeFilter:
        return self._set(exposureRegParam=value)

    def setExposureNegatives(self, value: int) -> CollaborativeFilter:
        return self._set(exposureNegatives=value)

    def setExposureCoarseIterations(self, value: int) -> CollaborativeFilter:
        return self._set(exposureCoarseIterations=value)

    def setNegativeWeight(self, value: float) -> CollaborativeFilter:
        return self._set(negativeWeight=value)

    def setNegativeSampling(self, value: str) -> CollaborativeFilter:
        return self._set(negativeSampling=value)

    def setOutputStyle(self, value: str) -> CollaborativeFilter:
        return self._set(outputStyle=value)

    def setBlockSize(self, value: int) -> CollaborativeFilter:
        return self._set(blockSize=value)

    def setImplicitPrefs(self, value: bool) -> CollaborativeFilter:
        return self._set(implicitPrefs=value)

    def setNonnegative(self, value: bool) -> CollaborativeFilter:
        return self._set(nonnegative=value)

    def setDuplicates(self, value: str) -> CollaborativeFilter:
        return self._set(duplicates=value)

    def setIntermediateStorageLevel(self, value: str) -> CollaborativeFilter:
        return self._set(intermediateStorageLevel=value)

    def setFinalStorageLevel(self, value: str) -> CollaborativeFilter:
        return self._set(finalStorageLevel=value)

    def setNumBlocks(self, value: int) -> CollaborativeFilter:
        """numUserBlocks and numItemBlocks at once, as ALS's setNumBlocks."""
        return self._set(numUserBlocks=value, numItemBlocks=value)

    def setInitialModel(self, value: Any) -> CollaborativeFilter:
        return self._set(initialModel=value)

    def getInitialModel(self) -> Any:
        return self.getOrDefault(self.initialModel) if self.isDefined(self.initialModel) else None

    def write(self):
        if isinstance(self.getInitialModel(), CFModel):
            raise ValueError("initialModel is a model object, which cannot be saved: save it and set its path instead")
        return super().write()

    @property
    def columns(self) -> Columns:
        return Columns(self.getUserCol(), self.getItemCol(), self.getRatingCol(), self.getWeightCol())

    def fit_settings(self) -> FitSettings:
        """The Params as the fit paths read them; initialModel is read only when a fit starts from it."""
        start = self.getInitialModel()
        initial = None
        if start is not None:
            name = start if isinstance(start, str) else start.uid
            initial = InitialModel(name, lambda: (CFModel.load(start) if isinstance(start, str) else start).earlier())
        settings = {name: self.getOrDefault(name) for name in DEFAULTS if name not in NOT_FIT_PARAMS}
        fit = FitSettings(**settings, initialModel=initial)
        # implicitPrefs is a mapping onto bce positive-only labels weighted by counts; the model carries it.
        return fit.carry(loss="bce") if self.getImplicitPrefs() else fit

    def _fit(self, dataset: DataFrame) -> CFModel:
        """Validate (userCol, itemCol, ratingCol[, weightCol]) rows, keeping id types as they
        are, and fit; a weightCol count c becomes the row's weight (data/weights.py).

        implicitPrefs: ratingCol holds counts c, as in implicit ALS, and acts as weightCol: a
        row with c > 0 becomes a positive label weighing as its count says (weightMapping,
        alpha), and a row with c <= 0 is dropped (the positive-only model treats every pair it
        does not see as unlabelled)."""
        prefs, duplicates = self.getImplicitPrefs(), self.getDuplicates()
        labels = self.getLoss() == "bce" and not prefs
        if labels and duplicates in ("mean", "sum"):
            raise ValueError(
                f'duplicates = "{duplicates}" would make labels other than 0/1; use "max", "last" or "error"'
            )
        if prefs and self.getWeightCol():
            raise ValueError("implicitPrefs takes its counts from ratingCol; leave weightCol unset")
        # The fit refuses repeated pairs where it sorts each user's ratings anyway, without
        # the shuffle of every pair that a check here costs. Under implicitPrefs, rows of
        # count <= 0 are dropped before the fit sees them, and a pair they repeat must still be
        # refused: the check stays here.
        fit_refuses = not prefs
        ratings = validate_given(dataset, self.columns, labels=labels, duplicates=duplicates, fit_refuses=fit_refuses)
        if prefs:
            ratings = ratings.filter(F.col(RATING) > 0).select(
                USER, ITEM, F.lit(1.0).alias(RATING), self._confidence(F.col(RATING)).alias(WEIGHT)
            )
        elif self.getWeightCol():
            ratings = ratings.withColumn(WEIGHT, self._confidence(F.col(WEIGHT)))
        ratings = cache_plain(ratings)
        try:
            # Counting fills the cache on every core, and the fit's path (one task or blocks) is chosen by the count.
            return self.fit_validated(ratings, num_ratings=ratings.count())
        except RepeatedPairsError as found:
            ratings.unpersist()
            raise repeated_pairs_error(found, self.columns) from None

    def _confidence(self, count: Column) -> Column:
        return confidence(count, self.getAlpha(), self.getWeightMapping(), self.getWeightEpsilon())

    def fit_validated(
        self,
        train_ratings: DataFrame,
        *,
        on_iteration: Callable[[CFModel], dict] | None = None,
        num_ratings: int | None = None,
        global_mean: float | None = None,
    ) -> CFModel:
        """Fit on already validated (user, item, rating[, weight]) rows with cfspark's internal names.

        on_iteration, if given, is called with the model as it stands after each iteration
        and returns extra fields for that iteration's history entry; its time is not counted.
        num_ratings, the rows' count, and global_mean, their weighted mean of ratings, if
        the caller already knows them, save the fit a pass over the rows each.
        """
        watch = (lambda live: on_iteration(self._model_of(live))) if on_iteration else None
        record = fit_ratings(self.fit_settings(), train_ratings, watch, num_ratings=num_ratings,
                             global_mean=global_mean)  # fmt: skip
        return self._model_of(record)

    def _model_of(self, record: FitRecord) -> CFModel:
        """The model a fit record stands for, with these Params and those the fit set itself
        (record.params): for positive-only labels, the caller's own Params win over those."""
        if record.summary.get("positive_only"):
            # The exposure part's column name (p_exposed) is for its place inside an
            # ExposureAwareModel; standing alone, the model predicts into predictionCol.
            params = {k: v for k, v in record.params.items() if k != "predictionCol"}
            return self._copyValues(CFModel.from_record(record)._set(**params))
        if record.exposure is None:
            model = CFModel.from_record(record)
        else:
            model = ExposureAwareModel.from_record(record, exposure_model=self._model_of(record.exposure))
        return self._copyValues(model)._set(**record.params)
