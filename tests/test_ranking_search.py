"""Positive-only counts: λ and α chosen on NDCG@10 of a validation fold of the training split.

The test split must never reach the choice: poison every test pair's count and run the job
again; the chosen λ and α, and every validation NDCG on the path, stay the same. The search
itself, on numpy arrays: the bracketing, the one-standard-error rule, and (the control that
lets the job's check fail) a path that moves when training counts are poisoned.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
from pyspark.sql import functions as F

from cfspark.app.config import load_config
from cfspark.app.train import run_job
from cfspark.bench.implicit import play_counts
from cfspark.data.split import split_ratings
from cfspark.fit import rank_search
from cfspark.fit.rank_search import (
    ALPHA_START,
    REG_START,
    AlphaPlan,
    choose_ranking,
    fold_resolution,
    search_ranking,
    within_noise,
)
from cfspark.fit.reg_search import SAMPLE_SEED, SEARCH_FRACTION, sampled_users
from cfspark.kernels.init import initial_params
from cfspark.ml.estimator import CollaborativeFilter
from cfspark.ml.model_io import read_metadata
from cfspark.train import search_task
from cfspark.train.saddle import factor_scale, growing
from cfspark.train.search_task import SearchPlan
from cfspark.train.step import StepConfig, solve_rows

SPLIT_SEED = 42


def _write(path, rows):
    path.write_text("user,item,label,plays\n" + "".join(f"{u},{i},1,{c:g}\n" for u, i, c in rows))


def _job(spark, csv, out):
    cfg = load_config(
        None,
        [f"input.path={csv}", "input.user_col=user", "input.item_col=item", "input.rating_col=label",
         "input.weight_col=plays", "model.loss=bce", f"output.path={out}", "model.rank=4", "model.max_iter=8",
         "checkpoint.interval=0", f"split.seed={SPLIT_SEED}"],
    )  # fmt: skip
    return run_job(spark, cfg)


@pytest.mark.slow
def test_ranking_search_never_reads_the_test_split(spark, tmp_path):
    rows = play_counts(users=120, items=100, draws=6000, seed=3)
    df = spark.createDataFrame(rows, "user long, item long, plays double").withColumn("rating", F.lit(1.0))
    _, test = split_ratings(df, test_fraction=0.2, seed=SPLIT_SEED)
    in_test = {(r.user, r.item) for r in test.collect()}
    poison = {"clean": set(), "poisoned": in_test}
    out = {}
    for name, pairs in poison.items():
        _write(tmp_path / f"{name}.csv", [(u, i, c * 1000 + 7 if (u, i) in pairs else c) for u, i, c in rows])
        out[name] = _job(spark, tmp_path / f"{name}.csv", tmp_path / name)
    clean, poisoned = out["clean"]["model"], out["poisoned"]["model"]
    assert out["clean"]["counts"]["test"] == out["poisoned"]["counts"]["test"] == len(in_test)
    search = clean["reg_search"]
    assert search["metric"] == "ndcg@10" and search["reg"] == clean["reg"] and search["alpha"] == clean["alpha"]
    # λ's start grid first, at the reference α = 1, then α's start grid at the chosen λ.
    path = clean["reg_path"]
    assert [(p["reg"], p["alpha"]) for p in path[:3]] == [(r, 1.0) for r in REG_START]
    alpha_points = [p for p in path if p["reg"] == clean["reg"]][-len(path) :]
    assert {p["alpha"] for p in alpha_points} >= set(ALPHA_START)
    assert all(0 < p["ndcg"] <= 1 for p in path)
    assert poisoned["reg_path"] == path and poisoned["alpha"] == clean["alpha"] and poisoned["reg"] == clean["reg"]
    # The model's metadata keeps λ, α and the path in its summary, as metrics.json does.
    meta = read_metadata(spark, str(tmp_path / "clean" / "model"))["cfspark"]
    assert meta["summary"]["alpha"] == clean["alpha"] and meta["summary"]["reg_path"] == path


@pytest.mark.slow
def test_the_sampled_search_is_the_search_on_the_hashed_users(spark):
    rows = play_counts(users=2000, items=500, draws=100_000, seed=7)
    pairs = spark.createDataFrame(rows, "user long, item long, plays double").select(
        "user", "item", F.lit(1.0).alias("rating"), (1.0 + F.log1p("plays")).alias("weight")
    ).cache()  # fmt: skip
    n = pairs.count()
    settings = CollaborativeFilter(rank=10, loss="bce").fit_settings()
    cfg = [dataclasses.replace(settings.step_config(side, 0.1), all_items=True, learn_bias=False)
           for side in ("user", "item")]  # fmt: skip
    plan = AlphaPlan(reference=1.0, passes=("reg", "alpha"), reg=0.1)
    search = functools.partial(choose_ranking, settings, alpha=plan, tol=2e-4)
    # Past max_ratings a quarter of the users, or fewer where a quarter holds more than it.
    for most, share in ((n // 2, SEARCH_FRACTION), (n // 8, 0.125)):
        found = search(pairs, *cfg, num_ratings=n, max_ratings=most)
        assert found["sample_fraction"] == pytest.approx(share, rel=1e-3)
        share = found["sample_fraction"]
        # The same search on those users' pairs alone, all of them searched: the same path.
        drawn = sampled_users(pairs, share, settings.seed + SAMPLE_SEED)
        alone = search(drawn, *cfg, num_ratings=drawn.count())
        assert alone["sample_fraction"] == 1.0 and found["path"] == alone["path"]
        assert 0.8 * share < drawn.select("user").distinct().count() / 2000 < 1.2 * share
        # And the same factors for the fit to start from: the sampled users' and their items'.
        for j, id_col in enumerate(("user", "item")):
            ours, theirs = (
                {r[id_col]: np.r_[r.features, r.bias] for r in side["factors"][j].collect()} for side in (found, alone)
            )  # fmt: skip
            assert ours.keys() == theirs.keys() and len(ours) == found["factors"][2][j]
            assert all(np.array_equal(ours[key], theirs[key]) for key in ours)
        assert found["factors"][2][0] == drawn.select("user").distinct().count()  # the sampled users alone
    pairs.unpersist()


def test_within_noise_keeps_the_preferred_point_unless_another_is_clearly_better():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    points = [{"reg": 0.1}, {"reg": 0.03}, {"reg": 0.01}]
    prefer = lambda p: -p["reg"]  # noqa: E731
    # A gain far below the users' spread: the strongest λ stays.
    small = [base, base + rng.normal(0.001, 0.2, 400), base + rng.normal(0.002, 0.2, 400)]
    assert within_noise(small, points, prefer) == 0
    # A gain of 0.05 on every user: the weak λ is better beyond doubt.
    clear = [base, base + 0.01, base + 0.05 + rng.normal(0, 0.01, 400)]
    assert within_noise(clear, points, prefer) == 2


def test_fold_resolution_is_the_median_paired_standard_error_relative_to_the_best():
    rng = np.random.default_rng(2)
    best = rng.random(300) * 0.2
    # Three other points: the best's NDCG minus theirs has spreads 0.01, 0.02 and 0.04 per user.
    others = [best - 0.02 - rng.normal(0, s, 300) for s in (0.01, 0.02, 0.04)]
    per_row = [np.full(300, -np.inf), others[0], best, others[1], others[2]]  # a collapsed point first
    errors = sorted(float(np.std(best - o, ddof=1)) / math.sqrt(300) for o in others)
    assert fold_resolution(per_row, 0) == pytest.approx(errors[1] / (1 - best.mean()), rel=1e-12)
    # From a later pass's first point on, and none before two finite points.
    top, other = sorted(per_row[3:], key=np.mean, reverse=True)
    assert fold_resolution(per_row, 3) == pytest.approx(
        float(np.std(top - other, ddof=1)) / math.sqrt(300) / (1 - top.mean()), rel=1e-12
    )
    assert fold_resolution(per_row, 4) == 0.0 == fold_resolution(per_row[:2], 0)


def test_search_ranking_brackets_reg_then_alpha_on_planted_counts(monkeypatch):
    rows = np.array(play_counts(users=300, items=200, draws=30_000, seed=5))
    user, item = np.unique(rows[:, 0], return_inverse=True)[1], np.unique(rows[:, 1], return_inverse=True)[1]
    weight = 1.0 + np.log1p(rows[:, 2])
    held = np.random.default_rng(1).random(len(rows)) < 0.15
    known_items = np.unique(item[~held])
    local_item = np.full(item.max() + 1, -1)
    local_item[known_items] = np.arange(len(known_items))
    known_users = np.unique(user[~held])
    local_user = np.full(user.max() + 1, -1)
    local_user[known_users] = np.arange(len(known_users))
    fit = (local_user[user[~held]], local_item[item[~held]], None, None, weight[~held])
    fold = {"user": local_user[user[held]], "item": local_item[item[held]]}
    cfg = StepConfig(side="user", rank=4, loss="bce", reg=0.01, init_scale=0.1, count_scaled=True, all_items=True,
                     learn_bias=False)  # fmt: skip
    plan = SearchPlan(start=REG_START, unit=1.0, low=1e-4, high=10.0, step=3.0, tol_log=math.log(2), first_iter=10,
                      point_iter=4, tol=1e-4)  # fmt: skip
    keys = (np.arange(len(known_users)) * 7919, np.arange(len(known_items)) * 104729)
    item_cfg = dataclasses.replace(cfg, side="item")
    found, _ = search_ranking(
        fit, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(reference=1.0, passes=("reg", "alpha"))
    )
    path = found["path"]
    reg_pass = path[: next(j for j, p in enumerate(path) if p["alpha"] != 1.0)]
    assert [p["reg"] for p in path[:3]] == list(REG_START)
    # Each pass is bracketed: a point on each side of its best, unless at the hard range's end.
    regs = sorted({p["reg"] for p in reg_pass})
    best_reg = max(reg_pass, key=lambda p: p["ndcg"])["reg"]
    assert found["at_limit"] or 0 < regs.index(best_reg) < len(regs) - 1
    alphas = sorted({p["alpha"] for p in path if p["reg"] == found["reg"]})
    assert set(ALPHA_START) <= set(alphas) and found["alpha"] in alphas
    assert 0 < found["ndcg"] < 1
    # The control: the same search on training counts that are poisoned moves the path.
    poisoned = (fit[0], fit[1], None, None, np.where(np.arange(len(fit[4])) % 5 == 0, 1.0 + fit[4] * 9, fit[4]))
    assert (
        search_ranking(poisoned, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(1.0, ("reg", "alpha")))[0]["path"]
        != path
    )
    # α only: λ stays where it is given.
    only, _ = search_ranking(
        fit, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(reference=1.0, passes=("alpha",), reg=0.05)
    )
    assert only["reg"] == 0.05 and {p["reg"] for p in only["path"]} == {0.05}
    # No counts (every weight 1): nothing to choose α on, so α stays the reference.
    flat = (fit[0], fit[1], None, None, None)
    assert search_ranking(flat, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(1.0, ("alpha",), 0.05)) == (
        {"reg": 0.05, "alpha": 1.0, "ndcg": None, "path": [], "widened": "", "at_limit": False},
        None,
    )
    assert len(known_users) <= rank_search.MAX_USERS  # every validation user counted here


def _planted(users: int, items: int, draws: int, rank: int):
    """Generated play counts as the search's arrays, a hashed fifth held out: (fit, fold,
    the user and item half-steps, the sides' hash keys)."""
    rows = np.array(play_counts(users=users, items=items, draws=draws, seed=5))
    user, item = np.unique(rows[:, 0], return_inverse=True)[1], np.unique(rows[:, 1], return_inverse=True)[1]
    held = np.random.default_rng(1).random(len(rows)) < 0.2
    fit = (user[~held], item[~held], None, None, 1.0 + np.log1p(rows[~held, 2]))
    cfg = StepConfig(side="user", rank=rank, loss="bce", reg=0.01, init_scale=0.1, count_scaled=True,
                     all_items=True, learn_bias=False)  # fmt: skip
    keys = (np.arange(user.max() + 1) * 7919, np.arange(item.max() + 1) * 104729)
    return fit, {"user": user[held], "item": item[held]}, cfg, dataclasses.replace(cfg, side="item"), keys


