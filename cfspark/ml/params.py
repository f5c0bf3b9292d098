"""The Params of CFModel, and of CollaborativeFilter, which extends them, as pyspark.ml
splits ALS's (_ALSModelParams, _ALSParams); each Param's one default is in DEFAULTS.

DEFAULTS is where every model default is written: CollaborativeFilter's signature reads
it, and the job's shipped defaults (app/default.toml) mirror it, key by key (tests check
both). The job maps its keys onto Params through app/config.py's CONFIG_PARAMS.

A bad value is refused when it is set, in the driver, with the Param's name: pyspark
wraps a converter's TypeError into 'Invalid param value given for param "loss". …'.

About 450 lines, as pyspark.ml writes Params: each of ALS's and cfspark's Params declared,
its getter written out.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasCheckpointInterval,
    HasMaxIter,
    HasPredictionCol,
    HasRegParam,
    HasSeed,
    HasTol,
)

from cfspark.blocks.build import MAX_BLOCK_RATINGS
from cfspark.data.weights import WEIGHT_MAPPINGS
from cfspark.fit.settings import AUTO
from cfspark.kernels.losses import LOSSES
from cfspark.kernels.optimizers import OPTIMIZERS

COLD_START = ("mean", "nan", "drop")
REG_SCALINGS = ("count", "sum")
REG_UNITS = ("spread", "als")
SAMPLINGS = ("sqrt", "popularity", "uniform")
OUTPUT_STYLES = ("cfspark", "als")
DUPLICATES = ("error", "mean", "max", "last", "sum")
# Spark's StorageLevel names, which ALS's storage-level Params take.
STORAGE_LEVELS = ("NONE", "DISK_ONLY", "DISK_ONLY_2", "DISK_ONLY_3", "MEMORY_ONLY", "MEMORY_ONLY_2",
                  "MEMORY_AND_DISK", "MEMORY_AND_DISK_2", "OFF_HEAP", "MEMORY_AND_DISK_DESER")  # fmt: skip
IMPLICIT_MODELS = ("all", "sampled")


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise TypeError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return convert


def _number(low: float, *, inclusive: bool = True, integer: bool = False, words: tuple[str, ...] = ()):
    """A converter to int or float that refuses values below low (or at it, if not inclusive)."""
    base = TypeConverters.toInt if integer else TypeConverters.toFloat

    def convert(value: Any) -> Any:
        if value in words:
            return value
        if isinstance(value, bool):
            raise TypeError(f"must be a number, got {value!r}")
        value = base(value)
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise TypeError(f"must be {'>=' if inclusive else '>'} {low:g}, got {value!r}")
        return value

    return convert


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be True or False, got {value!r}")
    return value


def _not_nonnegative(value: Any) -> bool:
    if _flag(value):
        raise TypeError(
            "cfspark has no non-negative factors: its predictions add biases and item baselines to w·x, so "
            "non-negative w and x would not make the parts non-negative; see docs/migrating-from-als.md"
        )
    return value


def _interval(value: Any) -> int:
    value = _number(-1, integer=True)(value)
    if value == 0:
        raise TypeError("must be >= 1, or -1 for no checkpoints, got 0")
    return value


def _param(name: str, doc: str, converter: Callable[[Any], Any]) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


def keyword_params(method: Callable | None = None, *, like: Callable | None = None) -> Callable:
    """pyspark's keyword_only (the call's own keywords in self._input_kwargs), refusing an
    unknown name as a Param the class does not have, in the Params' own words.

    like: take the keywords, and the signature help() shows, from that method (setParams
    from __init__, so every Param and its default is listed once).
    """
    if method is None:
        return functools.partial(keyword_params, like=like)
    signature = inspect.signature(like or method)
    names = set(signature.parameters) - {"self"}
    inner = keyword_only(method)

    @functools.wraps(method)
    def call(self, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no Param {', '.join(unknown)}; see explainParams()")
        return inner(self, **kwargs)

    if like is not None:
        call.__signature__ = signature.replace(return_annotation=inspect.signature(method).return_annotation)
    return call


# The defaults, in the one place they are written. The course's model is COURSE_PARAMS.
DEFAULTS: dict[str, Any] = dict(
    rank=10,
    maxIter=20,
    regParam="auto",
    regScaling="count",
    regUnits="spread",
    biasReg="auto",
    itemBias=True,
    meanPrior="auto",
    tol=0.002,
    loss="mse",
    optimizer="newton",
    learningRate=0.05,
    innerSteps=1,
    numUserBlocks=0,
    numItemBlocks=0,
    maxBlockRatings=MAX_BLOCK_RATINGS,
    float32=False,
    seed=7,
    initScale=0.1,
    itemOffset=True,
    offsetPrior=2.0,
    checkpointDir="",
    checkpointInterval=10,
    userCol="user",
    itemCol="item",
    ratingCol="rating",
    predictionCol="prediction",
    coldStartStrategy="mean",
    weightCol="",
    alpha="auto",
    weightMapping="log",
    weightEpsilon=1.0,
    exposure=True,
    exposureRegParam=AUTO,
    exposureNegatives=32,
    exposureCoarseIterations=2,
    negativeWeight=0.5,
    negativeSampling="sqrt",
    outputStyle="cfspark",
    blockSize=4096,
    implicitPrefs=False,
    nonnegative=False,
    duplicates="error",
    intermediateStorageLevel="MEMORY_AND_DISK",
    finalStorageLevel="MEMORY_AND_DISK",
    implicit="all",
)

# The Params the estimator settles itself, before the fit paths (FitSettings) see the ratings:
# implicitPrefs and duplicates shape the rows, the rest shape output or are ALS's no-ops.
NOT_FIT_PARAMS = ("outputStyle", "blockSize", "implicitPrefs", "nonnegative", "duplicates",
                  "intermediateStorageLevel", "finalStorageLevel")  # fmt: skip

# The course's model (conf/course.toml holds the same for the job): sum-form λ, the plain
# item mean, a free user bias, no item bias, Adam. λ itself is the caller's to choose.
COURSE_PARAMS = dict(
    regScaling="sum", regUnits="als", biasReg=0.0, itemBias=False, meanPrior=0.0, tol=0.0, optimizer="adam",
    innerSteps=5,
)  # fmt: skip

# The Params a fitted model holds: prediction, recommendation and fold-in read these.
MODEL_PARAMS = ("userCol", "itemCol", "ratingCol", "predictionCol", "coldStartStrategy", "loss", "regParam",
                "regScaling", "biasReg", "outputStyle", "blockSize")  # fmt: skip


class _CFModelParams(HasPredictionCol, HasRegParam):
    """Params of CFModel: the columns it reads and writes, and what prediction and fold-in
    need. CollaborativeFilter's Params extend these."""

    userCol = _param("userCol", "column of user ids, of any type", TypeConverters.toString)
    itemCol = _param("itemCol", "column of item ids, of any type", TypeConverters.toString)
    ratingCol = _param("ratingCol", "column of ratings (mse) or 0/1 labels (bce)", TypeConverters.toString)
    coldStartStrategy = _param(
        "coldStartStrategy",
        "unseen user or item at prediction: mean (the item or global baseline), nan, or drop the row",
        _one_of(*COLD_START),
    )
    loss = _param("loss", "mse for explicit ratings, bce for 0/1 labels", _one_of(*LOSSES))
    regParam = _param(
        "regParam",
        'λ, the L2 weight on W and X, in regUnits; "auto" (the default) chooses it on a validation fold',
        _number(0.0, words=(AUTO,)),
    )
    regScaling = _param(
        "regScaling",
        "count: each row's λ is scaled by its rating count (ALS-WR, as Spark ALS); sum: the course's λ/2‖·‖²",
        _one_of(*REG_SCALINGS),
    )
    biasReg = _param(
        "biasReg",
        'λ_b, the L2 weight on the biases b and c, a prior count of pseudo-ratings; "auto" estimates it '
        "from the users' spread of effects (mse; bce: 5)",
        _number(0.0, words=(AUTO,)),
    )
    outputStyle = _param(
        "outputStyle",
        "cfspark: flat recommendations without training items, no NaN; als: ALS's tables, nesting, cold start",
        _one_of(*OUTPUT_STYLES),
    )
    blockSize = _param(
        "blockSize", "accepted for ALS's sake, unused: cfspark's top-N sizes its own blocks", _number(1, integer=True)
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**{name: DEFAULTS[name] for name in MODEL_PARAMS})

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getRatingCol(self) -> str:
        return self.getOrDefault(self.ratingCol)

    def getColdStartStrategy(self) -> str:
        """coldStartStrategy as set, or else the style's: ALS's "nan", or cfspark's "mean"."""
        if self.isSet(self.coldStartStrategy) or not self.als_style():
            return self.getOrDefault(self.coldStartStrategy)
        return "nan"

    def getLoss(self) -> str:
        return self.getOrDefault(self.loss)

    def getRegScaling(self) -> str:
        return self.getOrDefault(self.regScaling)

    def getBiasReg(self) -> float | str:
        return self.getOrDefault(self.biasReg)

    def getOutputStyle(self) -> str:
        return self.getOrDefault(self.outputStyle)

    def getBlockSize(self) -> int:
        return self.getOrDefault(self.blockSize)

    def als_style(self) -> bool:
        return self.getOutputStyle() == "als"


