"""FitSettings: every Param a fit reads, by its Param name, fixed for the whole fit.

ml/estimator.py builds one from its Params, so the fit paths never import pyspark.ml. A
path that changes a value for a fit of its own (the λ search's choice, the exposure fit's
λ) uses replace(); the values its model must carry as Params go through carry().
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame

from cfspark.train.sampled import Draws
from cfspark.train.step import StepConfig

AUTO = "auto"  # regParam = "auto": λ chosen on a validation fold of the training ratings
# biasReg = "auto" under bce: labels carry no noise variance for the moments to compare the
# effects with, so the biases keep a fixed prior count of pseudo-labels.
BCE_BIAS_REG = 5.0


@dataclass(frozen=True)
class Earlier:
    """The factor tables of a fitted model a warm start begins from (and its exposure part's)."""

    uid: str
    rank: int
    user_factors: DataFrame
    item_factors: DataFrame
    exposure: Earlier | None = None  # the part to start an exposure fit from, if the model has one
    rows: tuple[int, int] | None = None  # the two tables' row counts, if known: a warm start then counts neither


@dataclass(frozen=True)
class InitialModel:
    """initialModel: its name (a saved model's path, or a model's uid) and how to read it,
    called only when the fit starts from it."""

    name: str
    load: Callable[[], Earlier]


@dataclass(frozen=True)
class FitSettings:
    """The Params of one fit (ml/params.py documents each), and the model to start from."""

    rank: int
    maxIter: int
    regParam: float | str
    regScaling: str
    regUnits: str
    biasReg: float | str
    itemBias: bool
    meanPrior: float | str
    tol: float
    loss: str
    optimizer: str
    learningRate: float
    innerSteps: int
    numUserBlocks: int
    numItemBlocks: int
    maxBlockRatings: int
    float32: bool
    seed: int
    initScale: float
    itemOffset: bool
    offsetPrior: float
    checkpointDir: str
    checkpointInterval: int
    userCol: str
    itemCol: str
    ratingCol: str
    predictionCol: str
    coldStartStrategy: str
    weightCol: str
    alpha: float
    weightMapping: str
    weightEpsilon: float
    exposure: bool
    exposureRegParam: float | str
    exposureNegatives: int
    exposureCoarseIterations: int
    negativeWeight: float
    negativeSampling: str
    implicit: str
    initialModel: InitialModel | None = None
    draws: Draws | None = None  # sampled 0-labels drawn in each half-step (fit/exposure.py, train/sampled.py)
    carried: dict[str, Any] = field(default_factory=dict)  # Params this fit set, which its model carries as set

    def replace(self, **changes: Any) -> FitSettings:
        return dataclasses.replace(self, **changes)

    def carry(self, **changes: Any) -> FitSettings:
        """These values for this fit, and set on its model as Params."""
        return dataclasses.replace(self, **changes, carried={**self.carried, **changes})

    def params(self) -> dict[str, Any]:
        """Every Param value by name (initialModel by its name): what a checkpoint's fingerprint holds."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "carried"}
        values["initialModel"] = self.initialModel.name if self.initialModel else None
        values["draws"] = dataclasses.asdict(self.draws) if self.draws else None
        return values

    def in_als_units(self, spread: float) -> FitSettings:
        """These settings with a numeric regParam in Spark ALS's units for targets of spread s:
        under regUnits = "spread", λ = regParam·s (carried onto the model, which keeps λ in
        als units) and the initial factors' spread initScale·√s, so that targets × a give
        factors × √a and biases × a; under "als", as they are."""
        if self.regUnits != "spread":
            return self
        scaled = self.carry(regParam=self.regParam * spread)
        return scaled.replace(regUnits="als", initScale=self.initScale * spread**0.5)

    def step_config(self, side: str, reg: float | None = None) -> StepConfig:
        """The half-step of one side, with λ = reg if given (the λ search's), else regParam."""
        bias_reg = self.biasReg
        if bias_reg == AUTO:
            if self.loss == "mse":  # the λ search's task sets it first (fit/paths.py)
                raise ValueError('biasReg = "auto" is estimated from the ratings before a half-step is set up')
            bias_reg = BCE_BIAS_REG
        return StepConfig(
            side=side,
            rank=self.rank,
            loss=self.loss,
            reg=self.regParam if reg is None else reg,
            optimizer=self.optimizer,
            learning_rate=self.learningRate,
            inner_steps=self.innerSteps,
            init_scale=self.initScale,
            count_scaled=self.regScaling == "count",
            bias_reg=bias_reg,
            learn_bias=side == "user" or self.itemBias,
            float32=self.float32,
            draws=self.draws,
        )
