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
) -> Planted:
    """u, v ~ N(0, rank^-1/2) entrywise (so u·v has unit variance), ε ~ N(0, noise²)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(scale=rank**-0.25, size=(n_users, rank))
    v = rng.normal(scale=rank**-0.25, size=(n_items, rank))
    item_effect = base + rng.normal(scale=item_sd, size=n_items)
    user_effect = rng.normal(scale=user_sd, size=n_users)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    signal = item_effect[items] + user_effect[users] + (u[users] * v[items]).sum(1)
    return Planted(users, items, signal + rng.normal(scale=noise, size=len(users)), noise)
