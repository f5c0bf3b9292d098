"""The Python workers' cache of decoded InBlocks (blocks/cache.py) and the executor's block files
that back it (blocks/files.py): what a worker keeps, the same factors whether every block is
found or every task falls back to the InBlock DataFrame, and the cache and files released
when a fit ends."""

from __future__ import annotations

import os

import numpy as np
import pytest
from planted import planted_ratings
from pyspark.sql import functions as F

from cfspark import CollaborativeFilter
from cfspark.blocks import cache, files
from cfspark.blocks.cache import CacheKey, release_workers
from cfspark.kernels.block import Tiling
from cfspark.train.step import StepConfig, solve_rows

PARAMS = dict(rank=3, maxIter=3, tol=0.0, seed=11, regParam=0.05, numUserBlocks=3, numItemBlocks=2)
HALF_STEP_TASKS = (3 + 2) * 3  # one per block of each side and iteration


def _arrays(n: int) -> cache.Arrays:
    return {k: None if k in ("offset", "weight") else np.arange(n, dtype=t) for k, t in cache.STEP_COLUMNS.items()}


def test_a_block_file_maps_back_the_arrays_written_and_a_damaged_one_reads_as_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    arrays = _arrays(37) | {"y": np.linspace(-1, 1, 37), "weight": np.full(37, 0.5)}
    where = files.write("k", "item", 3, arrays)
    assert where == str(tmp_path / files.DIR_NAME / "k" / "item-3.blk")
    got = files.read("k", "item", 3)
    assert list(got) == list(arrays) and got["offset"] is None
    for name, a in arrays.items():
        if a is not None:
            assert got[name].dtype == a.dtype and np.array_equal(got[name], a)
            assert got[name].ctypes.data % files.ALIGN == 0 and not got[name].flags.writeable
    assert files.write("k", "item", 3, _arrays(5)) == where  # written once: the first copy stays
    assert len(files.read("k", "item", 3)["cols"]) == 37
    assert files.usage("k") == (1, os.path.getsize(where))
    with open(where, "r+b") as f:  # cut short: the header promises more than the file holds
        f.truncate(os.path.getsize(where) - files.ALIGN)
    assert files.read("k", "item", 3) is None
    with open(where, "wb") as f:
        f.write(b"not a block")
    assert files.read("k", "item", 3) is None and files.read("k", "item", 4) is None
    assert files.remove("k") == 1 and files.usage("k") == (0, 0) and files.remove("k") == 0


def test_a_worker_keeps_copies_of_one_blocks_key_within_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    cache.release()
    a, arrays = CacheKey("blocks-a", "user"), _arrays(100)
    size = cache.nbytes(arrays)
    assert size == 100 * (8 + 8 + 4 + 8 + 4 + 8 + 4 + 8 + 4 + 8)  # keys, row_ptr, cols, y, src, ... col_labels
    assert cache.keep(a, 0, arrays) and cache.keep(a, 1, arrays)
    got = cache.lookup(a, 1)
    assert got["cols"] is not arrays["cols"] and np.array_equal(got["cols"], arrays["cols"])
    assert got["offset"] is None and cache.lookup(CacheKey("blocks-a", "item"), 1) is None
    assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] == 2 * size
    assert files.usage("blocks-a")[0] == 2  # each block written once to the executor's files
    # Another worker of the executor (here: this one, its memory emptied) maps the file: no miss.
    cache._cache.clear()
    assert np.array_equal(cache.lookup(a, 1)["src"], arrays["src"])
    cache._cache.clear()
    files.remove("blocks-a")
    assert cache.lookup(a, 1) is None  # neither kept nor on disk: the fallback's turn
    assert cache.keep(a, 0, arrays) and cache.keep(a, 1, arrays)
    # Another Blocks' block replaces the first Blocks' ones, in memory and on disk.
    b = CacheKey("blocks-b", "item", budget_bytes=2 * size - 1)
    assert cache.keep(b, 0, arrays)
    assert cache.stats()["keys"] == ["blocks-b"] and cache.lookup(a, 0) is None
    assert files.usage("blocks-a") == (0, 0)
    assert not cache.keep(b, 1, arrays)  # a second block would pass the budget
    cold = CacheKey("blocks-b", "item", mode="cold")
    assert cache.lookup(cold, 0) is None and not cache.keep(cold, 2, arrays)
    assert cache.release("blocks-b") == 1 and cache.stats()["entries"] == 0
    assert cache.stats()["files"] == 0 and not os.listdir(tmp_path / files.DIR_NAME)


