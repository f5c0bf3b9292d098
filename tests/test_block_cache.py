"""The Python workers' cache of decoded InBlocks (blocks/cache.py): what a worker keeps, the
same factors whether every block is found or every task falls back to the InBlock
DataFrame, and the cache released when a fit ends."""

from __future__ import annotations

import os

import numpy as np
import pytest
from planted import planted_ratings

from cfspark import CollaborativeFilter
from cfspark.blocks import cache
from cfspark.blocks.cache import CacheKey, release_workers

PARAMS = dict(rank=3, maxIter=3, tol=0.0, seed=11, regParam=0.05, numUserBlocks=3, numItemBlocks=2)
HALF_STEP_TASKS = (3 + 2) * 3  # one per block of each side and iteration


def _arrays(n: int) -> cache.Arrays:
    return {k: None if k in ("offset", "weight") else np.arange(n, dtype=t) for k, t in cache.STEP_COLUMNS.items()}


def test_a_worker_keeps_copies_of_one_blocks_key_within_its_budget():
    cache.release()
    a, arrays = CacheKey("blocks-a", "user"), _arrays(100)
    size = cache.nbytes(arrays)
    assert size == 100 * (8 + 4 + 8 + 4 + 8 + 4 + 8 + 4)
    assert cache.keep(a, 0, arrays) and cache.keep(a, 1, arrays)
    got = cache.lookup(a, 1)
    assert got["cols"] is not arrays["cols"] and np.array_equal(got["cols"], arrays["cols"])
    assert got["offset"] is None and cache.lookup(CacheKey("blocks-a", "item"), 1) is None
    assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] == 2 * size
    # Another Blocks' block replaces the first Blocks' ones.
    b = CacheKey("blocks-b", "item", budget_bytes=2 * size - 1)
    assert cache.keep(b, 0, arrays)
    assert cache.stats()["keys"] == ["blocks-b"] and cache.lookup(a, 0) is None
    assert not cache.keep(b, 1, arrays)  # a second block would pass the budget
    cold = CacheKey("blocks-b", "item", mode="cold")
    assert cache.lookup(cold, 0) is None and not cache.keep(cold, 2, arrays)
    assert cache.release("blocks-b") == 1 and cache.stats()["entries"] == 0


@pytest.fixture(scope="module")
def fits(spark):
    """Three fits in one session: with the cache, with every task missing it, and with it again.
    Each gives its factors, its blocks that missed, and what every worker held after it."""
    p = planted_ratings(n_users=200, n_items=120, rank=3, density=0.2, noise=0.5, seed=2)
    ratings = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    out = {}
    for name, mode in (("warm", "on"), ("cold", "cold"), ("again", "on")):
        os.environ["CFSPARK_BLOCK_CACHE"] = mode
        try:
            model = CollaborativeFilter(**PARAMS).fit_validated(ratings)
        finally:
            del os.environ["CFSPARK_BLOCK_CACHE"]
        users = {r.user: [*r.features, r.bias] for r in model.user_factors.collect()}
        items = {r.item: [*r.features, r.bias] for r in model.item_factors.collect()}
        misses = sum(h["cache_misses"] for h in model.history)
        model.unpersist()
        held = release_workers(spark, "no-such-blocks", tasks=8)  # drops nothing, reports each worker
        out[name] = (users, items), misses, held
    ratings.unpersist()
    return out


@pytest.mark.slow
def test_a_cold_cache_for_every_task_gives_the_warm_caches_factors(fits):
    (warm, warm_misses, _), (cold, cold_misses, _) = fits["warm"], fits["cold"]
    assert cold_misses == HALF_STEP_TASKS  # every block of every half-step fell back to its InBlock
    assert warm_misses < HALF_STEP_TASKS  # the workers kept blocks, and found them
    for w, c in zip(warm, cold, strict=True):
        ids = sorted(w)
        assert len(ids) > 100 and sorted(c) == ids
        np.testing.assert_allclose([c[i] for i in ids], [w[i] for i in ids], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_the_workers_hold_no_blocks_after_a_fit_not_even_after_a_second_one(fits):
    assert fits["again"][0] == fits["warm"][0]  # a second fit in the session, from a fresh cache
    for _, _, held in fits.values():
        assert len({r.pid for r in held}) >= 1
        assert [(r.entries, r.bytes) for r in held] == [(0, 0)] * len(held)
