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


def factor_dof(user: np.ndarray, item: np.ndarray, weight: np.ndarray | None, user_factors: np.ndarray,
               item_factors: np.ndarray, *, reg: float, count_scaled: bool, item_bias: bool,
               bias_reg: float) -> float:  # fmt: skip
    """The degrees of freedom the users' factors and the items' factors (and the item biases,
    if item_bias) spend on the ratings (user[r], item[r]) of weight a (1 if None).

    user_factors and item_factors are the fitted factor columns alone, one row per dense id;
    reg is the kernel's λ on them (times each row's Σa when count_scaled, as the half-step
    does) and bias_reg the item biases' λ_b."""
    a = np.ones(len(user)) if weight is None else np.asarray(weight, dtype=np.float64)
    n_users, n_items = len(user_factors), len(item_factors)
    rank = user_factors.shape[1]
    amount_u = np.bincount(user, a, minlength=n_users)
    amount_i = np.bincount(item, a, minlength=n_items)
    u_reg = reg * (amount_u if count_scaled else np.ones(n_users))
    i_reg = reg * (amount_i if count_scaled else np.ones(n_items))

    # The users: the items' factors centred on each user's weighted mean of them.
    seen = item_factors[item]
    sums = np.stack([np.bincount(user, a * seen[:, p], minlength=n_users) for p in range(rank)], axis=1)
    grams = _grams(user, seen, a, n_users)
    grams -= sums[:, :, None] * sums[:, None, :] / np.maximum(amount_u, 1e-300)[:, None, None]
    dof = hat_trace(grams, np.repeat(u_reg[:, None], rank, axis=1))

    # The items: the users' factors, with a column of ones for cᵢ when the item bias is fitted.
    seen = user_factors[user]
    penalty = np.repeat(i_reg[:, None], rank, axis=1)
    if item_bias:
        seen = np.concatenate([seen, np.ones((len(user), 1))], axis=1)
        penalty = np.concatenate([penalty, np.full((n_items, 1), float(bias_reg))], axis=1)
    return dof + hat_trace(_grams(item, seen, a, n_items), penalty)