class _CFParams(_CFModelParams, HasMaxIter, HasTol, HasSeed, HasCheckpointInterval):
    """Params of CollaborativeFilter: the model's, and what shapes the fit."""

    rank = _param("rank", "number of latent features k (ALS's rank)", _number(1, integer=True))
    regUnits = _param(
        "regUnits",
        "mse: spread (regParam × the spread s of the normalised training ratings, so scaling the ratings "
        "scales the model) or als (Spark ALS's regParam); the fitted model's regParam is in als units",
        _one_of(*REG_UNITS),
    )
    maxIter = _param("maxIter", "alternating iterations, a user and an item half-step each", _number(1, integer=True))
    tol = _param("tol", "stop once an iteration changes the training loss by less than this fraction", _number(0.0))
    checkpointInterval = _param(
        "checkpointInterval",
        "iterations between checkpoints, when checkpointDir is set; -1 turns them off, as in ALS",
        _interval,
    )
    itemBias = _param("itemBias", "learn an item bias c_i on top of the item baseline", _flag)
    meanPrior = _param(
        "meanPrior",
        'mse: pseudo-ratings shrinking μ_i towards the global mean; "auto" estimates them from the items\' '
        "spread of means",
        _number(0.0, words=(AUTO,)),
    )
    optimizer = _param("optimizer", "newton (exact ridge or IRLS step per row), adam or gd", _one_of(*OPTIMIZERS))
    learningRate = _param("learningRate", "adam and gd: the step size", _number(0.0, inclusive=False))
    innerSteps = _param("innerSteps", "optimiser steps per half-step, the other side fixed", _number(1, integer=True))
    numUserBlocks = _param("numUserBlocks", "user blocks; 0 sizes them from the rating count", _number(0, integer=True))
    numItemBlocks = _param("numItemBlocks", "item blocks; 0 sizes them from the rating count", _number(0, integer=True))
    maxBlockRatings = _param(
        "maxBlockRatings", "a side gets more blocks when one would hold more ratings", _number(1, integer=True)
    )
    float32 = _param(
        "float32", "Newton half-steps gather and multiply in float32 and send float32 messages", _flag
    )
    initScale = _param("initScale", "standard deviation of the initial W and X", _number(0.0, inclusive=False))
    itemOffset = _param("itemOffset", "bce: add o_i, the logit of the item's smoothed positive rate", _flag)
    offsetPrior = _param("offsetPrior", "bce: pseudo-labels smoothing item rates", _number(0.0, inclusive=False))
    checkpointDir = _param("checkpointDir", 'where factors are checkpointed; "" for none', TypeConverters.toString)
    weightCol = _param(
        "weightCol",
        'column of counts or confidences c > 0: a row weighs 1 + alpha·c; "" for none',
        TypeConverters.toString,
    )
    alpha = _param(
        "alpha",
        'weightCol\'s scale: a row weighs 1 + alpha·log(1 + c/weightEpsilon), or 1 + alpha·c; "auto" chooses it '
        "on NDCG@10 for positive-only data (else 1)",
        _number(0.0, words=(AUTO,)),
    )
    weightMapping = _param(
        "weightMapping", "a count's weight: log, 1 + alpha·log(1 + c/weightEpsilon), or linear, 1 + alpha·c",
        _one_of(*WEIGHT_MAPPINGS),
    )  # fmt: skip
    weightEpsilon = _param(
        "weightEpsilon", "log weightMapping: the count ε in log(1 + c/ε)", _number(0.0, inclusive=False)
    )
    exposure = _param(
        "exposure", "bce: also learn P(exposed) from labelled-or-not pairs; rank by P(exposed)·P(like | shown)", _flag
    )
    exposureRegParam = _param(
        "exposureRegParam",
        'exposure: λ of the exposure model (and of the all-items model), scaled as regParam; "auto" (the '
        "default) chooses it on NDCG@10 of a validation fold",
        _number(0.0, words=(AUTO,)),
    )
    exposureNegatives = _param(
        "exposureNegatives",
        "exposure: unlabelled items sampled per labelled pair, as not exposed",
        _number(1, integer=True),
    )
    exposureCoarseIterations = _param(
        "exposureCoarseIterations",
        "exposure: first iterations from the hashed init that draw a quarter of exposureNegatives, each 4 × weighted",
        _number(0, integer=True),
    )
    negativeWeight = _param(
        "negativeWeight",
        "a sampled negative's weight in the loss, against 1 for an observed label",
        _number(0.0, inclusive=False),
    )
    negativeSampling = _param(
        "negativeSampling",
        "sampled negatives drawn ∝ √(number of labels) (sqrt), ∝ it (popularity), or uniformly",
        _one_of(*SAMPLINGS),
    )

    implicitPrefs = _param(
        "implicitPrefs",
        "ALS's implicit feedback, mapped: ratingCol holds counts and acts as weightCol, fitted as bce "
        "positive-only labels (rows with a count <= 0 dropped)",
        _flag,
    )
    nonnegative = _param("nonnegative", "ALS's non-negative factors: not supported, so only False", _not_nonnegative)
    duplicates = _param(
        "duplicates",
        "a repeated (user, item) pair: error, or combine its ratings by mean, max, last (in input order) or sum",
        _one_of(*DUPLICATES),
    )
    intermediateStorageLevel = _param(
        "intermediateStorageLevel", "accepted for ALS's sake, unused: cfspark caches its own blocks",
        _one_of(*STORAGE_LEVELS),
    )  # fmt: skip
    finalStorageLevel = _param(
        "finalStorageLevel", "accepted for ALS's sake, unused: a model's factor tables are checkpointed",
        _one_of(*STORAGE_LEVELS),
    )  # fmt: skip
    implicit = _param(
        "implicit",
        "bce, positive-only labels: all (every unlabelled item a weighted 0) or sampled (the exposure model)",
        _one_of(*IMPLICIT_MODELS),
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**{name: value for name, value in DEFAULTS.items() if name not in MODEL_PARAMS})

    def getRegUnits(self) -> str:
        return self.getOrDefault(self.regUnits)

    def getRank(self) -> int:
        return self.getOrDefault(self.rank)

    def getItemBias(self) -> bool:
        return self.getOrDefault(self.itemBias)

    def getMeanPrior(self) -> float | str:
        return self.getOrDefault(self.meanPrior)

    def getOptimizer(self) -> str:
        return self.getOrDefault(self.optimizer)

    def getLearningRate(self) -> float:
        return self.getOrDefault(self.learningRate)

    def getInnerSteps(self) -> int:
        return self.getOrDefault(self.innerSteps)

    def getNumUserBlocks(self) -> int:
        return self.getOrDefault(self.numUserBlocks)

    def getNumItemBlocks(self) -> int:
        return self.getOrDefault(self.numItemBlocks)

    def getMaxBlockRatings(self) -> int:
        return self.getOrDefault(self.maxBlockRatings)

    def getFloat32(self) -> bool:
        return self.getOrDefault(self.float32)

    def getInitScale(self) -> float:
        return self.getOrDefault(self.initScale)

    def getItemOffset(self) -> bool:
        return self.getOrDefault(self.itemOffset)

    def getOffsetPrior(self) -> float:
        return self.getOrDefault(self.offsetPrior)

    def getCheckpointDir(self) -> str:
        return self.getOrDefault(self.checkpointDir)

    def getWeightCol(self) -> str:
        return self.getOrDefault(self.weightCol)

    def getAlpha(self) -> float:
        return self.getOrDefault(self.alpha)

    def getWeightMapping(self) -> str:
        return self.getOrDefault(self.weightMapping)

    def getWeightEpsilon(self) -> float:
        return self.getOrDefault(self.weightEpsilon)

    def getImplicit(self) -> str:
        return self.getOrDefault(self.implicit)

    def getExposure(self) -> bool:
        return self.getOrDefault(self.exposure)

    def getExposureRegParam(self) -> float | str:
        return self.getOrDefault(self.exposureRegParam)

    def getExposureNegatives(self) -> int:
        return self.getOrDefault(self.exposureNegatives)

    def getNegativeWeight(self) -> float:
        return self.getOrDefault(self.negativeWeight)

    def getNegativeSampling(self) -> str:
        return self.getOrDefault(self.negativeSampling)

    def getImplicitPrefs(self) -> bool:
        return self.getOrDefault(self.implicitPrefs)

    def getNonnegative(self) -> bool:
        return self.getOrDefault(self.nonnegative)

    def getDuplicates(self) -> str:
        return self.getOrDefault(self.duplicates)

    def getIntermediateStorageLevel(self) -> str:
        return self.getOrDefault(self.intermediateStorageLevel)

    def getFinalStorageLevel(self) -> str:
        return self.getOrDefault(self.finalStorageLevel)
