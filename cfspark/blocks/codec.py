"""numpy arrays ↔ Arrow binary cells, so a whole block moves as a few large buffers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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


def list_rows(values: np.ndarray) -> pa.ListArray:
    """An (n × k) matrix as n list<double> rows: the features column of a factor table."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel()))


def list_matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """A list<double> column of equal-length rows as an (n × width) matrix (list_rows' inverse)."""
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, width)
