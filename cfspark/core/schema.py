"""Every column name cfspark's tables use, declared once.

Inside cfspark, ratings always carry the internal names below; a caller's own column
names (userCol, itemCol, ratingCol) are mapped onto them on the way in and back on the
way out, so no other module needs to know what the caller called them.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# Ratings, inside cfspark: (user, item, rating). For bce, rating holds the 0/1 label.
USER, ITEM, RATING = "user", "item", "rating"

# Item baselines (mse): μ_i, shrunk towards the global mean, and the item's training ratings.
ITEM_MEAN = "item_mean"
ITEM_RATINGS = "ratings"
NORMALISED = "y"  # rating − μ_i

# Item baselines (bce): counts, the smoothed positive rate, and its logit o_i.
POSITIVES, LABELLED = "positives", "labelled"
POSITIVE_RATE = "positive_rate"
ITEM_OFFSET = "item_offset"

# What training fits: a rating's target and the fixed term added to its score.
TARGET = "y"  # y' (mse) or the label (bce)
OFFSET = "offset"  # o_i (bce) or null
WEIGHT = "weight"  # a_r, the rating's weight in the loss (a count's, a sampled negative's), or null for 1
BASELINE = "baseline"  # per item: μ_i (mse) or o_i (bce), added back at prediction
RATINGS = ITEM_RATINGS  # per entity: its number of training ratings, which sizes the blocks

# Blocks: an entity's block, its row inside the block, and its hashed key (init, split).
BLOCK, LOCAL, KEY = "block", "local", "key"

# Factor tables: (id, features, bias), bias being b (users) or c (items).
FEATURES, BIAS = "features", "bias"

# Recommendations: (user, item, rank, score), rank 1 being the best; for bce also p_like,
# P(like | shown), and p_exposed, P(exposed), where the model has them (null where not).
RANK, SCORE = "rank", "score"
P_LIKE, P_EXPOSED = "p_like", "p_exposed"

# Scheduled runs: the partition column of output.run_date.
RUN_DATE = "run_date"

# transform: the caller's row, carried whole past the joins so that none of its column names
# (a "user" beside another user column, or a "_w") can meet one of cfspark's.
CALLER_ROW = "__cfspark_caller_row"


def column(name: str) -> Column:
    """A caller's column by its exact name: F.col would read the dots of "user.id" (common after
    flattening JSON) as a struct's fields, and a backtick as a quote."""
    return F.col("`" + name.replace("`", "``") + "`")


def renamed(df: DataFrame, names: dict[str, str]) -> DataFrame:
    """df with the columns names maps renamed at once: a caller's item column called "user"
    and user column called "item" swap with ours, where renaming one at a time would give two
    columns of one name."""
    return df.select(*(column(c).alias(names.get(c, c)) for c in df.columns))
