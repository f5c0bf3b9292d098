"""The ownership rule: cfspark deletes or replaces only folders that it made.

Every folder cfspark makes on a local (or mounted) path gets a `_cfspark` file first: the
output folder (its staging folder, which becomes it), each date's partition, the checkpoint
folder. The file names the run that made it (run id, pid, host, start time), so that a
folder left by a dead run can be told from one a live run is writing. Spark's readers skip
files whose names start with "_", so the marker never shows up as data.

- A folder without the marker is the user's: cfspark refuses to replace it (owned_or_refuse)
  and never removes it (remove_owned logs and leaves it).
- A checkpoint directory that exists without the marker is used through a subfolder of
  cfspark's own (checkpoint_folder).
- A staging sibling (`<path>.partial-*`, `<path>.old-*`) is removed only when its marker
  names a run that is dead (is_dead).
- An existing folder made before the marker existed is adopted by putting an empty
  `_cfspark` file into it (docs/operations.md, What is refused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager

from cfspark.core.errors import ConfigError
from cfspark.core.fs import is_local, local_path

log = logging.getLogger("cfspark")

MARKER = "_cfspark"

_process_run = uuid.uuid4().hex[:12]  # the library's run id when no job run is active
_live: set[str] = {_process_run}  # the runs alive in this process
_active: list[dict] = []  # the job runs in progress, innermost last


def _owner(run: str) -> dict:
    return {"run": run, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


@contextmanager
def job_run():
    """A job's run: every marker written inside the block names it; once the block ends the
    run counts as dead, so its leftovers can be cleared by the next run, in this process too."""
    owner = _owner(uuid.uuid4().hex[:12])
    _live.add(owner["run"])
    _active.append(owner)
    try:
        yield owner["run"]
    finally:
        _active.remove(owner)
        _live.discard(owner["run"])


def current_owner() -> dict:
    return dict(_active[-1]) if _active else _owner(_process_run)


def marker_path(folder: str) -> str:
    return os.path.join(folder, MARKER)


def read_marker(folder: str) -> dict | None:
    """The marker's content ({} for an empty or unreadable one, which a user adopts a folder
    with), or None when folder carries no marker."""
    path = marker_path(folder)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_owned(folder: str) -> bool:
    return read_marker(folder) is not None


def mark(folder: str) -> None:
    """Put the current run's marker into folder (an existing folder that cfspark made)."""
    tmp = marker_path(folder) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(current_owner(), f)
    os.replace(tmp, marker_path(folder))


def make_owned(folder: str) -> None:
    """Create folder (and any missing parent), each with the marker written first.
    An existing folder is left as it is."""
    folder = os.path.abspath(folder)
    missing = []
    probe = folder
    while not os.path.exists(probe):
        missing.insert(0, probe)
        probe = os.path.dirname(probe)
    for path in missing:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
            mark(path)


def is_empty_folder(folder: str) -> bool:
    return os.path.isdir(folder) and not os.listdir(folder)


def owned_or_refuse(kind: str, folder: str, what: str) -> None:
    """Refuse (exit 2) to replace folder unless it is missing, empty or carries the marker."""
    if not os.path.exists(folder) or is_empty_folder(folder) or is_owned(folder):
        return
    raise ConfigError(
        f"{kind} {folder} exists and was not made by cfspark (it holds no {MARKER} file), so {what} "
        f"would lose its files; choose another path, or put an empty {MARKER} file in it if it is "
        "an older cfspark output (docs/operations.md, What is refused)"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_dead(info: dict) -> bool:
    """Whether the run a marker names is over. A marker without details (one a user adopted a
    folder with) counts as dead; a run on another host cannot be checked and counts as alive."""
    if not info.get("pid"):
        return True
    if info.get("host") != socket.gethostname():
        return False
    if info["pid"] == os.getpid():
        return info.get("run") not in _live
    return not _pid_alive(int(info["pid"]))


def remove_owned(folder: str, why: str) -> bool:
    """Remove folder if it carries the marker; leave it, with a warning, if it does not."""
    if not os.path.lexists(folder):
        return False
    if os.path.islink(folder) or not is_owned(folder):
        log.warning("leaving %s in place: it holds no %s file, so cfspark did not make it", folder, MARKER)
        return False
    log.info("removing %s (%s)", folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return True


CHECKPOINT_SUBFOLDER = "cfspark-checkpoints"


def checkpoint_folder(directory: str) -> str:
    """The folder checkpoints go to for a configured directory: the directory itself when it
    is missing or carries the marker, else (an existing folder of the user's) a subfolder of
    cfspark's own inside it, so that removing the checkpoints never touches the user's files."""
    if not is_local(directory):
        return directory
    local = local_path(directory)
    if not os.path.exists(local) or is_owned(local):
        return directory
    return f"{directory.rstrip('/')}/{CHECKPOINT_SUBFOLDER}"