def test_the_alpha_pass_reuses_the_reg_choice_and_the_fit_starts_from_its_items(monkeypatch):
    fit, fold, cfg, item_cfg, keys = _planted(300, 200, 30_000, rank=4)
    plan = SearchPlan(start=REG_START, unit=1.0, low=1e-7, high=10.0, step=3.0, tol_log=math.log(2), first_iter=10,
                      point_iter=4, tol=1e-4)  # fmt: skip
    items_after: list[np.ndarray] = []  # every item half-step's factors, in order

    def spy(step_cfg, *args, **kwargs):
        out = solve_rows(step_cfg, *args, **kwargs)
        if step_cfg.side == "item":
            items_after.append(out[0])
        return out

    monkeypatch.setattr(rank_search, "solve_rows", spy)
    both = AlphaPlan(1.0, ("reg", "alpha"))
    found, (users, items) = search_ranking(fit, fold, *keys, cfg, item_cfg, plan, alpha=both)
    path = found["path"]
    first_alpha = next(j for j, p in enumerate(path) if p["alpha"] != 1.0)
    chosen_reg = [p for p in path[:first_alpha] if p["reg"] == found["reg"]][0]
    # The α pass's start grid holds α₀ = 1 at the chosen λ: that point is the λ pass's, not fitted again.
    again = [p for p in path[first_alpha:] if p["alpha"] == 1.0]
    assert len(again) == 1 and again[0] == {**chosen_reg, "iterations": 0, "reused": True}
    assert sum(p["iterations"] for p in path) == len(items_after)
    # The fit at the choice starts from the items its point ended with, and the users' hashed init.
    chosen = next(j for j, p in enumerate(path) if (p["reg"], p["alpha"]) == (found["reg"], found["alpha"]))
    ended = sum(p["iterations"] for p in path[: chosen + 1]) - 1
    np.testing.assert_array_equal(items, items_after[ended])
    np.testing.assert_array_equal(users, initial_params(keys[0], 4, scale=0.1, side="user"))


