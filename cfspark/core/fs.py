"""The few file-system operations the driver does itself (JSON files, staging, cleanup).

Spark writes all tables. The driver only touches local (or mounted) paths; for other
schemes these helpers say so and the callers skip what they cannot do.
"""

from __future__ import annotations

import json
import math


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


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
