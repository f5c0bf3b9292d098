"""The few file-system operations the driver does itself (JSON files, staging, cleanup).

Spark writes all tables. The driver only touches local (or mounted) paths; for other
schemes these helpers say so and the callers skip what they cannot do.
"""

from __future__ import annotations

import json


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def write_json(path: str, obj: dict) -> None:
    with open(local_path(path), "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
