"""Dense ids: each distinct user (or item) gets a block and a local index in it.

The kernels work on int32 positions only; these tables carry the user's own ids
(of any type) back onto every table out.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cfspark.schema import BLOCK, KEY, LOCAL


def index_entities(entities: DataFrame, id_col: str, *, num_blocks: int, seed: int) -> DataFrame:
    """(id_col, block, local, key, ...) for a table of distinct ids.

    block = pmod(murmur3(id), num_blocks), as ALS hashes ids into blocks; local is the
    rank of the id inside its block, so (block, local) is a dense index. key is a
    64-bit hash of (id, seed) from which the entity's initial factors are drawn.
    """
    block = F.pmod(F.hash(F.col(id_col)), F.lit(num_blocks)).cast("int")
    with_block = entities.withColumn(BLOCK, block)
    local = F.row_number().over(Window.partitionBy(BLOCK).orderBy(id_col)) - 1
    return with_block.withColumn(LOCAL, local.cast("int")).withColumn(KEY, F.xxhash64(F.col(id_col), F.lit(seed)))
