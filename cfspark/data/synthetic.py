"""Synthetic ratings from a planted model, generated in Spark from spark.range.

Every random value is a hash of (id, seed, purpose), never a driver-side array, so
the data is the same however it is partitioned and scales to tens of millions of
rows. y = m_i + c_j + u_j·v_i + ε (explicit), or y ~ Bernoulli(σ(m_i + c_j + u_j·v_i))
(binary). Users and items are drawn with a power-law popularity skew, or with
lognormal popularity (each entity's expected share of ratings ∝ exp(σ·z), z standard
normal), which is closer to real catalogues' long tails at σ ≥ 1.5.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cfspark.core.errors import ConfigError
from cfspark.core.fs import is_local, local_path, write_json
from cfspark.core.ownership import mark, owned_or_refuse

_UNIT = 2**53


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: sizes, the planted model, and popularity skew (0 = uniform)."""

    users: int = 10_000
    items: int = 2_000
    ratings: int = 200_000
    rank: int = 10
    noise: float = 0.7
    user_skew: float = 0.5
    item_skew: float = 1.0
    # σ > 0: lognormal popularity with this σ instead of the power-law skew above.
    user_sigma: float = 0.0
    item_sigma: float = 0.0
    binary: bool = False
    seed: int = 0
    base: float = 3.5
    item_sd: float = 0.5
    user_sd: float = 0.3


def uniform(*cols: Column) -> Column:
    """U(0, 1) from a hash of the columns."""
    return F.pmod(F.xxhash64(*cols), F.lit(_UNIT)).cast("double") / float(_UNIT)


def normal(*cols: Column) -> Column:
    """N(0, 1) by Box–Muller from two hashed uniforms."""
    u1 = F.lit(1.0) - uniform(*cols, F.lit("a"))
    u2 = uniform(*cols, F.lit("b"))
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2 * math.pi) * u2)


def _factors(spark: SparkSession, n: int, name: str, spec: SyntheticSpec, effect_sd: float, effect_mean: float):
    """(id, factors array<double>, effect double) for ids 0..n−1: the planted parameters."""
    idx = F.col("id")
    scale = spec.rank**-0.25  # so that u·v has unit variance
    factors = F.array(*[normal(idx, F.lit(spec.seed), F.lit(f"{name}{d}")) * scale for d in range(spec.rank)])
    effect = F.lit(effect_mean) + normal(idx, F.lit(spec.seed), F.lit(f"{name}_effect")) * effect_sd
    return spark.range(n).select(idx.alias(name), factors.alias("factors"), effect.alias("effect"))


def _skewed(n: int, skew: float, *cols: Column) -> Column:
    """An index in [0, n) with P(index ≤ x) = (x/n)^(1/(1+skew)): low indices are popular."""
    return F.least(F.floor(F.pow(uniform(*cols), F.lit(1.0 + skew)) * n), F.lit(n - 1)).cast("long")


def _phi(x: Column) -> Column:
    """The standard normal CDF, by Abramowitz and Stegun 7.1.26 (error below 1.5e-7)."""
    z = F.abs(x) / math.sqrt(2.0)
    t = F.lit(1.0) / (F.lit(1.0) + F.lit(0.3275911) * z)
    poly = F.lit(0.0)
    for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = (poly + F.lit(a)) * t
    erf = F.lit(1.0) - poly * F.exp(-z * z)
    return F.when(x >= 0, (F.lit(1.0) + erf) / 2).otherwise((F.lit(1.0) - erf) / 2)


def _lognormal(n: int, sigma: float, *cols: Column) -> Column:
    """An index in [0, n) drawn with lognormal popularity: index i, the (i + ½)/n upper
    quantile of z, weighs exp(σ·z). The top fraction p of indices holds Φ(σ + Φ⁻¹(p)) of
    the draws, so a draw is index ⌊n·Φ(g − σ)⌋ with g = Φ⁻¹(u), u ~ U(0, 1): a standard
    normal, here a hashed one."""
    return F.least(F.floor(_phi(normal(*cols) - F.lit(sigma)) * n), F.lit(n - 1)).cast("long")


def _draw(n: int, skew: float, sigma: float, *cols: Column) -> Column:
    return _lognormal(n, sigma, *cols) if sigma > 0 else _skewed(n, skew, *cols)


def generate(spark: SparkSession, spec: SyntheticSpec) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(ratings, planted users, planted items): ratings has exactly spec.ratings distinct pairs."""
    for name in ("users", "items", "ratings", "rank"):
        if getattr(spec, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(spec, name)}")
    for name in ("noise", "user_skew", "item_skew", "user_sigma", "item_sigma", "item_sd", "user_sd"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value >= 0):  # a spread or a skew: negative means nothing
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number of at least 0, got {value}")
    if spec.ratings > spec.users * spec.items:
        raise ConfigError(f"{spec.ratings} ratings do not fit in {spec.users} × {spec.items} distinct pairs")
    users = _factors(spark, spec.users, "user", spec, spec.user_sd, 0.0)
    items = _factors(spark, spec.items, "item", spec, spec.item_sd, spec.base)
    seed = F.lit(spec.seed)
    # Draw more pairs than needed, drop repeats, and keep the pairs with the smallest hash.
    draws = spark.range(int(spec.ratings * 1.3) + 1000).select(
        _draw(spec.users, spec.user_skew, spec.user_sigma, F.col("id"), seed, F.lit("u")).alias("user"),
        _draw(spec.items, spec.item_skew, spec.item_sigma, F.col("id"), seed, F.lit("i")).alias("item"),
    )
    pairs = draws.dropDuplicates(["user", "item"])
    pairs = pairs.withColumn("_h", F.xxhash64("user", "item", seed)).orderBy("_h", "user", "item").limit(spec.ratings)
    u = users.select("user", F.col("factors").alias("_u"), F.col("effect").alias("_c"))
    v = items.select("item", F.col("factors").alias("_v"), F.col("effect").alias("_m"))
    dot = F.aggregate(F.zip_with("_u", "_v", lambda a, b: a * b), F.lit(0.0), lambda acc, x: acc + x)
    signal = F.col("_m") + F.col("_c") + dot
    joined = pairs.join(F.broadcast(u) if spec.users <= 200_000 else u, "user").join(
        F.broadcast(v) if spec.items <= 200_000 else v, "item"
    )
    if spec.binary:
        p = F.lit(1.0) / (F.lit(1.0) + F.exp(-signal))
        rating = (uniform(F.col("user"), F.col("item"), seed, F.lit("y")) < p).cast("double")
    else:
        rating = signal + normal(F.col("user"), F.col("item"), seed, F.lit("noise")) * spec.noise
    return joined.select("user", "item", rating.alias("rating")), users, items


def write_synthetic(spark: SparkSession, spec: SyntheticSpec, path: str) -> dict:
    """Write ratings/, planted_users/, planted_items/ and spec.json under path.

    Each folder is replaced only if cfspark made it (the ownership rule, core/ownership.py):
    on a local path, one of the user's own is refused before anything is written, and each
    written folder gets the marker."""
    tables = dict(zip(("ratings", "planted_users", "planted_items"), generate(spark, spec), strict=True))
    local = is_local(path)
    for name in tables if local else ():
        owned_or_refuse("--output's folder", os.path.join(local_path(path), name), "generating into it")
    for name, df in tables.items():
        df.write.mode("overwrite").parquet(f"{path}/{name}")
        if local:
            mark(os.path.join(local_path(path), name))
    info = {**asdict(spec), "noise_floor_rmse": None if spec.binary else spec.noise}
    if local:
        write_json(f"{local_path(path)}/spec.json", info)
    return info
