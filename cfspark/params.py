"""The Params that CollaborativeFilter and CFModel share, each with its one default.

This module is where every model default is written. conf/default.toml's [model] keys
mirror these (tests/test_config.py checks them key by key), and the job maps its keys
onto Params through CONFIG_PARAMS below.

A bad value is refused when it is set, in the driver, with the Param's name: pyspark
wraps a converter's TypeError into 'Invalid param value given for param "loss". …'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasCheckpointInterval,
    HasMaxIter,
    HasPredictionCol,
    HasRegParam,
    HasSeed,
    HasTol,
)

from cfspark.kernels.losses import LOSSES
from cfspark.kernels.optimizers import OPTIMIZERS

AUTO = "auto"  # regParam = "auto": λ chosen on a validation fold of the training ratings
COLD_START = ("mean", "nan", "drop")
REG_SCALINGS = ("count", "sum")
SAMPLINGS = ("sqrt", "popularity", "uniform")


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


def _interval(value: Any) -> int:
    value = _number(-1, integer=True)(value)
    if value == 0:
        raise TypeError("must be >= 1, or -1 for no checkpoints, got 0")
    return value


def _param(name: str, doc: str, converter: Callable[[Any], Any]) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class CFParams(HasMaxIter, HasRegParam, HasTol, HasSeed, HasCheckpointInterval, HasPredictionCol):
    """Params of CollaborativeFilter and CFModel. Defaults: _DEFAULTS, the one place."""

    maxIter = _param("maxIter", "alternating iterations, a user and an item half-step each", _number(1, integer=True))
    tol = _param("tol", "stop once an iteration changes the training loss by less than this fraction", _number(0.0))
    checkpointInterval = _param(
        "checkpointInterval",
        "iterations between checkpoints, when checkpointDir is set; -1 turns them off, as in ALS",
        _interval,
    )
    rank = _param("rank", "number of latent features k (ALS's rank)", _number(1, integer=True))
    regParam = _param(
        "regParam",
        'λ, the L2 weight on W and X, or "auto" to choose it on a validation fold of the training ratings',
        _number(0.0, words=(AUTO,)),
    )
    regScaling = _param(
        "regScaling",
        "count: each row's λ is scaled by its rating count (ALS-WR, as Spark ALS); sum: the course's λ/2‖·‖²",
        _one_of(*REG_SCALINGS),
    )
    biasReg = _param("biasReg", "λ_b, the L2 weight on the biases b and c, never count-scaled", _number(0.0))
    itemBias = _param("itemBias", "learn an item bias c_i on top of the item baseline", _flag)
    meanPrior = _param("meanPrior", "mse: pseudo-ratings shrinking μ_i towards the global mean", _number(0.0))
    loss = _param("loss", "mse for explicit ratings, bce for 0/1 labels", _one_of(*LOSSES))
    optimizer = _param("optimizer", "newton (exact ridge or IRLS step per row), adam or gd", _one_of(*OPTIMIZERS))
    learningRate = _param("learningRate", "adam and gd: the step size", _number(0.0, inclusive=False))
    innerSteps = _param("innerSteps", "optimiser steps per half-step, the other side fixed", _number(1, integer=True))
    numUserBlocks = _param("numUserBlocks", "user blocks; 0 sizes them from the rating count", _number(0, integer=True))
    numItemBlocks = _param("numItemBlocks", "item blocks; 0 sizes them from the rating count", _number(0, integer=True))
    maxBlockRatings = _param(
        "maxBlockRatings", "a side gets more blocks when one would hold more ratings", _number(1, integer=True)
    )
    initScale = _param("initScale", "standard deviation of the initial W and X", _number(0.0, inclusive=False))
    itemOffset = _param("itemOffset", "bce: add o_i, the logit of the item's smoothed positive rate", _flag)
    offsetPrior = _param("offsetPrior", "bce: pseudo-labels smoothing item rates", _number(0.0, inclusive=False))
    checkpointDir = _param("checkpointDir", 'where factors are checkpointed; "" for none', TypeConverters.toString)
    userCol = _param("userCol", "column of user ids, of any type", TypeConverters.toString)
    itemCol = _param("itemCol", "column of item ids, of any type", TypeConverters.toString)
    ratingCol = _param("ratingCol", "column of ratings (mse) or 0/1 labels (bce)", TypeConverters.toString)
    coldStartStrategy = _param(
        "coldStartStrategy",
        "unseen user or item at prediction: mean (the item or global baseline), nan, or drop the row",
        _one_of(*COLD_START),
    )
    weightCol = _param(
        "weightCol",
        'column of counts or confidences c > 0: a row weighs 1 + alpha·c; "" for none',
        TypeConverters.toString,
    )
    alpha = _param("alpha", "weightCol's scale, as implicit ALS's alpha: a row weighs 1 + alpha·c", _number(0.0))
    exposure = _param(
        "exposure", "bce: also learn P(exposed) from labelled-or-not pairs; rank by P(exposed)·P(like | shown)", _flag
    )
    exposureRegParam = _param("exposureRegParam", "exposure: λ of the exposure model, scaled as regParam", _number(0.0))
    exposureNegatives = _param(
        "exposureNegatives",
        "exposure: unlabelled items sampled per labelled pair, as not exposed",
        _number(1, integer=True),
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

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**_DEFAULTS)

    def _shared_params(self) -> dict[str, Any]:
        """Every CFParams value (set or default) by name: what a checkpoint's fingerprint holds."""
        return {name: self.getOrDefault(name) for name in _DEFAULTS}


