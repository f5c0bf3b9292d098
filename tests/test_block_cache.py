"""The Python workers' cache of decoded InBlocks (blocks/cache.py): what a worker keeps, the
same factors whether every block is found or every task falls back to the InBlock
DataFrame, and the cache released when a fit ends."""

from __future__ import annotations

import numpy as np
import pytest
from planted import planted_ratings

from cfspark import CollaborativeFilter
from cfspark.blocks import cache
from cfspark.blocks.cache import CacheKey, release_workers

PARAMS = dict(rank=3, maxIter=5, tol=0.0, seed=11, regParam=0.05, numUserBlocks=3, numItemBlocks=2)
HALF_STEP_TASKS = (3 + 2) * 5  # one per block of each side and iteration


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
def ratings(spark):
    p = planted_ratings(n_users=200, n_items=120, rank=3, density=0.2, noise=0.5, seed=2)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    yield df
    df.unpersist()


def _fit(ratings, monkeypatch, mode: str) -> tuple[dict, dict, int]:
    monkeypatch.setenv("CFSPARK_BLOCK_CACHE", mode)
    model = CollaborativeFilter(**PARAMS).fit_validated(ratings)
    users = {r.user: [*r.features, r.bias] for r in model.user_factors.collect()}
    items = {r.item: [*r.features, r.bias] for r in model.item_factors.collect()}
    misses = sum(h["cache_misses"] for h in model.history)
    model.unpersist()
    return users, items, misses


def test_a_cold_cache_for_every_task_gives_the_warm_caches_factors(ratings, monkeypatch):
    warm_users, warm_items, warm_misses = _fit(ratings, monkeypatch, "on")
    cold_users, cold_items, cold_misses = _fit(ratings, monkeypatch, "cold")
    off_users, off_items, off_misses = _fit(ratings, monkeypatch, "off")
    assert cold_misses == HALF_STEP_TASKS  # every block of every half-step fell back
    assert warm_misses < HALF_STEP_TASKS and off_misses == 0  # found blocks: the workers kept them
    for warm, *others in ((warm_users, cold_users, off_users), (warm_items, cold_items, off_items)):
        ids = sorted(warm)
        assert len(ids) > 100 and all(sorted(o) == ids for o in others)
        expected = np.array([warm[i] for i in ids])
        for other in others:
            np.testing.assert_allclose(np.array([other[i] for i in ids]), expected, rtol=0, atol=1e-9)


def test_the_workers_hold_no_blocks_after_a_fit_not_even_after_a_second_one(spark, ratings, monkeypatch):
    for _ in range(2):
        _fit(ratings, monkeypatch, "on")
        held = release_workers(spark, "no-such-blocks", tasks=8)  # drops nothing, reports each worker
        assert len({r.pid for r in held}) >= 1
        assert [(r.entries, r.bytes) for r in held] == [(0, 0)] * len(held)
