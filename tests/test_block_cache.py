"""The Python workers' cache of decoded InBlocks (blocks/cache.py) and the executor's block files
that back it (blocks/files.py): what a worker keeps, the same factors whether every block is
found or every task falls back to the InBlock DataFrame, and the cache and files released
when a fit ends."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pytest
from planted import planted_ratings
from pyspark.sql import functions as F

from cfspark import CollaborativeFilter
from cfspark.blocks import cache, files
from cfspark.blocks.cache import START_COLUMNS, CacheKey, release_workers
from cfspark.blocks.partitioning import PART
from cfspark.fit.blockwise import setup
from cfspark.kernels.block import SMALL_GEMM, TILE, TiledRatings, Tiling
from cfspark.kernels.layout import width
from cfspark.train.arrow_bodies import OUT_SCHEMA, init_blocks
from cfspark.train.step import StepConfig, solve_rows
from cfspark.train.trainer import cache_keys, start_of, train

PARAMS = dict(rank=3, maxIter=3, tol=0.0, seed=11, regParam=0.05, numUserBlocks=3, numItemBlocks=2)
HALF_STEP_TASKS = (3 + 2) * 3  # one per block of each side and iteration


def _arrays(n: int) -> cache.Arrays:
    return {k: None if k in ("offset", "weight") else np.arange(n, dtype=t) for k, t in cache.STEP_COLUMNS.items()}


def test_a_block_file_maps_back_the_arrays_written_and_a_damaged_one_reads_as_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    # Written from each array's own buffer: a strided view, an empty array and a read-only
    # view of Arrow's memory (what a decoded InBlock holds) come back as they were.
    every_other = np.arange(74, dtype=np.int32)[::2]
    arrow_view = np.frombuffer(np.arange(38, dtype=np.int64).tobytes(), dtype=np.int64)[1:]
    arrays = _arrays(37) | {"y": np.linspace(-1, 1, 37), "weight": np.full(37, 0.5), "cols": every_other,
                            "out_idx": np.empty(0, np.int32), "keys": arrow_view}  # fmt: skip
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
    assert isinstance(kept["problem"], TiledRatings) and kept["problem"].pad == 25
    tiled = kept["problem"].nbytes
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


def _skewed_block(rng, *, rank: int, loss: str, extras: bool):
    """A block of 40 light rows, one empty and two heavy ones (9,000 and 4,097 ratings: runs of
    the tiling at rank 3), against 500 rows of the other side; offsets and weights if extras."""
    counts = np.r_[rng.integers(1, 60, 40), 0, 9_000, 4_097]
    row_ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    nnz = int(row_ptr[-1])
    y = rng.integers(0, 2, nnz).astype(float) if loss == "bce" else rng.normal(3.5, 1.0, nnz)
    arrays = _arrays(nnz) | {"row_ptr": row_ptr, "cols": rng.integers(0, 500, nnz).astype(np.int32), "y": y}
    if extras:
        arrays |= {"offset": rng.normal(0.0, 0.3, nnz), "weight": rng.choice([0.25, 1.0, 3.0], nnz)}
    cfg = StepConfig(side="item", rank=rank, loss=loss, reg=0.1, count_scaled=True, bias_reg=5.0)
    other, params = rng.normal(0.0, 0.3, (500, cfg.width)), rng.normal(0.0, 0.3, (len(counts), cfg.width))
    return arrays, cfg, other, params


def _another_worker() -> None:
    """This worker as another of the executor would be: nothing in memory, the files there."""
    cache._cache.clear()
    cache._scratch.clear()
    cache._shared.clear()


def _solve(cfg, arrays, other, params, scratch):
    a = arrays
    return solve_rows(cfg, a["row_ptr"], a["cols"], a["y"], a["offset"], a["weight"], other, params.copy(), None,
                      cache=scratch)  # fmt: skip


def _same_tiling(got: TiledRatings, built: TiledRatings) -> None:
    """Array for array, and tile for tile."""
    assert got.tiling.tiles == built.tiling.tiles and (got.pad, got.tiling.run) == (built.pad, built.tiling.run)
    mine, theirs = got.arrays(), built.arrays()
    assert list(mine) == list(theirs)
    for name, a in theirs.items():
        assert (mine[name] is None) == (a is None), name
        if a is not None:
            assert mine[name].dtype == a.dtype and np.array_equal(mine[name], a), name


@pytest.mark.parametrize(("loss", "extras"), [("mse", False), ("bce", False), ("bce", True)])
def test_a_worker_that_maps_a_block_gets_its_tiling_from_the_worker_that_built_it(tmp_path, monkeypatch, loss, extras):
    """The first worker to tile a block writes the tiling beside the block's file (cache.share);
    another worker of the executor that maps the block maps the tiling too, read-only, builds
    nothing, and its half-step gives the params of one that tiles afresh, to the bit."""
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    cache.release()
    arrays, cfg, other, params = _skewed_block(np.random.default_rng(7), rank=3, loss=loss, extras=extras)
    key = CacheKey("blocks-m", "item")
    afresh: dict = {}
    built = _solve(cfg, arrays, other, params, afresh)[0]  # no cache at all: tiled here
    assert any(t.piece for t in afresh["problem"].tiling.tiles)  # the heavy rows' runs are there
    # The first worker: no tiling file yet, so its half-step tiles, and then writes the tiling.
    assert cache.keep(key, 0, arrays) and cache.scratch(key, 0) == {}
    np.testing.assert_array_equal(_solve(cfg, arrays, other, params, cache.scratch(key, 0))[0], built)
    assert cache.share(key, 0) and os.path.exists(files.path("blocks-m", "item", 0, files.TILING))
    assert files.usage("blocks-m")[0] == 2  # the block's file and its tiling's
    # Another worker of the executor (this one, its memory emptied) maps both files.
    _another_worker()
    assert cache.lookup(key, 0) is not None
    mapped = cache.scratch(key, 0)["problem"]
    _same_tiling(mapped, afresh["problem"])
    held = [mapped.rows, mapped.tiling.index, mapped.tiling.order, *mapped.tiled.values(), mapped.valid]
    # valid: which positions are ratings, read where the ratings carry no weights and the loss scores padding.
    assert (mapped.valid is None) == (loss == "mse" or extras) and (mapped.tiled["offset"] is None) == (not extras)
    assert not any(a.flags.writeable for a in held if a is not None)
    # Its bytes count against the worker's budget, as a tiling it built would.
    assert cache.stats()["bytes"] == cache.nbytes(cache.lookup(key, 0)) + mapped.nbytes
    with monkeypatch.context() as m:  # built nowhere: the kernel only reads the read-only maps
        m.setattr(Tiling, "of", classmethod(lambda *a, **k: pytest.fail("tiled again")))
        m.setattr(files, "write", lambda *a, **k: pytest.fail("written again"))
        again, _, losses = _solve(cfg, arrays, other, params, cache.scratch(key, 0))
        assert cache.share(key, 0)
    np.testing.assert_array_equal(again, built)
    assert losses == _solve(cfg, arrays, other, params, None)[2]
    # Released with the block: both files go.
    assert cache.release("blocks-m") == 1 and files.usage("blocks-m") == (0, 0) and not cache._shared


def test_a_damaged_tiling_file_reads_as_a_miss_and_is_built_and_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CFSPARK_BLOCK_DIR", str(tmp_path))
    cache.release()
    arrays, cfg, other, params = _skewed_block(np.random.default_rng(8), rank=3, loss="bce", extras=True)
    key = CacheKey("blocks-d", "item")
    built = _solve(cfg, arrays, other, params, None)[0]
    assert cache.keep(key, 0, arrays)
    _solve(cfg, arrays, other, params, cache.scratch(key, 0))
    assert cache.share(key, 0)
    where = files.path("blocks-d", "item", 0, files.TILING)
    with open(where, "rb") as f:
        whole = f.read()
    tiled = []
    real_of = Tiling.of.__func__
    monkeypatch.setattr(Tiling, "of", classmethod(lambda cls, *a, **k: tiled.append(1) or real_of(cls, *a, **k)))

    def another_worker(damage) -> np.ndarray:
        """A worker that maps the block after the tiling file was damaged: its half-step."""
        with open(where, "wb") as f:
            f.write(damage(whole))
        _another_worker()
        assert cache.lookup(key, 0) is not None and cache.scratch(key, 0) == {}  # a miss, not an error
        stepped = _solve(cfg, arrays, other, params, cache.scratch(key, 0))[0]
        assert cache.share(key, 0)
        with open(where, "rb") as f:
            assert f.read() == whole  # written whole again
        return stepped

    def header(edit):
        """The file with its JSON header edited (its length kept, so the arrays stay where they are)."""
        size = int.from_bytes(whole[8:16], "little")
        head = edit(whole[16 : 16 + size].decode()).encode()
        assert len(head) == size
        return whole[:16] + head + whole[16 + size :]

    damages = {
        "cut short": lambda b: b[: len(b) // 2],
        "empty": lambda b: b"",
        "not a file of arrays": lambda b: b"x" * 100,
        "an array missing": lambda b: header(lambda h: h.replace('"rows"', '"rowz"')),
        "a wrong dtype": lambda b: header(lambda h: h.replace('"order": ["<i8"', '"order": ["<f8"')),
    }
    for name, damage in damages.items():
        tiled.clear()
        np.testing.assert_array_equal(another_worker(damage), built, err_msg=name)
        assert tiled == [1], name  # built once, by the worker that found the file damaged
    cache.release()


def test_tiled_ratings_read_back_from_their_arrays_only_where_they_fit_together():
    arrays, cfg, other, params = _skewed_block(np.random.default_rng(10), rank=3, loss="bce", extras=True)
    kept: dict = {}
    _solve(cfg, arrays, other, params, kept)
    flat = kept["problem"].arrays()
    _same_tiling(TiledRatings.from_arrays(flat), kept["problem"])
    positions = len(flat["index"])
    tiles = flat["tiles"].reshape(-1, 5)
    past = tiles.copy()
    past[-1, 0] = positions  # a tile that starts at the end
    beyond = tiles.copy()
    beyond[0, 3] = len(flat["order"])  # a tile of rows past the last
    for name, bad in {
        "a tile past the positions": flat | {"tiles": past.reshape(-1)},
        "a tile past the rows": flat | {"tiles": beyond.reshape(-1)},
        "tiles of another shape": flat | {"tiles": flat["tiles"][:-1]},
        "fewer ratings than rows says": flat | {"rows": flat["rows"][:-1]},
        "tiled y of another length": flat | {"tiled_y": flat["tiled_y"][:-1]},
        "cols of another dtype": flat | {"tiled_cols": flat["tiled_cols"].astype(np.int32)},
        "no index": {k: v for k, v in flat.items() if k != "index"},
        "no shape": flat | {"shape": None},
    }.items():
        assert TiledRatings.from_arrays(bad) is None, name


def test_a_tiling_made_for_another_run_length_or_other_side_is_not_borrowed():
    """like= is used only where it fits the call: a rank-20 tiling of the same ratings (runs of
    1,890 ratings, not 4,096) or one against another count of other-side rows is ignored, and
    the problem tiles afresh, so the step is the fresh one's to the bit."""
    arrays, cfg, other, params = _skewed_block(np.random.default_rng(9), rank=3, loss="mse", extras=False)
    assert SMALL_GEMM // (width(20) + 1) ** 2 < TILE
    _, _, other20, params20 = _skewed_block(np.random.default_rng(9), rank=20, loss="mse", extras=False)
    cfg20 = StepConfig(side="item", rank=20, loss="mse", reg=0.1, count_scaled=True, bias_reg=5.0)
    kept20: dict = {}
    _solve(cfg20, arrays, other20, params20, kept20)
    built = _solve(cfg, arrays, other, params, None)[0]
    np.testing.assert_array_equal(_solve(cfg, arrays, other, params, kept20)[0], built)
    assert kept20["problem"].tiling.run == TILE  # what the rank-3 half-step kept instead
    kept: dict = {}
    _solve(cfg, arrays, other, params, kept)
    fewer = other[:-1]
    arrays_fewer = arrays | {"cols": np.minimum(arrays["cols"], len(fewer) - 1).astype(np.int32)}
    np.testing.assert_array_equal(_solve(cfg, arrays_fewer, fewer, params, kept)[0],
                                  _solve(cfg, arrays_fewer, fewer, params, None)[0])  # fmt: skip


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


