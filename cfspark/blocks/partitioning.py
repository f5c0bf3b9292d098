"""One block per Spark partition: the key that puts block b in partition b.

The cached InBlocks, and every half-step's cogroup against them, are hash-partitioned:
Spark sends a row to partition pmod(murmur3(key), n). Keyed by the block number itself,
blocks 0..n−1 collide: 2 blocks land in one partition, so one task does both blocks'
half-steps while the other core idles; of 8 blocks, 3 share one partition and 3 partitions
stay empty. ALS avoids this with a partitioner of its own, which the DataFrame API does not
offer. Instead, each block gets a key, the smallest integer that Spark's hash
sends to that block's partition, found once with the same hash in numpy (blocks/hashing.py,
checked against Spark's). Rows are then partitioned and cogrouped by that key.
"""

from __future__ import annotations

import functools

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

from cfspark.blocks.hashing import murmur3

PART = "part"  # the column that holds a block's partition key


@functools.lru_cache(maxsize=64)
def partition_keys(num_blocks: int) -> tuple[int, ...]:
    """keys[b]: the smallest non-negative int whose Spark hash partition, of num_blocks, is b."""
    keys = np.full(num_blocks, -1, dtype=np.int64)
    start, width = 0, 16 * num_blocks
    while (keys < 0).any():
        candidates = np.arange(start, start + width, dtype=np.int32)
        partitions = np.mod(murmur3(candidates, wide=False).astype(np.int64), num_blocks)
        for b in np.flatnonzero(keys < 0):  # over blocks still without a key, never over rows
            hit = np.flatnonzero(partitions == b)
            if len(hit):
                keys[b] = candidates[hit[0]]
        start += width
    return tuple(int(k) for k in keys)


def partition_key(block: Column, num_blocks: int) -> Column:
    """The partition key of each row's block (an int column of block numbers 0..num_blocks−1)."""
    keys = F.array(*[F.lit(k) for k in partition_keys(num_blocks)])
    return F.element_at(keys, block + F.lit(1))
