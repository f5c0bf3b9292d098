"""What the job checks and holds before it reads any data, so that a run cannot destroy
its input, find an unwritable output late, or mix its results with another run's.

- check_paths: output.path and the checkpoint dir are neither the input nor above or
  inside it (and not each other), and their folders can be written.
- RunLock: one run at a time per output.path (and per explicit checkpoint.dir). The lock
  is `<path>.lock` beside it, created with O_EXCL and held with flock, so the kernel frees
  it when the process dies; it names the holder's pid, host and start time. A lock file
  that no live process holds is stale and taken over.
- remove_stale_staging: `<output.path>.partial-*` and `.old-*` folders left by runs that
  died while writing; only the lock holder may remove them.

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
from cfspark.core.fs import is_local, local_path

log = logging.getLogger("cfspark")


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(local_path(path)))


def _within(inner: str, outer: str) -> bool:
    """inner is outer or lies below it (both real paths)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_disjoint(kind: str, path: str, other_kind: str, other: str) -> None:
    """Refuse path (which the job replaces or deletes) if it is, holds or sits inside other."""
    if not (is_local(path) and is_local(other) and path and other):
        return
    a, b = _real(path), _real(other)
    if _within(b, a):
        where = "is" if a == b else "is a folder above"
        raise ConfigError(f"{kind} {path} {where} {other_kind} {other}; writing there would destroy it")
    if _within(a, b):
        raise ConfigError(f"{kind} {path} is inside {other_kind} {other}; choose a path outside it")


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
        lock = os.path.abspath(local_path(path)).rstrip(os.sep) + ".lock"
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
    """Remove `<path>.partial-*` and `<path>.old-*` left by dead runs; call with path's lock held."""
    if not is_local(path):
        return []
    final = os.path.abspath(local_path(path)).rstrip(os.sep)
    stale = sorted(glob.glob(glob.escape(final) + ".partial-*") + glob.glob(glob.escape(final) + ".old-*"))
    for folder in stale:
        log.warning("removing %s, left behind by a run that died while writing", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return stale
