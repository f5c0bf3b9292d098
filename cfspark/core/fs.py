"""The few file-system operations the driver does itself (JSON files, staging, cleanup),
and paths spelt one way (normalise, expand) so that two spellings of one place compare equal.

Spark writes all tables. The driver only touches local (or mounted) paths; for other
schemes these helpers say so and the callers skip what they cannot do.
"""

from __future__ import annotations

import glob
import json
import math
import os
import posixpath
import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(?=/)")
_AUTHORITY = re.compile(r"^//([^/]*)")
# Hadoop's glob characters: a path holding one names every path it matches.
GLOB_CHARS = frozenset("*?[]{}")


def scheme(path: str) -> str:
    """The path's scheme, lower case ("" for a plain path)."""
    m = _SCHEME.match(path)
    return m.group(1).lower() if m else ""


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def split_uri(path: str) -> tuple[str, str | None, str]:
    """A URI's scheme (lower case, "" for a plain path), its authority (None when it has
    none: file:/x, or a plain path) and its path: hdfs://nn:8020/a gives hdfs, nn:8020, /a."""
    s = scheme(path)
    if not s:
        return "", None, path
    rest = path[len(s) + 1 :]
    m = _AUTHORITY.match(rest)
    return (s, m.group(1), rest[m.end() :] or "/") if m else (s, None, rest)


def local_path(path: str) -> str:
    """A file: URI (file:/x, file:///x, file://localhost/x) as the plain path it names."""
    s, host, rest = split_uri(path)
    if s != "file":
        return path
    return rest if host in (None, "", "localhost") else f"//{host}{rest}"


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def normalise(path: str) -> str:
    """One spelling per location: a local path absolute with its symlinks resolved; another
    scheme's URI with its scheme and host in lower case and its path normalised."""
    if is_local(path):
        return os.path.realpath(os.path.abspath(local_path(path)))
    s, host, rest = split_uri(path)
    head = f"{s}:" if host is None else f"{s}://{host.lower()}"
    return head + posixpath.normpath(rest)


def _braces(pattern: str) -> list[str]:
    """{a,b} alternatives expanded (Hadoop globs have them; Python's glob does not)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for alt in m.group(1).split(",") for x in _braces(head + alt + tail)]


def expand(path: str) -> list[str]:
    """What a path names, normalised: a local glob's matches (none if nothing matches), or the
    path itself. A glob on another scheme cannot be listed here: it stands for the folder
    above its first glob character, which holds everything it can match."""
    if not has_glob(path):
        return [normalise(path)]
    if is_local(path):
        found = {m for p in _braces(local_path(path)) for m in glob.glob(os.path.abspath(p))}
        return sorted(normalise(m) for m in found)
    first = min(path.index(c) for c in GLOB_CHARS if c in path)
    return [normalise(path[:first].rsplit("/", 1)[0] or "/")]


def within(inner: str, outer: str) -> bool:
    """inner is outer or lies below it (both normalised)."""
    return inner == outer or inner.startswith(outer.rstrip("/" + os.sep) + "/")


def finite_json(obj):
    """obj with every NaN or infinite float replaced by None, so that it is strict JSON.

    A metric that is undefined (an AUC with one class in test, say) or a key that is off
    (input.binarize_threshold = nan) is written as null, never as a bare NaN.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str, obj: dict) -> None:
    """Strict JSON (RFC 8259): non-finite floats become null, and json refuses any left."""
    with open(local_path(path), "w") as f:
        json.dump(finite_json(obj), f, indent=2, sort_keys=True, default=str, allow_nan=False)
        f.write("\n")
