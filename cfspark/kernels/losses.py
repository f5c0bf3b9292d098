"""Per-rating losses and their derivative with respect to the score z."""

from __future__ import annotations

import numpy as np

LOSSES = ("mse", "bce")

# The largest second derivative of each loss in z: what one rating can tell about a score.
# A count-scaled penalty is λ·n·CURVATURE, so that λ means the same prior strength, relative
# to the data's own curvature, for both losses (BCE's σ'(z) is at most 1/4).
CURVATURE = {"mse": 1.0, "bce": 0.25}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) computed through tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def per_rating(loss: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The loss of each rating alone: pointwise's first half, without the derivative."""
    if loss == "mse":
        e = z - y
        return 0.5 * e * e
    if loss == "bce":
        return np.logaddexp(0.0, z) - y * z
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def pointwise(loss: str, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (loss per rating, dloss/dz) for scores z and targets y.

    mse: ½(z − y)², derivative z − y.
    bce: −[y log σ(z) + (1 − y) log(1 − σ(z))] = softplus(z) − y·z, written with
    logaddexp so that neither log(0) nor exp overflow can occur; derivative σ(z) − y.
    """
    if loss == "mse":
        e = z - y
        return 0.5 * e * e, e
    return per_rating(loss, z, y), sigmoid(z) - y
