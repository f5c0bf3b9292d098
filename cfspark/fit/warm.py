"""A warm start: the first state tables of a blockwise fit, from initialModel's factors."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame

from cfspark.blocks.build import Blocks
from cfspark.fit.settings import FitSettings
from cfspark.train.step import StepConfig
from cfspark.train.warm import warm_start


def warm_start_from(
    settings: FitSettings, blocks: Blocks, user_cfg: StepConfig, item_cfg: StepConfig
) -> Callable[[], tuple[DataFrame, DataFrame]] | None:
    """initialModel's factors as train()'s start_from: a function, so that a resumable
    checkpoint of this fit wins and the warm start is then never built. None without one."""
    if settings.initialModel is None:
        return None
    earlier = settings.initialModel.load()
    if earlier.rank != settings.rank:
        raise ValueError(f"initialModel has rank {earlier.rank}, but this fit's rank is {settings.rank}")
    return lambda: warm_start(blocks, earlier.user_factors, earlier.item_factors, user_cfg, item_cfg, earlier.rows)
