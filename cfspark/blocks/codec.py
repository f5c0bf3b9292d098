"""numpy arrays ↔ Arrow binary cells, so a whole block moves as a few large buffers."""

from __future__ import annotations

from collections.abc import Sequence

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


def byte_view(arr: np.ndarray) -> np.ndarray:
    """An array's bytes as a flat uint8 array, without a copy where it is contiguous: what a
    binary cell or a block file holds of it."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


# A binary column's offsets are int32: its cells hold at most this many bytes in all.
MAX_BINARY_BYTES = 2**31 - 1


def binary_column(values: Sequence[np.ndarray | bytes | None]) -> pa.Array:
    """Arrays as a binary column, one cell each (None: a null cell), for cell() to read back.

    One array is the column's data buffer as it lies, several are copied once into one. The
    way round Python bytes (tobytes, then pa.array) copies each twice, and a copy of more
    than glibc's largest mmap threshold (32 MiB) is fresh pages faulted in one by one: three
    44 MB cells took 0.13–1.2 s that way against 0.04–0.2 s here, Arrow's stream write included."""
    raw = [None if v is None else np.frombuffer(v, np.uint8) if isinstance(v, bytes) else byte_view(v) for v in values]
    sizes = np.array([0 if a is None else a.nbytes for a in raw], dtype=np.int64)
    if sizes.sum() > MAX_BINARY_BYTES:
        raise ValueError(f"{sizes.sum()} bytes do not fit one binary column (at most {MAX_BINARY_BYTES})")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    filled = [a for a in raw if a is not None]
    data = filled[0] if len(filled) == 1 else np.concatenate(filled) if filled else np.empty(0, np.uint8)
    nulls = len(raw) - len(filled)
    valid = None
    if nulls:
        valid = pa.py_buffer(np.packbits(np.array([a is not None for a in raw]), bitorder="little"))
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.binary(), len(raw), buffers, null_count=nulls)


def _nbytes(value: np.ndarray | bytes | None) -> int:
    return 0 if value is None else len(value) if isinstance(value, bytes) else value.nbytes


def arrow_rows(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """pa.Table.from_pylist(rows, schema=schema) for rows whose binary fields hold numpy arrays
    (or bytes, or None), each binary column made by binary_column (and widened where the
    schema's is large_binary, as Spark may hand an input's binary cells in). Rows whose cells
    pass a column's MAX_BINARY_BYTES together go in chunks that each fit, as from_pylist
    chunks them (a half-step's state and messages at a high rank)."""
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    chunks, start, filled = [], 0, dict.fromkeys(binary, 0)
    for j, row in enumerate(rows):
        sizes = {name: _nbytes(row[name]) for name in binary}
        if j > start and any(filled[n] + sizes[n] > MAX_BINARY_BYTES for n in binary):
            chunks.append(rows[start:j])
            start, filled = j, dict.fromkeys(binary, 0)
        filled = {n: filled[n] + sizes[n] for n in binary}
    chunks.append(rows[start:])

    def column(field: pa.Field, part: Sequence[dict]) -> pa.Array:
        values = [r[field.name] for r in part]
        if field.name in binary:
            return binary_column(values).cast(field.type)
        return pa.array(values, field.type)

    batches = [pa.RecordBatch.from_arrays([column(f, part) for f in schema], schema=schema) for part in chunks]
    return pa.Table.from_batches(batches, schema=schema)


def list_rows(values: np.ndarray) -> pa.ListArray:
    """An (n × k) matrix as n list<double> rows: the features column of a factor table."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel()))


def list_matrix(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """A list<double> column of equal-length rows as an (n × width) matrix (list_rows' inverse)."""
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(-1, width)
