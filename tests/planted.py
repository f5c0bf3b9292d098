"""Ratings drawn from a known model of cfspark's family plus Gaussian noise:
y = m_i + c_j + u_j·v_i + ε, an item effect, a user effect and a rank-k interaction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Planted:
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    noise: float

    def rows(self) -> list[tuple[int, int, float]]:
        return list(zip(self.users.tolist(), self.items.tolist(), self.ratings.tolist(), strict=True))


def planted_ratings(
    *,
    n_users: int,
    n_items: int,
    rank: int,
    density: float,
    noise: float,
    seed: int,
    base: float = 3.0,
    item_sd: float = 0.5,
    user_sd: float = 0.3,
    popularity_sd: float = 0.0,
) -> Planted:
    """u, v ~ N(0, rank^-1/2) entrywise (so u·v has unit variance), ε ~ N(0, noise²).

    popularity_sd > 0 skews item popularity: item i is shown with probability density·w_i
    (at most 1), w lognormal with that σ and mean 1, drawn from a stream of its own.
    """
    rng = np.random.default_rng(seed)
    density = _popularity(density, n_items, popularity_sd, seed)
    users, items, signal = _signal(rng, n_users, n_items, rank, density, base, item_sd, user_sd, 1.0)
    return Planted(users, items, signal + rng.normal(scale=noise, size=len(users)), noise)


def _popularity(density: float, n_items: int, popularity_sd: float, seed: int):
    """density, or each item's (at most 1) from lognormal weights w of mean 1, drawn from a stream of their own."""
    if popularity_sd <= 0:
        return density
    w = np.exp(popularity_sd * np.random.default_rng([seed, 1]).normal(size=n_items))
    return np.minimum(1.0, density * w / w.mean())[None, :]


def _signal(rng, n_users, n_items, rank, density, base, item_sd, user_sd, scale):
    """Shown pairs and m_i + c_j + scale·u_j·v_i for each, drawn from rng in a fixed order."""
    u = rng.normal(scale=rank**-0.25, size=(n_users, rank))
    v = rng.normal(scale=rank**-0.25, size=(n_items, rank))
    item_effect = base + rng.normal(scale=item_sd, size=n_items)
    user_effect = rng.normal(scale=user_sd, size=n_users)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    return users, items, item_effect[items] + user_effect[users] + scale * (u[users] * v[items]).sum(1)


def planted_labels(
    *,
    n_users: int,
    n_items: int,
    rank: int,
    density: float,
    seed: int,
    item_sd: float = 1.0,
    user_sd: float = 0.5,
    scale: float = 1.5,
    popularity_sd: float = 0.0,
) -> tuple[Planted, np.ndarray]:
    """0/1 labels drawn from P(y=1) = σ(m_i + c_j + scale·u_j·v_i) on a random set of shown pairs
    (popularity_sd skews the items shown, as planted_ratings').

    Returns the labels and the true probability of each shown pair.
    """
    rng = np.random.default_rng(seed)
    density = _popularity(density, n_items, popularity_sd, seed)
    users, items, z = _signal(rng, n_users, n_items, rank, density, -0.5, item_sd, user_sd, scale)
    p = 1.0 / (1.0 + np.exp(-z))
    labels = (rng.random(len(p)) < p).astype(float)
    return Planted(users, items, labels, 0.0), p


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties get average ranks)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def planted_exposure(
    *, n_users: int, n_items: int, rank: int, shown: float, seed: int, scale: float = 2.0
) -> tuple[Planted, np.ndarray]:
    """Labels behind a known exposure process: a pair is shown with P(exposed) =
    σ(e_i + scale·a_u·b_i + shift), lognormal-popular items and a taste of its own, with shift set
    so that about `shown` of all pairs are shown; a shown pair's label is 1 with P(like | shown) =
    σ(c_i + scale·u_j·v_i), independent of why it was shown. Returns the shown pairs' labels and
    every pair's P(like | shown) (n_users × n_items), the truth a model should recover."""
    rng = np.random.default_rng(seed)
    a, b = (rng.normal(scale=rank**-0.25, size=(n, rank)) for n in (n_users, n_items))
    u, v = (rng.normal(scale=rank**-0.25, size=(n, rank)) for n in (n_users, n_items))
    exposure = rng.normal(scale=1.0, size=n_items)[None, :] + scale * a @ b.T
    exposure += np.log(shown / (1 - shown)) - np.median(exposure)
    like = 1.0 / (1.0 + np.exp(-(rng.normal(scale=0.5, size=n_items)[None, :] + scale * u @ v.T)))
    users, items = np.nonzero(rng.random((n_users, n_items)) < 1.0 / (1.0 + np.exp(-exposure)))
    labels = (rng.random(len(users)) < like[users, items]).astype(float)
    return Planted(users, items, labels, 0.0), like