def test_a_kept_blocks_scratch_lends_its_tiling_to_the_next_half_step_and_goes_with_the_block(tmp_path, monkeypatch):
    """The kernel's tiling of a kept block's ratings lives in the block's scratch: the second
    half-step reuses it, solving exactly as a half-step that tiles afresh; its bytes count
    against the worker's budget, and it goes when the block goes."""
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    cache.release()
    rng = np.random.default_rng(5)
    row_ptr = np.r_[0, np.cumsum(rng.integers(1, 40, 30))].astype(np.int64)
    cols = rng.integers(0, 25, row_ptr[-1]).astype(np.int32)
    arrays = _arrays(len(cols)) | {"row_ptr": row_ptr, "cols": cols, "y": rng.normal(size=len(cols))}
    cfg = StepConfig(side="user", rank=3, loss="mse", reg=0.1, count_scaled=True)
    other, params = rng.normal(size=(25, cfg.width)), rng.normal(size=(30, cfg.width))
    key = CacheKey("blocks-s", "user")
    assert cache.scratch(key, 0) is None  # not kept here: nothing to keep beside it
    assert cache.keep(key, 0, arrays)
    kept = cache.scratch(key, 0)
    assert kept == {} and cache.scratch(key, 0) is kept

    def solve(scratch):
        return solve_rows(cfg, row_ptr, cols, arrays["y"], None, None, other, params.copy(), None, cache=scratch)[0]

    first = solve(kept)
    # Only what like= reads is kept: not the other side's vectors, the L2 weights or the last scores.
    assert kept["problem"].other.shape[0] == 1 and kept["problem"].weights.size == 0 and not kept["problem"]._last
    tiled = kept["problem"].ratings_nbytes
    assert tiled > 0 and cache.stats()["bytes"] == cache.nbytes(arrays) + tiled
    with monkeypatch.context() as m:
        m.setattr(Tiling, "of", classmethod(lambda *a, **k: pytest.fail("tiled again")))
        np.testing.assert_array_equal(solve(kept), first)
    np.testing.assert_array_equal(solve(None), first)  # tiled afresh: the same step
    # A budget with room for the arrays but not for about as much again keeps no scratch.
    cache.release()
    tight = CacheKey("blocks-t", "user", budget_bytes=cache.nbytes(arrays) + 1)
    assert cache.keep(tight, 0, arrays) and cache.scratch(tight, 0) is None
    assert cache.release() == 1 and cache.stats()["bytes"] == 0 and not cache._scratch


@pytest.fixture(scope="module")
def fits(spark):
    """Four fits in one session: with the cache, with every task missing it, with it again, and
    in float32. Each gives its factors, its blocks that missed, what every worker held after it,
    its training RMSE and the MiB of messages it sent."""
    p = planted_ratings(n_users=200, n_items=120, rank=3, density=0.2, noise=0.5, seed=2)
    ratings = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    out = {}
    runs = (("warm", "on", False), ("cold", "cold", False), ("again", "on", False), ("float32", "on", True))
    for name, mode, single in runs:
        os.environ["CFSPARK_BLOCK_CACHE"] = mode
        try:
            model = CollaborativeFilter(float32=single, **PARAMS).fit_validated(ratings)
        finally:
            del os.environ["CFSPARK_BLOCK_CACHE"]
        users = {r.user: [*r.features, r.bias] for r in model.user_factors.collect()}
        items = {r.item: [*r.features, r.bias] for r in model.item_factors.collect()}
        misses = sum(h["cache_misses"] for h in model.history)
        squared = model.transform(ratings).select(F.avg((F.col("prediction") - F.col("rating")) ** 2)).first()[0]
        sent = sum(h["message_mb"] for h in model.history)
        model.unpersist()
        held = release_workers(spark, "no-such-blocks", tasks=8)  # drops nothing, reports each worker
        out[name] = (users, items), misses, held, squared**0.5, sent
    ratings.unpersist()
    return out


@pytest.mark.slow
def test_a_cold_cache_for_every_task_gives_the_warm_caches_factors(fits):
    (warm, warm_misses, *_), (cold, cold_misses, *_) = fits["warm"], fits["cold"]
    assert cold_misses == HALF_STEP_TASKS  # every block of every half-step fell back to its InBlock
    # One executor: the setup's tasks wrote every block's file, so every worker finds every block,
    # however many workers there are and whichever tasks they get.
    assert warm_misses == 0 and fits["again"][1] == 0
    for w, c in zip(warm, cold, strict=True):
        ids = sorted(w)
        assert len(ids) > 100 and sorted(c) == ids
        np.testing.assert_allclose([c[i] for i in ids], [w[i] for i in ids], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_the_workers_hold_no_blocks_after_a_fit_not_even_after_a_second_one(fits):
    """The bound after each fit's release: no entry, no byte, no file, in any worker reached."""
    assert fits["again"][0] == fits["warm"][0]  # a second fit in the session, from a fresh cache
    for _, _, held, *_ in fits.values():
        assert len({r.pid for r in held}) >= 1
        assert [(r.entries, r.bytes, r.files, r.file_bytes) for r in held] == [(0, 0, 0, 0)] * len(held)


@pytest.mark.slow
def test_float32_messages_and_products_fit_the_planted_data_as_float64_does(fits):
    """The float32 Param: float32 gathers and products, and messages sent as float32 (half the
    bytes), against float64: the training RMSE agrees within 1e-4 relative."""
    (_, _, _, rmse64, sent64), (factors32, _, _, rmse32, sent32) = fits["warm"], fits["float32"]
    assert 0.3 < rmse64 < 0.6  # a real fit: the planted noise is 0.5
    assert abs(rmse32 - rmse64) <= 1e-4 * rmse64
    assert abs(sent32 - sent64 / 2) <= 0.001 * PARAMS["maxIter"]  # message_mb is rounded to 0.001
    assert factors32 != fits["warm"][0]  # the float32 path ran


def test_a_key_folder_removed_by_another_worker_meanwhile_is_not_an_error(tmp_path, monkeypatch):
    """Two workers of one executor may release the same key at once: the later one finds the
    folder gone between asking for it and listing it, and removes (and counts) nothing."""
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    files.write("k", "user", 0, _arrays(5))
    assert files.usage("k")[0] == 1

    def gone(folder):
        raise FileNotFoundError(folder)

    monkeypatch.setattr(files.os, "listdir", gone)
    assert files.remove("k") == 0 and files.usage("k") == (0, 0)
    monkeypatch.undo()
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    assert files.remove("k") == 1 and files.usage("k") == (0, 0)
