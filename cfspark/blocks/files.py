"""Decoded InBlocks as files that every Python worker of an executor memory-maps.

A worker's in-memory cache (cache.py) fills only as tasks land on it, and Spark hands
tasks to idle workers first in, first out: with more workers than cores, a half-step and
its fallback land on different workers, so a block can miss for many iterations. A file
per block, written once by the worker that packs it at setup (or else whichever worker
decodes it first) and mapped read-only by the others, turns that into at most one miss per
executor, and the pages are shared: one copy of a block in memory per executor, not one per
worker.

Files live in a directory per Blocks key under the executor's local directory (root()),
else the system's temporary directory; CFSPARK_BLOCK_DIR overrides it.
A file is written under a temporary name and renamed into place, so a reader sees a whole
file or none. Nothing here is needed for a result: a missing, partial or unreadable file
reads as a miss, and the half-step falls back to the InBlock DataFrame.
Beside a block's file (kind BLOCK) may be its TILING file: what the Newton kernel derives from
the block's ratings alone, written as the block's is by the first worker that builds it
(cache.py); a miss of it costs that worker building it again.

Layout of a file: MAGIC, the header's length (8 bytes, little-endian), a JSON header
{name: [dtype, offset, count] or null}, then each array at a 64-byte aligned offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

from cfspark.blocks.codec import byte_view

MAGIC = b"CFBLK001"
ALIGN = 64
DIR_NAME = "cfspark-blocks"

Arrays = dict[str, np.ndarray | None]


# Where an executor's scratch space is: a standalone worker's per-application directory
# (deleted when the application ends), then SPARK_LOCAL_DIRS, which Spark sets for its
# Python workers to the executor's block manager directories (deleted when it stops),
# then YARN's container directories.
_LOCAL_DIRS = (("SPARK_EXECUTOR_DIRS", os.pathsep), ("SPARK_LOCAL_DIRS", ","), ("LOCAL_DIRS", ","))


def root() -> str:
    """This executor's directory of block files (one sub-directory per Blocks key)."""
    chosen = os.environ.get("CFSPARK_BLOCK_DIR", "")
    for name, sep in _LOCAL_DIRS:
        chosen = chosen or os.environ.get(name, "").split(sep)[0].strip()
    return os.path.join(chosen or tempfile.gettempdir(), DIR_NAME)


# What a file of a block holds: its arrays, or (TILING) what the Newton kernel derives from
# its ratings alone, written beside them (blocks/cache.py).
BLOCK, TILING = "blk", "tiling"


def path(blocks: str, side: str, block: int, kind: str = BLOCK) -> str:
    return os.path.join(root(), blocks, f"{side}-{block}.{kind}")


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write(blocks: str, side: str, block: int, arrays: Arrays, kind: str = BLOCK, *, again: bool = False) -> str | None:
    """Write a block's arrays (of a kind) once per executor, or again over a file there (a
    damaged one); the file's path, or None if it cannot be written."""
    target = path(blocks, side, block, kind)
    if os.path.exists(target) and not again:
        return target
    header: dict[str, list | None] = {}
    at = 0
    for name, a in arrays.items():
        if a is None:
            header[name] = None
            continue
        header[name] = [a.dtype.str, at, int(a.size)]
        at = _aligned(at + a.nbytes)
    head = json.dumps(header).encode()
    start = _aligned(len(MAGIC) + 8 + len(head))
    temp = f"{target}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(temp, "wb") as f:
            f.write(MAGIC + len(head).to_bytes(8, "little") + head)
            for name, a in arrays.items():
                if a is not None:
                    f.seek(start + header[name][1])
                    _write_array(f, a)
            f.truncate(start + at)
        os.replace(temp, target)
    except OSError:  # a full disk, or the directory removed by a release: the caller keeps a copy
        with contextlib.suppress(OSError):
            os.remove(temp)
        return None
    return target


def _write_array(f, a: np.ndarray) -> None:
    """Write an array's bytes from its own buffer. tobytes() would copy them first, and a copy
    over glibc's largest mmap threshold (32 MiB) is fresh pages, faulted in one by one: 0.14 to
    0.7 s for 175 MiB, against 0.04 s written from the buffer (a block's tiling at 27.6M)."""
    f.write(byte_view(a))


def read(blocks: str, side: str, block: int, kind: str = BLOCK) -> Arrays | None:
    """A block's arrays (of a kind) as read-only views of its memory-mapped file; None if there
    is none or it does not hold what its header says."""
    try:
        # A plain ndarray view: it keeps the mapping open for as long as any array uses it.
        raw = np.asarray(np.memmap(path(blocks, side, block, kind), dtype=np.uint8, mode="r"))
    except (OSError, ValueError):  # no file (ValueError: an empty one)
        return None
    try:
        if bytes(raw[: len(MAGIC)]) != MAGIC:
            return None
        size = int.from_bytes(bytes(raw[len(MAGIC) : len(MAGIC) + 8]), "little")
        head_end = len(MAGIC) + 8 + size
        header = json.loads(bytes(raw[len(MAGIC) + 8 : head_end]))
        start = _aligned(head_end)
        out: Arrays = {}
        for name, spec in header.items():
            if spec is None:
                out[name] = None
                continue
            dtype, at, count = np.dtype(spec[0]), start + spec[1], spec[2]
            if at + count * dtype.itemsize > len(raw):
                return None
            out[name] = raw[at : at + count * dtype.itemsize].view(dtype)
        return out
    except (ValueError, UnicodeDecodeError, TypeError, IndexError):
        return None


def remove(blocks: str) -> int:
    """Remove one Blocks key's files (of every kind) from this executor's directory; how many went."""
    folder = os.path.join(root(), blocks)
    try:
        gone = len(os.listdir(folder))
    except OSError:  # not there: never written here, or another worker of the executor removed it first
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    return gone


def usage(blocks: str) -> tuple[int, int]:
    """(files, bytes) of one Blocks key's block files in this executor's directory."""
    folder = os.path.join(root(), blocks)
    count = sizes = 0
    try:
        names = os.listdir(folder)
    except OSError:  # not there, or removed by another worker's release meanwhile
        names = []
    for name in names:
        try:
            sizes += os.path.getsize(os.path.join(folder, name))
            count += 1
        except OSError:  # removed meanwhile
            pass
    return count, sizes
