"""numpy arrays ↔ Arrow binary cells, so a whole block moves as a few large buffers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def cell(batch: pa.RecordBatch | pa.Table, name: str, row: int, dtype: np.dtype | type) -> np.ndarray | None:
    """The array stored in one binary cell, without copying; None for a null cell."""
    scalar = batch.column(name)[row]
    if not scalar.is_valid:
        return None
    return np.frombuffer(scalar.as_buffer(), dtype=dtype)


def matrix(batch: pa.RecordBatch | pa.Table, name: str, row: int, width: int) -> np.ndarray | None:
    flat = cell(batch, name, row, np.float64)
    return None if flat is None else flat.reshape(-1, width)


def blob(arr: np.ndarray | None) -> bytes | None:
    return None if arr is None else np.ascontiguousarray(arr).tobytes()
