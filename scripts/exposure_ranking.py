"""The exposure-aware bce model's ranking on arrays, one task, no Spark: how the exposure
model's sampled 0-labels are drawn decides NDCG@10 of P(exposed)·P(like | shown).

Usage: .venv/bin/python scripts/exposure_ranking.py ratings.csv|labels-parquet [variant ...]

Binarises the ratings at ≥ 4 (a parquet folder of user, item, rating holds 0/1 labels already,
as jobs/generate.py --binary writes them), splits 80/20 by a seeded permutation, fits the preference model
once (fixed λ) and the exposure model once per variant through one_task.fit_arrays, and prints
NDCG@10 of the product (each user's training items excluded, relevant = test label 1) and of
P(exposed) alone, with each fit's seconds. Variants:

- fixed: 0-labels drawn once before the fit (per user, ∝ √ of the items' label counts, without
  replacement, never a labelled item), with the item offset from the items' exposure rates;
- fresh: the default, 0-labels drawn afresh inside each half-step (train/sampled.py), without
  replacement (replace=1: with replacement, repeats dropped);
- all: every unlabelled pair a 0 of weight 1 (the positive-only all-items model on the labelled
  pairs), P(exposed) = σ(w·x), or with clip=1 its least-squares score w·x itself, clipped to
  [1e-4, ∞) (σ of a score in about [0, 1] is nearly flat, and the product then ranks by
  P(like | shown) alone).

A variant takes options after a colon, e.g. fresh:reg=0.03,k=16: reg (the exposure λ, 0.01),
pref (the preference λ, 0.1), k (0-labels per label, 32), w (their weight, 0.5), seed, rank
(10), alpha (the all-items confidence 1 + α·log 2), replace (fresh only: 0, the default, draws
K·n distinct items; 1 draws K·n with replacement and drops repeats), coarse (fresh only: the
first iterations drawing a quarter of K at 4 × the weight, 2 as the library's default; 0 draws K
throughout). The preference model's test AUC is printed
once per (pref, rank). SPLIT_SEED (default 42) seeds the split.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

from cfspark.data.negatives import draw_negatives, sampling_weights
from cfspark.kernels.ranking import discounts
from cfspark.train.one_task import fit_arrays
from cfspark.train.sampled import Draws
from cfspark.train.step import StepConfig

K, W_NEG, RANK, PRIOR = 32, 0.5, 10, 2.0


def load(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, label): a ratings CSV binarised at ≥ 4, or a parquet folder of (user, item,
    rating) whose rating is already 0/1 (jobs/generate.py --binary)."""
    if path.endswith(".csv"):
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
        users, items, label = data[:, 0], data[:, 1], (data[:, 2] >= 4).astype(np.float64)
    else:
        table = pq.read_table(path, columns=["user", "item", "rating"])
        users, items = table.column("user").to_numpy(), table.column("item").to_numpy()
        label = table.column("rating").to_numpy().astype(np.float64)
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    return u.astype(np.int64), i.astype(np.int64), label