@pytest.mark.parametrize("tol", [1e-4, 1e-12])
def test_ndcg_is_measured_only_where_a_stop_is_decided_on_it(monkeypatch, tol):
    """The path stops where measuring NDCG at every iteration would stop it: replayed from
    every iteration's recorded factors and losses, each point ends at the first iteration
    from MIN_ITER on whose factors do not grow and whose loss converged or NDCG settled (or
    at its budget), with that iteration's NDCG; and fewer NDCGs are measured than iterations
    run. tol = 1e-12 leaves the stops to NDCG alone."""
    fit, fold, cfg, item_cfg, keys = _planted(300, 200, 30_000, rank=4)
    plan = SearchPlan(start=REG_START, unit=1.0, low=1e-7, high=10.0, step=3.0, tol_log=math.log(2), first_iter=12,
                      point_iter=6, tol=tol)  # fmt: skip
    steps: list[tuple] = []  # every iteration's (users, items, loss)
    measured: list[tuple] = []  # the arguments of every NDCG measured

    def step_spy(step_cfg, *args, **kwargs):
        out = solve_rows(step_cfg, *args, **kwargs)
        if step_cfg.side == "user":
            steps.append((out[0], None, out[2][1]))
        else:
            users, _, user_reg = steps[-1]
            steps[-1] = (users, out[0], out[2][0] + out[2][1] + user_reg)
        return out

    real_ndcg = rank_search.ndcg_rows

    def ndcg_spy(*args):
        measured.append(args)
        return real_ndcg(*args)

    monkeypatch.setattr(rank_search, "solve_rows", step_spy)
    monkeypatch.setattr(rank_search, "ndcg_rows", ndcg_spy)
    found, _ = search_ranking(fit, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(1.0, ("reg", "alpha")))
    _, _, fold_rows, seen, held, k = measured[0]

    def ndcg(users, items):
        return float(real_ndcg(users, items, fold_rows, seen, held, k).mean())

    def stops(before, now):  # (on the loss, on NDCG) at the iteration of now, after before's
        (u0, i0, loss0), (u1, i1, loss1) = before, now
        if growing(factor_scale(u0, i0, 4), factor_scale(u1, i1, 4)):
            return False, False
        settled = abs(ndcg(u1, i1) - ndcg(u0, i0)) <= search_task.SETTLED * ndcg(u0, i0)
        return abs(loss0 - loss1) <= tol * abs(loss0), settled

    first, ndcg_stops = 0, 0
    for j, point in enumerate(found["path"]):
        run = steps[first : first + point["iterations"]]
        first += point["iterations"]
        if not run:  # the α pass's reused point
            continue
        decided = [(t, stops(run[t - 2], run[t - 1])) for t in range(search_task.MIN_ITER, len(run) + 1)]
        stop = next(((t, why) for t, why in decided if any(why)), None)
        assert point["iterations"] == (stop[0] if stop else (plan.first_iter if j == 0 else plan.point_iter)), j
        assert point["ndcg"] == pytest.approx(ndcg(*run[-1][:2]), abs=1e-12)
        ndcg_stops += bool(stop and stop[1] == (False, True))
    assert first == len(steps) and len(measured) < len(steps)
    if tol < 1e-9:
        assert ndcg_stops >= 2  # stops on NDCG alone are exercised


