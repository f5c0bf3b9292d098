"""Would a tempered ranking score pay? NDCG@10 of P(exposed)·P(like | shown)^β for the bce
defaults, with β fixed or chosen on a validation fold of the training split.

Usage: .venv/bin/python scripts/exposure_beta.py [--set section.key=value ...] [--fold 0.2]

The --set keys are the job's (jobs/train.py): the data, model.loss=bce, split.seed and so on.
The script reads and splits as the job does (app/run.py), fits the default estimator on the
training split, and scores every trained user's ranking of every trained item without a
training label, relevant = a test label 1, as data/metrics.py's ranking_metrics does, for
each β of BETAS (β = 1 is the job's score, β = 0 P(exposed) alone). Then it holds a hashed
--fold of the training labels out of both parts, fits on the rest, and picks the β of best
NDCG@10 on the fold (its labels 1 relevant, the rest's labels excluded). It prints the test
NDCG@10 of every β, the fold's, the chosen β, and the test NDCG@10 at the chosen β and at 1.
The scores are the model's own vectors (ExposureAwareModel._vectors: each part's logit is a
dot product), scored in numpy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.app.cli import job_session
from cfspark.app.config import load_config
from cfspark.app.run import Run
from cfspark.core.schema import ITEM, RATING, USER
from cfspark.data.split import hashed_fraction
from cfspark.kernels.ranking import discounts
from cfspark.ml.exposure_model import ExposureAwareModel

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
FOLD_SEED = 104729  # the fold's hash seed, added to the split seed: a fold apart from the λ search's
K = 10


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def vectors(model: ExposureAwareModel) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    """(user id → row, user vectors, item id → row, item vectors): each vector is the
    preference part's followed by the exposure part's, of equal length."""
    users, items = model._vectors()
    out = []
    for table, key in ((users, USER), (items, ITEM)):
        rows = table.select(key, "_v").collect()
        out += [{r[0]: n for n, r in enumerate(rows)}, np.array([r[1] for r in rows], np.float64)]
    return tuple(out)


def csr(pairs: list, index_u: dict, index_i: dict, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr, cols) over the model's users of (user, item) pairs; an item the model lacks is −1."""
    us = np.array([index_u[u] for u, _ in pairs], np.int64)
    cols = np.array([index_i.get(i, -1) for _, i in pairs], np.int64)
    order = np.argsort(us, kind="stable")
    return np.r_[0, np.cumsum(np.bincount(us, minlength=n_users))], cols[order]


def ndcg(model: ExposureAwareModel, seen: DataFrame, relevant: DataFrame, betas=BETAS) -> dict[float, float]:
    """Mean NDCG@K, per β, of log σ(exposure logit) + β·log σ(preference logit) over the
    model's items without the user's seen pairs, for the model's users with a relevant pair."""
    index_u, uv, index_i, iv = vectors(model)
    half = uv.shape[1] // 2
    known = [(r[0], r[1]) for r in seen.select(USER, ITEM).collect() if r[0] in index_u]
    held = [(r[0], r[1]) for r in relevant.select(USER, ITEM).collect() if r[0] in index_u]
    seen_ptr, seen_cols = csr(known, index_u, index_i, len(uv))
    held_ptr, held_cols = csr(held, index_u, index_i, len(uv))
    rows = np.flatnonzero(held_ptr[1:] > held_ptr[:-1])
    gain, out = discounts(K), {b: [] for b in betas}
    ideal = np.cumsum(gain)
    for start in range(0, len(rows), 500):
        part = rows[start : start + 500]
        like = log_sigmoid(uv[part, :half] @ iv[:, :half].T)
        exposed = log_sigmoid(uv[part, half:] @ iv[:, half:].T)
        relevant_mask = np.zeros(like.shape, bool)
        blocked = np.zeros(like.shape, bool)
        for r, row in enumerate(part):
            cols = seen_cols[seen_ptr[row] : seen_ptr[row + 1]]
            blocked[r, cols[cols >= 0]] = True
            cols = held_cols[held_ptr[row] : held_ptr[row + 1]]
            relevant_mask[r, cols[cols >= 0]] = True
        n_held = held_ptr[part + 1] - held_ptr[part]
        for beta in betas:
            scores = np.where(blocked, -np.inf, exposed + beta * like)
            top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            hits = np.take_along_axis(relevant_mask & ~blocked, top, axis=1)
            out[beta].append(hits @ gain / ideal[np.minimum(n_held, K) - 1])
    return {b: float(np.concatenate(v).mean()) for b, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--fold", type=float, default=0.2, help="the validation fold's share of the training labels")
    args = parser.parse_args()
    cfg = load_config(overrides=args.overrides)
    spark = job_session("exposure-beta", cfg)
    with Run(spark, cfg) as run:
        run.read()
        train, test = run.split()
        model = run.fit()
        assert isinstance(model, ExposureAwareModel)
        test_ndcg = ndcg(model, train, test.filter(F.col(RATING) == 1.0))
        in_fold = hashed_fraction(cfg["split"]["seed"] + FOLD_SEED) < F.lit(args.fold)
        rest, fold = train.filter(~in_fold).cache(), train.filter(in_fold).cache()
        sub = run.estimator().fit_validated(rest)
        fold_ndcg = ndcg(sub, rest, fold.filter(F.col(RATING) == 1.0))
        best = max(fold_ndcg.values())
        chosen = min((b for b, v in fold_ndcg.items() if v == best), key=lambda b: abs(b - 1.0))
        result = {
            "overrides": args.overrides, "fold": args.fold, "reg": model.summary.get("reg"),
            "test_ndcg": test_ndcg, "fold_ndcg": fold_ndcg, "chosen_beta": chosen,
            "test_at_chosen": test_ndcg[chosen], "test_at_1": test_ndcg[1.0],
            "gain": test_ndcg[chosen] / test_ndcg[1.0] - 1.0,
        }  # fmt: skip
        print(json.dumps(result), flush=True)
        sub.unpersist()
    spark.stop()


if __name__ == "__main__":
    main()
