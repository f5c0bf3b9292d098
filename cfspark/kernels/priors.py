"""Prior counts chosen from the data: how many pseudo-ratings a per-group effect is shrunk by.

An item mean μ_i and a bias b_j are per-group effects: a group (an item, a user) with n
ratings has a mean ȳ whose error has variance σ²/n around the group's true effect, and the
true effects vary with variance τ² around the grand mean. The posterior mean of an effect
is then the group's mean shrunk by m = σ²/τ² pseudo-ratings of the grand mean, and that m
minimises the expected error of an unseen rating. Both variances come from the moments of
the per-group sums (the method of moments, unbiased for any n):

    σ² = Σ_groups (Q − S²/A) / (Σ A − G)                the pooled within-group variance
    τ² = mean over groups of (S/A − ȳ)² − σ² · mean of 1/A

with A, S, Q a group's Σa, Σa·y and Σa·y² (a = 1 unless weighted), G the number of groups
and ȳ = ΣS / ΣA. Data whose groups differ only by noise give τ² ≤ 0: the effect is then
shrunk away entirely (the count's cap). A constant prior (20 pseudo-ratings, say) suits
one data set: on data with no such effect it lets every group fit its own noise, and on
data with strong effects it shrinks them too far. The ratio is scale-free: ratings × a
multiply σ² and τ² by a².

Worked example: two items of 2 ratings, {1, 3} and {4, 6}. The within-group variance is
(2 + 2) / (4 − 2) = 2, the means 2 and 5 lie 1.5 from the grand mean 3.5, so τ² = 2.25 − 2 ·
0.5 = 1.25 and m = 2 / 1.25 = 1.6 pseudo-ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupMoments:
    """The sums over groups that the prior count needs; sums of two sets of groups add."""

    groups: float  # G
    weight: float  # Σ A
    total: float  # Σ S
    within: float  # Σ (Q − S²/A)
    mean_sq: float  # Σ (S/A)²
    mean_sum: float  # Σ S/A
    inv_weight: float  # Σ 1/A


def group_moments(weight: np.ndarray, total: np.ndarray, squares: np.ndarray) -> GroupMoments:
    """GroupMoments of groups with Σa = weight, Σa·y = total and Σa·y² = squares (arrays, one
    entry per group, every weight > 0)."""
    a, s, q = (np.asarray(v, dtype=np.float64) for v in (weight, total, squares))
    mean = s / a
    return GroupMoments(float(a.size), float(a.sum()), float(s.sum()), float(np.sum(q - s * mean)),
                        float(np.sum(mean * mean)), float(mean.sum()), float(np.sum(1.0 / a)))  # fmt: skip


def prior_count(moments: GroupMoments, cap: float | None = None, noise: GroupMoments | None = None,
                dof: float = 0.0) -> float:  # fmt: skip
    """m = σ²/τ² from the groups' moments, to 4 significant digits, at most cap (also when
    τ² ≤ 0): by default Σa, a prior as heavy as all the data, which holds every effect at the
    grand mean. 0 when the groups hold no noise to shrink against (every group constant).
    noise, if given, holds the same groups' moments of what the model's other terms leave of
    each rating, whose fit spent dof degrees of freedom (kernels/dof.py): σ² is then their
    pooled within-group sum of squares over Σa − G − dof, while τ² stays moments'
    (prior_from_rows says why).
    The rounding makes m the same whichever order a cluster adds the groups' sums in."""
    return float(f"{_ratio(moments, moments.weight if cap is None else cap, noise or moments, dof):.4g}")


def prior_from_rows(group: np.ndarray, y: np.ndarray, weight: np.ndarray | None, num_groups: int,
                    residual: np.ndarray | None = None, dof: float = 0.0) -> float:  # fmt: skip
    """prior_count of the rows' groups (dense ids 0..num_groups−1; a group with no row is left out).

    residual, if given, is y less the model's other terms (the factors, the other side's
    bias), fitted with dof degrees of freedom: the noise σ² is then its pooled within-group
    variance on Σa − G − dof degrees. Within a group y also varies with those terms, which
    would count as noise and make m too large; τ² stays y's, whose means' spread less their
    within-group variance over n is the effects' alone (the residual's means lose what the
    other terms absorbed: a user's factors can carry part of the user's mean)."""
    a = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    present = np.bincount(group, a, minlength=num_groups) > 0

    def moments(values: np.ndarray) -> GroupMoments:
        sums = [np.bincount(group, v, minlength=num_groups) for v in (a, a * values, a * values * values)]
        return group_moments(*(v[present] for v in sums))

    return prior_count(moments(y), noise=None if residual is None else moments(residual), dof=dof)


def _ratio(moments: GroupMoments, cap: float, noise: GroupMoments, fitted: float) -> float:
    g = moments.groups
    dof = moments.weight - g
    if g < 2 or dof <= 0 or noise.weight <= noise.groups:
        return cap  # too few groups, or one rating each: no estimate of either variance
    within = max(moments.within, 0.0) / dof
    grand = moments.total / moments.weight
    spread = moments.mean_sq - 2.0 * grand * moments.mean_sum + g * grand * grand
    tau2 = spread / g - within * moments.inv_weight / g
    # y's own within-group variance holds the noise and the other terms' signal, so it bounds
    # σ² from above; where the other terms spend (nearly) every degree the residual has, it
    # holds no estimate of the noise and that bound is the estimate.
    left = noise.weight - noise.groups - fitted
    sigma2 = within if left <= 0 else min(max(noise.within, 0.0) / left, within)
    if sigma2 <= 0.0:
        return 0.0
    if tau2 <= sigma2 / cap:
        return cap
    return sigma2 / tau2
