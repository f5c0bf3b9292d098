"""Write the generated data sets of docs/benchmarks.md's automatic-λ table as CSV (numpy only).

    python scripts/shaped_sets.py OUT_DIR

Each is y = base + item effect + user effect + scale·u·v + noise, with lognormal item
popularity, then rounded and clipped onto its scale: a −10..10 set with few items, a 0.5–4
half-star set, a very sparse 1–5 set (under 3 ratings per item) and a low-noise set with
many ratings per user.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SETS = {  # name: users, items, ratings, base, item_sd, user_sd, interaction, noise, low, high, step
    "scale-10-10": (3000, 100, 40_000, 0.0, 2.5, 2.0, 3.0, 3.0, -10.0, 10.0, 0.01),
    "scale-0.5-4": (1500, 2000, 35_000, 2.8, 0.4, 0.4, 0.5, 0.6, 0.5, 4.0, 0.5),
    "very-sparse": (20_000, 150_000, 120_000, 3.5, 0.6, 0.4, 0.7, 0.8, 1.0, 5.0, 1.0),
    "low-noise": (2000, 1500, 300_000, 3.0, 0.5, 0.3, 1.0, 0.2, 0.5, 5.0, 0.01),
}


def shaped(name: str, rank: int = 8, seed: int = 0) -> np.ndarray:
    users, items, n, base, item_sd, user_sd, scale, noise, low, high, step = SETS[name]
    rng = np.random.default_rng(seed)
    pop = np.exp(rng.normal(size=items))
    u = rng.integers(0, users, int(n * 1.3))
    i = rng.choice(items, int(n * 1.3), p=pop / pop.sum())
    pairs = np.unique(u.astype(np.int64) * items + i)[:n]
    rng.shuffle(pairs)
    pairs = np.sort(pairs[:n])
    u, i = pairs // items, pairs % items
    U, V = (rng.normal(scale=rank**-0.25, size=(m, rank)) for m in (users, items))
    y = base + rng.normal(scale=item_sd, size=items)[i] + rng.normal(scale=user_sd, size=users)[u]
    y = y + scale * (U[u] * V[i]).sum(1) + rng.normal(scale=noise, size=len(u))
    y = np.clip(np.round(y / step) * step, low, high)
    return np.c_[u, i, y]


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name in SETS:
        (out / name).mkdir(parents=True, exist_ok=True)
        rows = shaped(name)
        np.savetxt(out / name / "ratings.csv", rows, fmt=["%d", "%d", "%.2f"], delimiter=",",
                   header="userId,movieId,rating", comments="")  # fmt: skip
        print(name, len(rows), "ratings,", len(np.unique(rows[:, 1])), "items")