def _block_files(spark, key: str) -> set[tuple[int, int]]:
    """(files, bytes) of one Blocks key's block files, as each of a few small tasks finds them
    (local mode: one executor, so one directory, whichever worker runs the task)."""

    def body(batches):
        for _ in batches:
            pass
        found, size = files.usage(key)
        yield pa.RecordBatch.from_pylist([{"files": found, "bytes": size}])

    return {(r.files, r.bytes) for r in spark.range(0, 4, 1, 4).mapInArrow(body, "files long, bytes long").collect()}


@pytest.fixture(scope="module")
def planted_df(spark):
    p = planted_ratings(n_users=200, n_items=120, rank=3, density=0.2, noise=0.5, seed=2)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    yield df
    df.unpersist()


def _states(tables) -> list:
    return [sorted((r.dest, r.src, bytes(r.params)) for r in t.select("dest", "src", "params").collect())
            for t in tables]  # fmt: skip


def test_setup_keeps_every_block_it_packs_and_a_start_reads_only_their_ids_keys_and_outblocks(spark, planted_df):
    """The pack job's workers keep the blocks they pack (a file each, before any start), so the
    start reads the InBlocks' small columns, never their ratings, and starts the same rows from
    the same values as a start over the whole InBlocks; the files go with the blocks."""
    settings = CollaborativeFilter(biasReg=5.0, **PARAMS).fit_settings()
    blocks, stats, _ = setup(settings, planted_df)
    keys = cache_keys(blocks)
    assert blocks.kept == keys and keys["user"].mode == "on"
    ((count, size),) = _block_files(spark, blocks.key)
    assert count == 3 + 2 and size > 0  # every block of both sides, before anything reads them
    view = blocks.kept_view("item", keys["item"])
    assert view.columns == [*START_COLUMNS, PART] and "cols" not in view.columns and "y" not in view.columns
    assert blocks.kept_view("item", None) is None  # a cache off since setup: the whole InBlocks
    cfgs = {s: settings.step_config(s) for s in ("user", "item")}
    slim = _states([start_of(blocks, s, cfgs[s], keys) for s in ("user", "item")])
    whole = _states([blocks.inblocks(s).mapInArrow(init_blocks(cfgs[s], send=s == "item"), OUT_SCHEMA)
                     for s in ("user", "item")])  # fmt: skip
    assert slim == whole and len(slim[0]) == 3 and len(slim[1]) > 2  # the items' messages too
    blocks.unpersist(), stats.unpersist()
    assert _block_files(spark, blocks.key) == {(0, 0)}


