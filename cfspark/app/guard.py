"""What the job checks and holds before it reads any data, so that a run cannot destroy
its input, find an unwritable output late, or mix its results with another run's.

- check_disjoint, refuse_glob, check_writable: output.path and the checkpoint dir name one
  place each, are neither the input (globs expanded, symlinks and schemes resolved) nor
  above or inside it (and not each other), and their folders can be written.
- RunLock: one run at a time per output.path (and per explicit checkpoint.dir). The lock
  is `<path>.lock` beside it, created with O_EXCL and held with flock, so the kernel frees
  it when the process dies; it names the holder's pid, host and start time. A lock file
  that no live process holds is stale and taken over.
- remove_stale_staging: `<output.path>.partial-*` and `.old-*` folders left by runs that
  died while writing, recognised by their marker (cfspark.core.ownership); only the lock
  holder may remove them.

All of this is for local (or mounted) paths, where the driver writes itself; other
schemes are skipped, as staging is (see cfspark.core.fs).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import time

from cfspark.core.errors import BusyError, ConfigError, OutputError
from cfspark.core.fs import GLOB_CHARS, expand, has_glob, is_local, local_path, normalise, within
from cfspark.core.ownership import is_dead, read_marker
from cfspark.data.read import spark_message

log = logging.getLogger("cfspark")


def refuse_glob(kind: str, path: str) -> None:
    """A path the job writes or deletes must name one place: Spark would expand a glob in it."""
    if has_glob(path):
        chars = "".join(sorted(GLOB_CHARS))
        raise ConfigError(f"{kind} {path} holds a glob character (one of {chars}); name one folder")


def check_disjoint(kind: str, path: str, other_kind: str, other: str) -> None:
    """Refuse path (which the job replaces or deletes) if it is, holds or sits inside other.

    Both are compared as Spark sees them: schemes and symlinks resolved, and other's glob
    expanded to every path it matches."""
    if not (path and other):
        return
    a = normalise(path)
    for b in expand(other):
        matching = f" (which matches {b})" if has_glob(other) else ""
        if within(b, a):
            where = "is" if a == b else "is a folder above"
            raise ConfigError(f"{kind} {path} {where} {other_kind} {other}{matching}; writing there would destroy it")
        if within(a, b):
            raise ConfigError(f"{kind} {path} is inside {other_kind} {other}{matching}; choose a path outside it")


def check_writable(kind: str, path: str) -> None:
    """The nearest existing folder at or above path's parent must be a folder we can write."""
    if not is_local(path):
        return
    target = os.path.abspath(local_path(path))
    probe = os.path.dirname(target)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputError(f"{kind} {path} cannot be written: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{kind} {path} cannot be written: no permission to write in {probe}")
    if os.path.exists(target) and not os.path.isdir(target):
        raise OutputError(f"{kind} {path} is a file, not a folder")


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "a run that has not written its details yet"


class RunLock:
    """Hold `<path>.lock` for each of paths (local ones) until the with-block ends."""

    def __init__(self, paths: list[tuple[str, str]]):
        self.paths = [(kind, p) for kind, p in paths if p and is_local(p)]
        self.held: list[tuple[str, int]] = []
        self.made: list[str] = []

    def __enter__(self) -> RunLock:
        try:
            for kind, path in self.paths:
                self.held.append(self._acquire(kind, path))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire(self, kind: str, path: str) -> tuple[str, int]:
        lock = normalise(path).rstrip(os.sep) + ".lock"  # one lock per place, however it is spelt
        parent = os.path.dirname(lock)
        missing = parent
        while not os.path.exists(missing):
            self.made.insert(0, missing)
            missing = os.path.dirname(missing)
        os.makedirs(parent, exist_ok=True)
        while True:
            try:
                fd, fresh = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, fresh = os.open(lock, os.O_RDWR), False
                except FileNotFoundError:  # released between the two opens: try again
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise BusyError(
                    f"{kind} {path} is in use by another run ({holder}); it was not touched. "
                    f"Retry when that run has finished"
                ) from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and unlinked) it while we opened it
                os.close(fd)
                continue
            if not fresh:
                log.warning("taking over the stale lock %s (held by %s, which is gone)", lock, _lock_holder(fd))
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            return lock, fd

    def release(self) -> None:
        for lock, fd in reversed(self.held):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)  # unlinked while still held, so no one can lock the old file
            os.close(fd)
        self.held = []
        for folder in reversed(self.made):  # folders made only to hold a lock, if still empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self.made = []


def remove_stale_staging(path: str) -> list[str]:
    """Remove `<path>.partial-*` and `<path>.old-*` that a dead run left; call with path's lock held.

    Only folders that carry cfspark's marker, naming a run that is over, are removed; a
    sibling the user made under such a name is left as it is (cfspark.core.ownership)."""
    if not is_local(path):
        return []
    final = normalise(path).rstrip(os.sep)
    found = sorted(glob.glob(glob.escape(final) + ".partial-*") + glob.glob(glob.escape(final) + ".old-*"))
    stale = []
    for folder in found:
        info = None if os.path.islink(folder) or not os.path.isdir(folder) else read_marker(folder)
        if info is None:
            log.warning("leaving %s in place: it holds no cfspark marker, so cfspark did not make it", folder)
        elif is_dead(info):
            log.warning("removing %s, left behind by a run that died while writing", folder)
            shutil.rmtree(folder, ignore_errors=True)
            stale.append(folder)
    return stale


def check_reachable(spark, kind: str, path: str) -> None:
    """A path on another scheme (hdfs://, s3a://) must answer before any data is read: a child
    that cannot exist is looked up, and only "not found" means the file system is there."""
    if is_local(path):
        return
    probe = f"{path.rstrip('/')}/_cfspark-probe-{os.getpid()}-{time.time_ns()}"
    try:
        _ = spark.read.format("binaryFile").load(probe).schema  # resolving the path asks the file system
    except Exception as e:
        if "PATH_NOT_FOUND" in str(getattr(e, "getCondition", lambda: None)()) or "Path does not exist" in str(e):
            return
        why = spark_message(e)
        if "UnknownHostException" in str(e):
            why = f"unknown host ({why})"
        raise OutputError(f"{kind} {path} cannot be reached: {why}") from None
    raise OutputError(f"{kind} {path} cannot be checked: {probe} was found, which cfspark never writes")
