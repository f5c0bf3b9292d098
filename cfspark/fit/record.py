"""FitRecord: what a fit path returns, and the fit summary, written once for every path.

A record is plain data: the estimator (ml/) wraps it in a model. A record that is live
(passed to on_iteration between iterations) has the same shape as a final one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame

from cfspark.core.schema import ITEM, RATING, USER, WEIGHT


@dataclass
class FitRecord:
    user_factors: DataFrame  # (user, features, bias): w_j and b_j
    item_factors: DataFrame  # (item, features, bias): x_i and c_i
    item_stats: DataFrame  # mse: (item, item_mean, ratings); bce: (item, …, item_offset)
    global_baseline: float  # the global mean (mse), or logit of the global rate (bce)
    training_pairs: DataFrame | None  # (user, item, rating): excluded from recommendations by default
    summary: dict[str, Any]  # fit_summary's fields, and reg_path, exposure, positive_only where they apply
    params: dict[str, Any] = field(default_factory=dict)  # Params this fit set (FitSettings.carried)
    rank: int = 0
    exposure: FitRecord | None = None  # bce with exposure: the exposure part, P(exposed)


def fit_summary(
    reg: float,
    history: list[dict],
    stop_reason: str,
    *,
    setup_seconds: float,
    resumed_from: int,
    num_user_blocks: int,
    num_item_blocks: int,
    **extra: Any,
) -> dict[str, Any]:
    """A model's summary of its fit: λ, one history entry per iteration, why it stopped,
    setup seconds, the iteration it resumed from, and its block counts (then extra)."""
    return {
        "reg": reg,
        "history": history,
        "stop_reason": stop_reason,
        "setup_seconds": setup_seconds,
        "resumed_from": resumed_from,
        "num_user_blocks": num_user_blocks,
        "num_item_blocks": num_item_blocks,
        **extra,
    }


def training_pairs(train_ratings: DataFrame | None) -> DataFrame | None:
    """The training pairs a model keeps: the (cached) ratings themselves when they are just
    (user, item, rating[, weight]), so that model.unpersist() releases the cache fit() made."""
    if train_ratings is None or train_ratings.columns in ([USER, ITEM, RATING], [USER, ITEM, RATING, WEIGHT]):
        return train_ratings
    return train_ratings.select(USER, ITEM, RATING)


def exposure_summary(exposure: FitRecord) -> dict:
    """What the preference record's summary says of its exposure part: its λ, history and stop,
    and the search that chose its λ, if one did."""
    keys = ("reg", "history", "stop_reason", *(k for k in ("reg_search", "reg_path") if k in exposure.summary))
    return {k: exposure.summary.get(k) for k in keys}
