"""Decoded InBlocks kept in each Python worker for as long as their blocks live.

An InBlock does not change during a fit, yet a half-step that cogroups against the cached
InBlocks moves every one of them from Spark's block store into Python again. Spark reuses
its Python workers across tasks (spark.python.worker.reuse, true by default), so a
module-level dict outlives the task that filled it: a worker that has decoded a block once
keeps its arrays here, keyed by (the Blocks' key, side, block), and later half-steps that
land on that worker need only the block's messages.

A worker that has not seen a block yet looks for its file (files.py), which the worker that
packed the block at setup wrote (blocks/build.py), or else the first worker of the executor
to decode it, and which every other one memory-maps: a miss costs one decode per executor,
not per worker, and the executor holds one copy of the block's pages.
What the Newton kernel derives from a block's ratings alone (its tiling, kept in the block's
scratch) is shared the same way: the first worker of the executor that builds it writes it
beside the block's file (share), and every worker that then takes the block maps it (scratch).

Nothing here is required for a result: a worker may be new, restarted or on another
executor, or the file gone, and then the lookup misses and the half-step falls back to
reading the block from its DataFrame (train/trainer.py). A worker holds the blocks of one
Blocks key at a time (a new key drops the old ones, and their files), and at most a byte
budget of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cfspark.blocks import files
from cfspark.blocks.codec import cell
from cfspark.core.errors import ConfigError
from cfspark.kernels.block import TiledRatings, Tiling

# The InBlock columns a half-step reads, and their dtypes (inblock.py's INBLOCK_SCHEMA).
STEP_COLUMNS = {
    "keys": np.int64,  # the rows' hash keys: fresh 0-labels are drawn from them (train/sampled.py)
    "row_ptr": np.int64,
    "cols": np.int32,
    "y": np.float64,
    "offset": np.float64,
    "weight": np.float64,
    "src": np.int32,
    "src_ptr": np.int64,
    "out_dest": np.int32,
    "out_ptr": np.int64,
    "out_idx": np.int32,
    "col_labels": np.float64,  # the cols' label counts over all blocks, or None (train/sampled.py)
}

# What a start (the first state and messages, train/arrow_bodies.py) reads of a block whose
# arrays the workers kept at setup: its ids, keys and OutBlock, not its ratings.
OUTBOX_COLUMNS = ("out_dest", "out_ptr", "out_idx")
START_COLUMNS = ("block", "ids", "keys", *OUTBOX_COLUMNS)

Arrays = dict[str, np.ndarray | None]


@dataclass(frozen=True)
class CacheKey:
    """Which blocks a half-step's worker may keep, and how.

    mode: "on" (look up and keep), "cold" (never hit nor keep: every task takes the
    fallback, for tests) or "off" (the half-step cogroups against the InBlocks every time).
    budget_bytes: what one worker keeps at most; a block beyond it is read each time.
    """

    blocks: str
    side: str
    mode: str = "on"
    budget_bytes: int = 4 << 30


MODES = ("on", "cold", "off")


def side_keys(spark, blocks: str) -> dict[str, CacheKey | None]:
    """Per side ("user", "item"), how the Python workers keep the blocks of one Blocks key
    (None: not at all), from CFSPARK_BLOCK_CACHE (on, cold, off) and CFSPARK_BLOCK_CACHE_MB,
    read on the driver. The cache needs Python workers that outlive a task; with
    spark.python.worker.reuse off, every half-step cogroups against the InBlocks, as in mode "off"."""
    mode = os.environ.get("CFSPARK_BLOCK_CACHE", "on").strip().lower() or "on"
    if mode not in MODES:
        raise ConfigError(f"CFSPARK_BLOCK_CACHE must be one of {', '.join(MODES)}, not {mode!r}")
    try:
        reuse = spark.conf.get("spark.python.worker.reuse", "true")
    except Exception:  # a Connect server that hides it: Spark's default
        reuse = "true"
    if mode == "off" or reuse.strip().lower() == "false":
        return {"user": None, "item": None}
    budget = int(float(os.environ.get("CFSPARK_BLOCK_CACHE_MB", "4096")) * 2**20)
    return {side: CacheKey(blocks, side, mode, budget) for side in ("user", "item")}


_cache: dict[tuple[str, str, int], Arrays] = {}
# Per kept block, what its half-steps derive from its ratings alone (the kernel's tiling):
# the next half-step of the block on this worker reuses it. Dropped with the block.
_scratch: dict[tuple[str, str, int], dict] = {}
# The kept blocks whose tiling this worker has written beside their file, or mapped from it.
_shared: set[tuple[str, str, int]] = set()
_seen: set[str] = set()  # every Blocks key this worker kept a block of: the files it may have left


def decode(
    inblock: pa.Table | pa.RecordBatch, row: int = 0, *, copy: bool = False, names: tuple[str, ...] | None = None
) -> Arrays:
    """The arrays one InBlock row's half-step reads (views into Arrow buffers unless copy);
    names, only those of them (a start's OUTBOX_COLUMNS)."""
    names = tuple(STEP_COLUMNS) if names is None else names
    arrays = {name: cell(inblock, name, row, STEP_COLUMNS[name]) for name in names}
    return {k: (v.copy() if copy and v is not None else v) for k, v in arrays.items()}


def nbytes(arrays: Arrays) -> int:
    return sum(a.nbytes for a in arrays.values() if a is not None)


def lookup(key: CacheKey, block: int) -> Arrays | None:
    """A block's arrays: this worker's, else mapped from the executor's file; None on a miss."""
    if key.mode != "on":
        return None
    found = _cache.get((key.blocks, key.side, block))
    if found is None:
        found = files.read(key.blocks, key.side, block)
        if found is not None and not _room(key, found):
            return None
        if found is not None:
            _cache[(key.blocks, key.side, block)] = found
    return found


def _used() -> int:
    """The bytes this worker holds: kept arrays and what their half-steps derived from them."""
    # A tiled problem's copies (the explicit losses), or the all-items half-step's tiling, its
    # pairs' copies and the confidences they were made of.
    derived = sum(
        v.nbytes for d in _scratch.values() for v in d.values() if isinstance(v, TiledRatings | Tiling | np.ndarray)
    )
    return sum(nbytes(a) for a in _cache.values()) + derived


def _room(key: CacheKey, arrays: Arrays) -> bool:
    """Whether this worker may hold arrays too; drops another fit's blocks (and their files) first."""
    for other in {k[0] for k in _cache if k[0] != key.blocks}:  # another fit's blocks: done with
        release(other)
    return _used() + nbytes(arrays) <= key.budget_bytes


def scratch(key: CacheKey, block: int) -> dict | None:
    """A dict that lives as long as this worker keeps the block, for what a half-step derives
    from the block's ratings alone (train/step.py's cache), or None where the block is not
    kept here or the budget has no room for about its arrays' size again, which the kernel's
    tile-ordered copy of the ratings takes. Where the dict has no tiling yet and another
    worker of the executor wrote one beside the block's file (share), it holds that, mapped."""
    entry = (key.blocks, key.side, block)
    kept = _scratch.get(entry)
    if kept is None:
        arrays = _cache.get(entry)
        if arrays is None or _used() + nbytes(arrays) > key.budget_bytes:
            return None
        kept = _scratch.setdefault(entry, {})
    if "problem" not in kept:
        lent = _mapped(key, block)
        if lent is not None:  # else none, or not whole: the half-step builds it, and share writes it anew
            kept["problem"] = lent
            _shared.add(entry)
    return kept


def _mapped(key: CacheKey, block: int) -> TiledRatings | None:
    """A block's tiling mapped from the file beside the block's, or None if there is none whole."""
    arrays = files.read(key.blocks, key.side, block, files.TILING)
    return TiledRatings.from_arrays(arrays) if arrays is not None else None


def share(key: CacheKey, block: int) -> bool:
    """Write the tiling in a kept block's scratch beside the block's file, once per executor,
    and hold it mapped from there (one copy of its pages per executor, as the block's).
    Whether this worker's tiling of the block is the file's now."""
    entry = (key.blocks, key.side, block)
    lent = _scratch.get(entry, {}).get("problem")
    if entry in _shared or not isinstance(lent, TiledRatings):
        return entry in _shared
    _shared.add(entry)  # tried once: a file that cannot be written is not tried at every half-step
    mapped = _mapped(key, block)  # another worker's, written meanwhile
    if mapped is None and files.write(key.blocks, key.side, block, lent.arrays(), files.TILING, again=True):
        mapped = _mapped(key, block)  # over a damaged one, if that is what there was
    if mapped is not None:
        _scratch[entry]["problem"] = mapped
    return mapped is not None


def keep(key: CacheKey, block: int, arrays: Arrays) -> bool:
    """Keep a block's arrays for later half-steps: in the executor's file, mapped, or a copy where
    the file cannot be written; False if the mode or budget says no."""
    if key.mode != "on" or not _room(key, arrays):
        return False
    _seen.add(key.blocks)
    written = files.write(key.blocks, key.side, block, arrays)
    mapped = files.read(key.blocks, key.side, block) if written else None
    _cache[(key.blocks, key.side, block)] = mapped or {k: None if v is None else np.array(v) for k, v in arrays.items()}
    return True


def release(blocks: str | None = None) -> int:
    """Drop the kept blocks of one Blocks key (all if None), and the executor's files of them;
    how many entries went."""
    gone = [k for k in _cache if blocks is None or k[0] == blocks]
    for k in gone:
        del _cache[k]
        _scratch.pop(k, None)
        _shared.discard(k)
    # Only keys this worker knows: another application's fit may share the directory.
    for known in {blocks} if blocks is not None else {k[0] for k in gone} | _seen:
        files.remove(known)
    return len(gone)


def stats() -> dict:
    """This worker's cache: its process id, entries, bytes and Blocks keys, and the block
    files in its executor's directory of every key it has kept blocks of."""
    on_disk = [files.usage(k) for k in _seen]
    on_disk, disk_bytes = sum(n for n, _ in on_disk), sum(b for _, b in on_disk)
    return {
        "pid": os.getpid(),
        "entries": len(_cache),
        "bytes": _used(),
        "keys": sorted({k[0] for k in _cache}),
        "files": on_disk,
        "file_bytes": disk_bytes,
    }


RELEASE_SCHEMA = "pid long, entries long, bytes long, dropped long, files long, file_bytes long"


def release_body(blocks: str | None):
    """mapInArrow body: drop this worker's kept blocks of one Blocks key (all if None), and
    report what the worker holds afterwards."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for _ in batches:
            pass
        dropped = release(blocks)
        held = stats()
        row = {k: held[k] for k in ("pid", "entries", "bytes", "files", "file_bytes")} | {"dropped": dropped}
        yield pa.RecordBatch.from_pylist([row])

    return run


def release_workers(spark, blocks: str | None, tasks: int) -> list:
    """Ask the Python workers to drop one Blocks key's kept blocks, by a job of small tasks.

    Spark hands tasks to idle workers first in, first out, so a job of more tasks than
    workers reaches each of them in turn on a machine. That is not promised on a cluster:
    a worker it misses drops the blocks when it next keeps another Blocks' block, or
    when it exits. Returns the tasks' rows (RELEASE_SCHEMA).
    """
    return spark.range(0, tasks, 1, tasks).mapInArrow(release_body(blocks), RELEASE_SCHEMA).collect()