@pytest.mark.slow
def test_blocks_whose_files_are_gone_after_setup_fall_back_to_their_inblocks_and_the_same_factors(spark, planted_df):
    """Setup keeps the blocks, but a worker may be new or its files lost before the first
    half-step: those blocks come from their InBlocks, once, and the factors are the same."""
    settings = CollaborativeFilter(biasReg=5.0, **PARAMS).fit_settings()
    cfgs = settings.step_config("user"), settings.step_config("item")

    def fit(lose: bool):
        blocks, stats, _ = setup(settings, planted_df)
        if lose:  # every worker reached drops its kept blocks, and the executor's files go
            release_workers(spark, blocks.key, tasks=16)
            assert _block_files(spark, blocks.key) == {(0, 0)}
        result = train(blocks, *cfgs, max_iter=2, tol=0.0)
        states = result.user_state(), result.item_state()
        factors = [{r.dest: np.frombuffer(r.params) for r in t.collect()} for t in states]
        misses = [h["cache_misses"] for h in result.history]
        blocks.unpersist(), stats.unpersist()
        return factors, misses

    (kept, kept_misses), (lost, lost_misses) = fit(False), fit(True)
    assert kept_misses == [0, 0] and lost_misses == [3 + 2, 0]  # the first half-steps keep them again
    for k, lo in zip(kept, lost, strict=True):
        assert sorted(k) == sorted(lo) and len(k) >= 2
        for dest in k:
            np.testing.assert_allclose(lo[dest], k[dest], rtol=0, atol=1e-9)