def test_a_search_whose_every_point_diverges_leaves_the_fit_the_hashed_init(monkeypatch):
    fit, fold, cfg, item_cfg, keys = _planted(60, 40, 2_000, rank=3)
    plan = SearchPlan(start=REG_START, unit=1.0, low=1e-3, high=1.0, step=3.0, tol_log=math.log(2), first_iter=4,
                      point_iter=2, tol=1e-4)  # fmt: skip

    def diverging(step_cfg, *args, **kwargs):
        params, loss, (data, reg) = solve_rows(step_cfg, *args, **kwargs)
        return np.full_like(params, np.nan), loss, (np.nan, reg)

    monkeypatch.setattr(rank_search, "solve_rows", diverging)
    found, start = search_ranking(fit, fold, *keys, cfg, item_cfg, plan, alpha=AlphaPlan(1.0, ("reg",)))
    assert found["path"] and all(p["ndcg"] == -np.inf for p in found["path"])
    assert start is None  # the fit then starts from the hashed init, not from NaN items


def test_search_ranking_restarts_from_the_init_after_collapsed_factors():
    # λ = 10 and 3 shrink the factors onto zero, a stationary point at every λ where every score
    # is 0. Warm-started from there, λ = 1 used to sit beside it: its factors grew × 1000 an
    # iteration from 3e-11 while the ranking, and so NDCG, barely moved (0.003 after 2 iterations,
    # 0.58 from the hashed init), and on 1,000 × 500 users and items the search kept λ = 10.
    # Now a point after collapsed factors starts from the init: it is the same fit as a search
    # that starts there.
    rows = np.array(play_counts(users=300, items=200, draws=30_000, seed=5))
    user, item = np.unique(rows[:, 0], return_inverse=True)[1], np.unique(rows[:, 1], return_inverse=True)[1]
    weight = 1.0 + np.log1p(rows[:, 2])
    held = np.random.default_rng(1).random(len(rows)) < 0.2
    fit = (user[~held], item[~held], None, None, weight[~held])
    fold = {"user": user[held], "item": item[held]}
    cfg = StepConfig(side="user", rank=4, loss="bce", reg=0.01, init_scale=0.1, count_scaled=True, all_items=True,
                     learn_bias=False)  # fmt: skip
    keys = (np.arange(user.max() + 1) * 7919, np.arange(item.max() + 1) * 104729)

    def path(start: tuple[float, ...]) -> list[dict]:
        plan = SearchPlan(start=start, unit=1.0, low=1e-7, high=10.0, step=3.0, tol_log=math.log(2), first_iter=20,
                          point_iter=6, tol=1e-4)  # fmt: skip
        found, _ = search_ranking(fit, fold, *keys, cfg, dataclasses.replace(cfg, side="item"), plan,
                                  alpha=AlphaPlan(reference=1.0, passes=("reg",)))  # fmt: skip
        return found["path"]

    walked, cold = path((10.0, 3.0, 1.0)), path((1.0,))
    assert [p["reg"] for p in walked[:3]] == [10.0, 3.0, 1.0]
    assert max(p["ndcg"] for p in walked[:2]) < 0.01  # collapsed: scores all about 0
    assert walked[2].get("restarted") and walked[2]["ndcg"] == cold[0]["ndcg"] > 0.3
    assert walked[2]["iterations"] == cold[0]["iterations"]
