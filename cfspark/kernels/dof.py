"""The degrees of freedom that fitted factors spend: how much of the noise they absorb.

A ridge fit of one row's vector v to its ratings, (G + Λ) v = Vᵀa·y with G = Σ a·u uᵀ over
the other side's vectors u, has the hat matrix H = V (G + Λ)⁻¹ Vᵀ·diag(a), whose trace
tr((G + Λ)⁻¹ G) counts how many of the row's ratings the vector can fit: its rank when Λ is
0, and less the more Λ shrinks it. An in-sample residual then holds the noise of N − df
ratings, not of N: dividing its sum of squares by N − df estimates σ² where dividing by N
undercounts it by the share the factors fitted (kernels/priors.py uses it for the prior
count of the users' biases).

The users' biases are left out of their rows: a prior count's within-user variance
subtracts each user's own mean, which spends one degree a user already, so a user's factors
count with their other side's vectors centred on the user's weighted mean (the bias
profiled out). An item's bias cᵢ is in its row, with its own prior count.

Each side's trace is summed as if the other side were fixed. Where both sides fit freely
(λ far below the data's best, few ratings per row), the sum overcounts what a joint fit
spends and can pass N: the caller then has no estimate from the residual (priors.py).

Worked example: one user with two ratings of items whose one factor is 1 and 3, λ·n = 2
(count-scaled λ = 1). Centred on their mean 2, the items give G = 1 + 1 = 2, so the user's
factor spends 2 / (2 + 2) = 0.5 of a degree.
"""

from __future__ import annotations

import numpy as np


def _grams(group: np.ndarray, vectors: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """Σ a·v vᵀ per group, (groups × k × k), summed column pair by column pair so that no
    (rows × k × k) array is ever built."""
    k = vectors.shape[1]
    grams = np.empty((groups, k, k))
    for p in range(k):
        for q in range(p, k):
            grams[:, p, q] = grams[:, q, p] = np.bincount(group, weight * vectors[:, p] * vectors[:, q],
                                                          minlength=groups)  # fmt: skip
    return grams


def hat_trace(grams: np.ndarray, penalty: np.ndarray) -> float:
    """Σ over rows of tr((G + Λ)⁻¹ G), Λ = diag(penalty row): k − Σ_j Λ_jj·[(G + Λ)⁻¹]_jj."""
    k = grams.shape[1]
    system = grams.copy()
    diagonal = np.arange(k)
    # A row with no data in a direction and no penalty on it spends nothing there; the jitter
    # keeps its system solvable without moving any other row's trace.
    scale = np.maximum(np.einsum("gkk->g", grams), 1.0) * 1e-12
    system[:, diagonal, diagonal] += penalty + scale[:, None]
    inverse_diagonal = np.einsum("gkk->gk", np.linalg.inv(system))
    return float(np.sum(k - np.sum(penalty * inverse_diagonal, axis=1) - scale * inverse_diagonal.sum(1)))


# Each vector spends between 0 and its width in degrees, so the sum over a side is estimated
# from this many of its vectors, scaled up, to within a few tenths of a per cent of the
# ratings' degrees at any size (the Grams of every vector cost a few half-steps at millions
# of ratings).
SAMPLE = 2048


def factor_dof(user: np.ndarray, item: np.ndarray, weight: np.ndarray | None, user_factors: np.ndarray,
               item_factors: np.ndarray, *, reg: float, count_scaled: bool, item_bias: bool,
               bias_reg: float) -> float:  # fmt: skip
    """The degrees of freedom the users' factors and the items' factors (and the item biases,
    if item_bias) spend on the ratings (user[r], item[r]) of weight a (1 if None): exact with
    at most SAMPLE vectors a side, else estimated from SAMPLE of them (a fixed choice).

    user_factors and item_factors are the fitted factor columns alone, one row per dense id;
    reg is the kernel's λ on them (times each row's Σa when count_scaled, as the half-step
    does) and bias_reg the item biases' λ_b."""
    a = np.ones(len(user)) if weight is None else np.asarray(weight, dtype=np.float64)
    # The users: the items' factors centred on each user's weighted mean of them.
    dof = _side_dof(user, item, item_factors, a, len(user_factors), reg, count_scaled, centre=True)
    # The items: the users' factors, with a column of ones for cᵢ when the item bias is fitted.
    if item_bias:
        user_factors = np.concatenate([user_factors, np.ones((len(user_factors), 1))], axis=1)
    bias = float(bias_reg) if item_bias else None
    return dof + _side_dof(item, user, user_factors, a, len(item_factors), reg, count_scaled, centre=False,
                           bias_reg=bias)  # fmt: skip


def _side_dof(group: np.ndarray, other: np.ndarray, other_factors: np.ndarray, a: np.ndarray, groups: int,
              reg: float, count_scaled: bool, *, centre: bool, bias_reg: float | None = None) -> float:  # fmt: skip
    """Σ over one side's vectors of their hat traces; each rating's vector of the other side is
    other_factors[other] (with a last column of ones when bias_reg is given, the bias's prior
    count), gathered only for the ratings of the vectors the sum is taken over."""
    scale = 1.0
    if groups > SAMPLE:
        chosen = np.zeros(groups, dtype=bool)
        chosen[np.random.default_rng(0).choice(groups, SAMPLE, replace=False)] = True
        rows = chosen[group]
        renumber = np.cumsum(chosen) - 1
        group, other, a = renumber[group[rows]], other[rows], a[rows]
        scale, groups = groups / SAMPLE, SAMPLE
    seen = other_factors.take(other, axis=0)
    amount = np.bincount(group, a, minlength=groups)
    grams = _grams(group, seen, a, groups)
    if centre:
        sums = np.stack([np.bincount(group, a * seen[:, p], minlength=groups) for p in range(seen.shape[1])], axis=1)
        grams -= sums[:, :, None] * sums[:, None, :] / np.maximum(amount, 1e-300)[:, None, None]
    penalty = np.repeat((reg * (amount if count_scaled else np.ones(groups)))[:, None], seen.shape[1], axis=1)
    if bias_reg is not None:
        penalty[:, -1] = bias_reg
    return scale * hat_trace(grams, penalty)