def test_blocks_with_label_counts_are_kept_as_labelled_for_the_sampled_half_steps(spark):
    """Fresh 0-labels need each InBlock's col_labels, added after the pack: the workers keep the
    labelled blocks, so each kept file holds the InBlock's arrays, col_labels too."""
    from cfspark.blocks.build import build_blocks

    rng = np.random.default_rng(5)
    u, i = np.nonzero(rng.random((40, 30)) < 0.3)
    targets = spark.createDataFrame(
        [(int(a), int(b), 1.0) for a, b in zip(u, i, strict=True)], "user long, item long, y double"
    ).selectExpr("*", "cast(null as double) as offset", "cast(null as double) as weight")
    counts = np.bincount(i, minlength=30)
    baseline = spark.createDataFrame([(b, 0.0, int(n)) for b, n in enumerate(counts) if n],
                                     "item long, baseline double, ratings long")  # fmt: skip
    blocks = build_blocks(targets, baseline, num_user_blocks=2, num_item_blocks=3, seed=1, label_counts=True)
    assert blocks.kept is not None and blocks.kept == cache_keys(blocks)
    key = blocks.key

    def _digest(arrays: cache.Arrays) -> str:  # local: the workers unpickle it by value
        """One string for a block's arrays, by name: equal for equal dtypes and bytes."""
        parts = [f"{n}:-" if a is None else f"{n}:{a.dtype.str}:{a.tobytes().hex()}" for n, a in sorted(arrays.items())]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    schema = pa.schema([("block", pa.int32()), ("digest", pa.string())])

    def body(batches):
        for batch in batches:
            for r in range(batch.num_rows):
                side, block = batch.column("side")[r].as_py(), batch.column("block")[r].as_py()
                kept = files.read(key, side, block)
                row = {"block": block, "digest": kept and _digest(kept)}
                yield pa.RecordBatch.from_pylist([row], schema=schema)

    for side, inblocks in (("user", blocks.users), ("item", blocks.items)):
        table = inblocks.toArrow()
        want = {table.column("block")[r].as_py(): _digest(cache.decode(table, r)) for r in range(table.num_rows)}
        assert len(want) == (2 if side == "user" else 3)
        assert all(cache.decode(table, r)["col_labels"] is not None for r in range(table.num_rows))
        asked = spark.createDataFrame([(side, b) for b in want], "side string, block int").repartition(1)
        got = {r.block: r.digest for r in asked.mapInArrow(body, "block int, digest string").collect()}
        assert got == want
    blocks.unpersist()
    assert _block_files(spark, key) == {(0, 0)}
