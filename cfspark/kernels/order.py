"""The order a stable sort by several integer keys gives, fast: the one sort that packing
blocks (blocks/inblock.py) and the one-task fit's CSR arrays (train/one_task.py) each need."""

from __future__ import annotations

import numpy as np


def stable_order(*keys: np.ndarray) -> np.ndarray:
    """The order that sorts by keys[0], then keys[1], ... (ties in input order, as a stable
    sort leaves them): when the keys' bit widths and the positions fit in an int64, the keys
    and each value's position are packed into one, sorted as values (no argsort: measured
    about 10 times faster than a stable argsort) and the positions read back from the low
    bits; else lexsort."""
    n = len(keys[0])
    bits = [int(k.max(initial=0)).bit_length() for k in keys]
    low = max(n - 1, 0).bit_length()
    if sum(bits) + low > 63 or any(k.min(initial=0) < 0 for k in keys):
        return np.lexsort(keys[::-1])
    packed = keys[0].astype(np.int64)  # a copy: the shifts below work in place
    for k, b in zip(keys[1:], bits[1:], strict=True):
        packed <<= b
        packed |= k
    packed <<= low
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    packed &= np.int64((1 << low) - 1)
    return packed
