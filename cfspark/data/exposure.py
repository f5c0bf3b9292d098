"""What the exposure model learns from: every labelled pair as exposed, sampled unlabelled pairs as not.

Binary labels say what a user liked among what they were shown; which items they were shown
at all is the other half of what a recommender must know, since it ranks every item a user
has no label for. The labels tell it too: a labelled pair (0 or 1) was shown, and a pair
without a label mostly was not. So the exposure model is a second bce factorisation, on

    (user, item, 1, a_r)     for every labelled pair, with its own weight a_r (1, or 1 + α·c),
    (user, item, 0, w)       for K·n_u items drawn per user u with n_u labelled pairs,

drawn without replacement from the items u has no label for (data/negatives.py), in
proportion to the square root of their number of labels (sqrt), to the number itself
(popularity) or uniformly, with the weight w = negativeWeight. w < 1 lets K be large, so
that many unlabelled items are seen, without the sampled zeros outweighing what was
observed (measured: docs, binary labels).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, RATING, USER, WEIGHT
from cfspark.data.negatives import add_negatives
from cfspark.data.weights import row_weight


def exposure_labels(labelled: DataFrame, *, per_labelled: int, sampling: str, weight: float, seed: int) -> DataFrame:
    """(user, item, rating, weight): labelled pairs as 1 with their weights, plus sampled 0s of weight `weight`."""
    exposed = labelled.select(USER, ITEM, F.lit(1.0).alias(RATING), row_weight(labelled).alias(WEIGHT))
    sampled = add_negatives(
        exposed.select(USER, ITEM, RATING), per_positive=per_labelled, sampling=sampling, seed=seed, only_new=True
    )
    return exposed.unionByName(sampled.withColumn(WEIGHT, F.lit(float(weight))))
