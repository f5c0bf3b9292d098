"""The estimator's duplicate check, folded into the pack: a user block's ratings are sorted
by item within each user (inblock.py), so a repeated (user, item) pair is a run of equal
neighbours in its cols. The pack job reports each user block's repeats beside its InBlock,
and setup refuses them from the few rows that job already collects (build.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from cfspark.blocks.codec import cell
from cfspark.core.errors import RepeatedPairsError
from cfspark.kernels.repeats import sorted_repeats

# Per packed block: how many (user, item) pairs repeat, the values of the most repeated one,
# and its rows; null on the item side, whose blocks hold the same pairs again.
REPEATS = ("repeated_pairs", "repeated_user", "repeated_item", "repeated_times")
REPEATS_SCHEMA = ", ".join(f"{name} long" for name in REPEATS)


def with_repeats(inblock: pa.Table, users: bool) -> pa.Table:
    """One packed InBlock row with REPEATS appended: its repeated pairs if it is a user block."""
    found = None
    if users:
        row_ptr, cols = cell(inblock, "row_ptr", 0, np.int64), cell(inblock, "cols", 0, np.int32)
        own = np.repeat(np.arange(len(row_ptr) - 1), np.diff(row_ptr))
        found = sorted_repeats(own, cols)
    if found is not None:
        pairs, user, col, times = found
        found = (pairs, int(cell(inblock, "ids", 0, np.int64)[user]), int(cell(inblock, "col_ids", 0, np.int64)[col]),
                 times)  # fmt: skip
    for k, name in enumerate(REPEATS):
        inblock = inblock.append_column(name, pa.array([None if found is None else found[k]], pa.int64()))
    return inblock


def refuse_repeats(rows: list, user_id: Callable[[int], object], item_id: Callable[[int], object]) -> None:
    """Raise RepeatedPairsError if any of the pack job's rows (REPEATS) found a repeated pair,
    naming the most repeated one in the input's ids (user_id, item_id map a value to its id)."""
    found = [row for row in rows if row["repeated_pairs"]]
    if not found:
        return
    worst = max(found, key=lambda row: row["repeated_times"])
    pairs = sum(row["repeated_pairs"] for row in found)
    user, item = user_id(worst["repeated_user"]), item_id(worst["repeated_item"])
    raise RepeatedPairsError(pairs, user, item, worst["repeated_times"])