# The defaults, in the one place they are written. The course's model is COURSE_PARAMS.
_DEFAULTS: dict[str, Any] = dict(
    rank=10,
    maxIter=20,
    regParam=0.1,
    regScaling="count",
    biasReg=5.0,
    itemBias=True,
    meanPrior=20.0,
    tol=0.002,
    loss="mse",
    optimizer="newton",
    learningRate=0.05,
    innerSteps=1,
    numUserBlocks=0,
    numItemBlocks=0,
    maxBlockRatings=10_000_000,
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
    alpha=1.0,
    exposure=True,
    exposureRegParam=0.01,
    exposureNegatives=32,
    negativeWeight=0.5,
    negativeSampling="sqrt",
)

# The course's model (conf/course.toml holds the same for the job): sum-form λ, the plain
# item mean, a free user bias, no item bias, Adam. λ itself is the caller's to choose.
COURSE_PARAMS = dict(
    regScaling="sum", biasReg=0.0, itemBias=False, meanPrior=0.0, tol=0.0, optimizer="adam", innerSteps=5
)

# The job's [model] and [checkpoint] keys → Params (the job's column keys come from [input]).
CONFIG_PARAMS: dict[tuple[str, str], str] = {
    ("model", "rank"): "rank",
    ("model", "max_iter"): "maxIter",
    ("model", "reg"): "regParam",
    ("model", "reg_scaling"): "regScaling",
    ("model", "bias_reg"): "biasReg",
    ("model", "item_bias"): "itemBias",
    ("model", "mean_prior"): "meanPrior",
    ("model", "tol"): "tol",
    ("model", "loss"): "loss",
    ("model", "optimizer"): "optimizer",
    ("model", "learning_rate"): "learningRate",
    ("model", "inner_steps"): "innerSteps",
    ("model", "num_user_blocks"): "numUserBlocks",
    ("model", "num_item_blocks"): "numItemBlocks",
    ("model", "max_block_ratings"): "maxBlockRatings",
    ("model", "seed"): "seed",
    ("model", "init_scale"): "initScale",
    ("model", "item_offset"): "itemOffset",
    ("model", "offset_prior"): "offsetPrior",
    ("model", "cold_start"): "coldStartStrategy",
    ("model", "exposure"): "exposure",
    ("model", "exposure_reg"): "exposureRegParam",
    ("negatives", "per_labelled"): "exposureNegatives",
    ("negatives", "weight"): "negativeWeight",
    ("negatives", "sampling"): "negativeSampling",
    ("input", "weight_col"): "weightCol",
    ("input", "weight_alpha"): "alpha",
    ("checkpoint", "interval"): "checkpointInterval",
}


def _accessors(cls: type) -> type:
    """getX/setX for every Param of cls that lacks them, as pyspark.ml spells them."""
    for name in _DEFAULTS:
        cap = name[0].upper() + name[1:]
        if not hasattr(cls, f"get{cap}"):
            setattr(cls, f"get{cap}", _getter(name))
        if not hasattr(cls, f"set{cap}"):
            setattr(cls, f"set{cap}", _setter(name))
    return cls


def _getter(name: str):
    def get(self):
        return self.getOrDefault(self.getParam(name))

    get.__name__ = f"get{name[0].upper()}{name[1:]}"
    get.__doc__ = f"The value of {name}, or its default."
    return get


def _setter(name: str):
    def set_(self, value):
        return self._set(**{name: value})

    set_.__name__ = f"set{name[0].upper()}{name[1:]}"
    set_.__doc__ = f"Set {name}."
    return set_


CFParams = _accessors(CFParams)
