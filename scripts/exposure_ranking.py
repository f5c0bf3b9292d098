"""The exposure-aware bce model's ranking on arrays, one task, no Spark: how the exposure
model's sampled 0-labels are drawn decides NDCG@10 of P(exposed)·P(like | shown).

Usage: .venv/bin/python scripts/exposure_ranking.py ratings.csv [variant ...]

Binarises the ratings at ≥ 4, splits 80/20 by a seeded permutation, fits the preference model
once (fixed λ) and the exposure model once per variant through one_task.fit_arrays, and prints
NDCG@10 of the product (each user's training items excluded, relevant = test label 1) and of
P(exposed) alone, with each fit's seconds. Variants:

- fixed: 0-labels drawn once before the fit (per user, ∝ √ of the items' label counts, without
  replacement, never a labelled item), with the item offset from the items' exposure rates;
- fresh: the default, 0-labels drawn afresh inside each half-step (train/sampled.py), without
  replacement (replace=1: with replacement, repeats dropped);
- all: every unlabelled pair a 0 of weight 1 (the positive-only model), P(exposed) = σ(w·x),
  or its score clipped to [1e-4, ∞) with clip=1.

A variant takes options after a colon, e.g. fresh:reg=0.03,k=16: reg (the exposure λ, 0.01),
pref (the preference λ, 0.1), k (0-labels per label, 32), w (their weight, 0.5), seed, rank
(10), alpha (the all-items confidence 1 + α·log 2), replace (fresh only: 0, the default, draws
K·n distinct items; 1 draws K·n with replacement and drops repeats). The preference model's test AUC is printed
once per (pref, rank). SPLIT_SEED (default 42) seeds the split.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from cfspark.data.negatives import draw_negatives, sampling_weights
from cfspark.kernels.ranking import ndcg_at_k
from cfspark.train.one_task import fit_arrays
from cfspark.train.sampled import Draws
from cfspark.train.step import StepConfig

K, W_NEG, RANK, PRIOR = 32, 0.5, 10, 2.0


def load(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    _, u = np.unique(data[:, 0], return_inverse=True)
    _, i = np.unique(data[:, 1], return_inverse=True)
    return u.astype(np.int64), i.astype(np.int64), (data[:, 2] >= 4).astype(np.float64)


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
    values = {"reg": 0.01, "k": K, "w": W_NEG, "seed": 7, "pref": 0.1, "rank": RANK, "replace": 0}
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
    rows = np.arange(n_users)
    tested = test & (i >= 0)
    preferences: dict[tuple[float, int], np.ndarray] = {}
    for variant in variants:
        name, o = options(variant)
        RANK = int(o["rank"])
        if (o["pref"], RANK) not in preferences:
            pw, px, secs, its = fit(tu, ti, ty, pref_off[ti], None, n_users, n_items, o["pref"])
            z = pw @ px.T + pref_off[None, :]
            test_auc = auc(z[u[tested], i[tested]], label[tested])
            print(f"preference λ {o['pref']:g} rank {RANK}: test AUC {test_auc:.4f}; {secs:.1f} s, {its} iterations")
            preferences[(o["pref"], RANK)] = 1 / (1 + np.exp(-z))
        p_like = preferences[(o["pref"], RANK)]
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
            eoff = np.zeros(n_items)
            z = ew_ @ w_.T
            p_exp = np.clip(z, 1e-4, None) if o.get("clip", 0) else 1 / (1 + np.exp(-z))
        else:
            draws = Draws(
                per_label=int(o["k"]), weight=o["w"], sampling="sqrt", seed=int(o["seed"]), replace=bool(o["replace"])
            )
            eoff = np.zeros(n_items)
            ew_, w_, secs, its = fit(tu, ti, np.ones(len(tu)), None, None, n_users, n_items, o["reg"], draws)
        if name != "all":
            p_exp = 1 / (1 + np.exp(-(ew_ @ w_.T + eoff[None, :])))
        score = np.log(p_exp * p_like)  # the ranking's order, as a row · item product for ndcg_at_k
        both = ndcg_at_k(score, np.eye(n_items), rows, seen, held, 10)
        alone = ndcg_at_k(np.log(p_exp), np.eye(n_items), rows, seen, held, 10)
        score_auc = auc(score[u[tested], i[tested]], label[tested])
        print(
            f"{variant}: NDCG@10 {both:.4f} (P(exposed) alone {alone:.4f}), score AUC {score_auc:.4f};"
            f" fit {secs:.1f} s, {its} iterations"
        )


if __name__ == "__main__":
    main()
