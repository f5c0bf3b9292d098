"""A warm start: the first state tables of a blockwise fit, from initialModel's factors."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame

from cfspark.blocks.build import Blocks
from cfspark.fit.settings import Earlier, FitSettings, InitialModel
from cfspark.train.step import StepConfig
from cfspark.train.warm import warm_start


def warm_rank(settings: FitSettings) -> FitSettings:
    """A warm start keeps its model's rank, at most this fit's: automatic λ's rank step may
    have kept fewer directions than the rank asked for (rank is then a cap, as in the search),
    and the model read here is the one the fit starts from, not read again."""
    if settings.initialModel is None:
        return settings
    earlier = settings.initialModel.load()
    if earlier.rank > settings.rank:
        raise ValueError(f"initialModel has rank {earlier.rank}, above this fit's rank {settings.rank}")
    return settings.replace(rank=earlier.rank, initialModel=InitialModel(settings.initialModel.name, lambda: earlier))


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


def search_start(factors: tuple[DataFrame, DataFrame, tuple[int, int]], rank: int) -> InitialModel:
    """An automatic search's factor tables at its choice (user, item, their row counts), at rank,
    as the initialModel a blockwise fit at that choice starts from: fewer iterations than from
    the hashed init, and past the zero-factor saddle (train/search_task.py's start_from_search)."""
    users, items, rows = factors
    start = Earlier("automatic-λ-search", rank, users, items, rows=rows)
    return InitialModel("automatic λ's search", lambda: start)