def product_ndcg(log_score, n_users: int, seen: tuple, held: tuple, k: int = 10) -> float:
    """kernels/ranking.py's NDCG@k for a score that is no single dot product: log_score(rows)
    gives those rows' scores over every item, a batch of rows at a time."""
    gain = discounts(k)
    ideal = np.cumsum(gain)
    rows = np.arange(n_users)
    rows = rows[held[0][rows + 1] > held[0][rows]]
    values = []
    for start in range(0, len(rows), 1000):
        part = rows[start : start + 1000]
        scores = log_score(part)
        for r, row in enumerate(part):
            scores[r, seen[1][seen[0][row] : seen[0][row + 1]]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        relevant = np.zeros(scores.shape, bool)
        for r, row in enumerate(part):
            cols = held[1][held[0][row] : held[0][row + 1]]
            relevant[r, cols[cols >= 0]] = True
        hits = np.take_along_axis(relevant, top, axis=1) & np.isfinite(np.take_along_axis(scores, top, axis=1))
        n_held = held[0][part + 1] - held[0][part]
        values.append(hits @ gain / ideal[np.minimum(n_held, k) - 1])
    return float(np.concatenate(values).mean())


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def evaluate(preference: tuple, exposure: tuple, link: str, n_users: int, seen: tuple, held: tuple,
             tested: tuple) -> tuple[float, float, float]:  # fmt: skip
    """(NDCG@10 of P(exposed)·P(like | shown), NDCG@10 of P(exposed) alone, the product's AUC on
    the tested pairs); each model is (user rows, item rows, item offsets), and P(exposed) is σ
    of the exposure score, or (link "clip") the score itself, clipped to [1e-4, ∞)."""
    pw, px, pref_off = preference
    ew, ex, eoff = exposure

    def log_exposed(z: np.ndarray) -> np.ndarray:
        return np.log(np.clip(z, 1e-4, None)) if link == "clip" else log_sigmoid(z)

    def exposed(part: np.ndarray) -> np.ndarray:
        return log_exposed(ew[part] @ ex.T + eoff[None, :])

    def product(part: np.ndarray) -> np.ndarray:
        return exposed(part) + log_sigmoid(pw[part] @ px.T + pref_off[None, :])

    users, items, labels = tested
    pairs = log_exposed(np.einsum("ij,ij->i", ew[users], ex[items]) + eoff[items])
    pairs += log_sigmoid(np.einsum("ij,ij->i", pw[users], px[items]) + pref_off[items])
    both = product_ndcg(product, n_users, seen, held)
    return both, product_ndcg(exposed, n_users, seen, held), auc(pairs, labels)


def smoothed_offset(items: np.ndarray, y: np.ndarray, w: np.ndarray, n_items: int) -> np.ndarray:
    """Per item, logit of (Σ w·y + m·p) / (Σ w + m), p the weighted global rate."""
    p = float((w * y).sum() / w.sum())
    rate = (np.bincount(items, w * y, n_items) + PRIOR * p) / (np.bincount(items, w, n_items) + PRIOR)
    return np.log(rate / (1 - rate))


def cfg(side: str, reg: float, draws: Draws | None = None, learn_item_bias: bool = True) -> StepConfig:
    return StepConfig(
        side=side, rank=RANK, loss="bce", reg=reg, init_scale=0.1, count_scaled=True, bias_reg=5.0,
        learn_bias=side == "user" or learn_item_bias, draws=draws,
    )  # fmt: skip


def fit(u, i, y, offset, weight, n_users, n_items, reg, draws=None):
    began = time.perf_counter()
    users, items, history, stop = fit_arrays(
        u, i, y, offset, weight, np.arange(n_users), np.arange(n_items) + 10**6,
        cfg("user", reg, draws), cfg("item", reg, draws), max_iter=20, tol=0.002,
    )  # fmt: skip
    return users, items, time.perf_counter() - began, len(history)


def fixed_negatives(u, i, n_users, n_items, seed=13):
    """The pre-fresh design: K·n_u 0-labels per user, drawn once, with the items' exposure offset."""
    pool = sampling_weights(np.bincount(i, minlength=n_items), "sqrt")
    order = np.argsort(u, kind="stable")
    ptr = np.r_[0, np.cumsum(np.bincount(u, minlength=n_users))]
    nu, ni = [], []
    for r in range(n_users):
        labelled = i[order[ptr[r] : ptr[r + 1]]]
        drawn = draw_negatives(labelled, K * len(labelled), pool, np.random.default_rng([seed, r]))
        nu.append(np.full(len(drawn), r))
        ni.append(drawn)
    nu, ni = np.concatenate(nu), np.concatenate(ni)
    uu, ii = np.r_[u, nu], np.r_[i, ni]
    y = np.r_[np.ones(len(u)), np.zeros(len(nu))]
    w = np.r_[np.ones(len(u)), np.full(len(nu), W_NEG)]
    return uu, ii, y, w, smoothed_offset(ii, y, w, n_items)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, ties counted half (Mann–Whitney)."""
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    first = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    pos = labels == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def options(variant: str) -> tuple[str, dict[str, float]]:
    """'fresh:reg=0.003,k=16' → ('fresh', {'reg': 0.003, 'k': 16.0}), over the defaults."""
    name, _, rest = variant.partition(":")
    values = {"reg": 0.01, "k": K, "w": W_NEG, "seed": 7, "pref": 0.1, "rank": RANK, "replace": 0, "coarse": 2}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        values[key] = float(value)
    return name, values


def main() -> None:
    global RANK
    path, variants = sys.argv[1], sys.argv[2:] or ["fixed", "fresh"]
    u, i, label = load(path)
    test = np.random.default_rng(int(os.environ.get("SPLIT_SEED", "42"))).random(len(u)) < 0.2
    # Items indexed over the training split; a test item without training labels is -1 (never hit).
    known = np.unique(i[~test])
    i = np.where(np.isin(i, known), np.searchsorted(known, i), -1)
    n_users, n_items = u.max() + 1, len(known)
    tu, ti, ty = u[~test], i[~test], label[~test]
    pref_off = smoothed_offset(ti, ty, np.ones(len(ty)), n_items)
    seen_order = np.argsort(tu, kind="stable")
    seen = (np.r_[0, np.cumsum(np.bincount(tu, minlength=n_users))], ti[seen_order])
    rel = test & (label == 1)
    rel_order = np.argsort(u[rel], kind="stable")
    held = (np.r_[0, np.cumsum(np.bincount(u[rel], minlength=n_users))], i[rel][rel_order])
    tested = test & (i >= 0)
    preferences: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}
    for variant in variants:
        name, o = options(variant)
        RANK = int(o["rank"])
        if (o["pref"], RANK) not in preferences:
            pw, px, secs, its = fit(tu, ti, ty, pref_off[ti], None, n_users, n_items, o["pref"])
            z = np.einsum("ij,ij->i", pw[u[tested]], px[i[tested]]) + pref_off[i[tested]]
            test_auc = auc(z, label[tested])
            print(f"preference λ {o['pref']:g} rank {RANK}: test AUC {test_auc:.4f}; {secs:.1f} s, {its} iterations")
            preferences[(o["pref"], RANK)] = (pw, px)
        pw, px = preferences[(o["pref"], RANK)]
        eoff = np.zeros(n_items)
        link = "sigmoid"
        if name == "fixed":
            eu, ei, ey, ew, eoff = fixed_negatives(tu, ti, n_users, n_items)
            ew_, w_, secs, its = fit(eu, ei, ey, eoff[ei], ew, n_users, n_items, o["reg"])
        elif name == "all":  # every unlabelled pair a 0 of weight 1, through the Gramian (kernels/implicit.py)
            confidence = np.full(len(tu), 1.0 + o.get("alpha", 1.0) * np.log(2.0))
            began = time.perf_counter()
            sides = (dataclasses.replace(cfg(s, o["reg"]), all_items=True, learn_bias=False) for s in ("user", "item"))
            ew_, w_, history, _ = fit_arrays(
                tu, ti, np.ones(len(tu)), None, confidence, np.arange(n_users), np.arange(n_items) + 10**6, *sides,
                max_iter=20, tol=0.0002,
            )  # fmt: skip
            secs, its = time.perf_counter() - began, len(history)
            link = "clip" if o.get("clip", 0) else "sigmoid"
        else:
            draws = Draws(
                per_label=int(o["k"]), weight=o["w"], sampling="sqrt", seed=int(o["seed"]), replace=bool(o["replace"]),
                coarse=int(o["coarse"]),
            )
            ew_, w_, secs, its = fit(tu, ti, np.ones(len(tu)), None, None, n_users, n_items, o["reg"], draws)

        both, alone, score_auc = evaluate((pw, px, pref_off), (ew_, w_, eoff), link, n_users, seen, held,
                                          (u[tested], i[tested], label[tested]))  # fmt: skip
        print(
            f"{variant}: NDCG@10 {both:.4f} (P(exposed) alone {alone:.4f}), score AUC {score_auc:.4f};"
            f" fit {secs:.1f} s, {its} iterations"
        )


if __name__ == "__main__":
    main()
