"""What the exposure model learns from: every labelled pair as exposed, sampled unlabelled pairs as not.

Binary labels say what a user liked among what they were shown; which items they were shown
at all is the other half of what a recommender must know, since it ranks every item a user
has no label for. The labels tell it too: a labelled pair (0 or 1) was shown, and a pair
without a label mostly was not. So the exposure model is a second bce factorisation, on

    (user, item, 1, a_r)     for every labelled pair, with its own weight a_r (1, or 1 + α·c),
    (user, item, 0, w)       for K·n_u items drawn per user u with n_u labelled pairs,

drawn from the items u has no label for, in proportion to the square root of their number of
labels (sqrt), to the number itself (popularity) or uniformly, with the weight
w = negativeWeight. w < 1 lets K be large, so that many unlabelled items are seen, without the
sampled zeros outweighing what was observed (measured: docs, binary labels). This module gives
the first kind of row; the second is drawn afresh inside each half-step (train/sampled.py), so
it is never materialised.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, RATING, USER, WEIGHT
from cfspark.data.weights import row_weight


def exposure_labels(labelled: DataFrame) -> DataFrame:
    """(user, item, rating = 1, weight): every labelled pair as exposed, with its weight."""
    return labelled.select(USER, ITEM, F.lit(1.0).alias(RATING), row_weight(labelled).alias(WEIGHT))
