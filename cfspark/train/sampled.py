"""Fresh sampled negatives inside a half-step: a block's ratings plus this iteration's 0-labels.

Where the model samples unlabelled pairs as 0-labels (the exposure model), materialising K of
them per labelled pair before the fit makes setup and every half-step read K + 1 times as many
rows as there are labels, and fixes one sample for the whole fit. Instead, each half-step draws
its own: every row of the block (a user, in a user half-step) draws K·n_r items from the block's
own item list, the other side's entities its ratings name, whose vectors the block receives
anyway, so no message grows. Draws are data/negatives.py's fresh_negatives: a pure function of
(seed, iteration, the row's hash key, draw index), never a labelled item of the row, and new at
each iteration; a row's draws are distinct (without replacement). Items are drawn ∝ their label
count (popularity), its square root (sqrt) or uniformly; an item half-step draws users so that
both sides' 0-labels fall on a pair (u, i) at the same rate (draw_plan), and both half-steps fit
one objective in expectation. The counts are over all blocks (the InBlocks' col_labels and the
totals with_totals sets), so a blockwise fit draws at the rates of one task holding every label;
only the pool differs: a block draws from the entities its ratings name.

A 0-label carries the pair's item offset (on the user side the item's, found from any of its
ratings in the block; on the item side the row's own) and the weight negativeWeight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cfspark.data.negatives import fresh_negatives, sampling_weights

StepConfigLike = TypeVar("StepConfigLike")  # step.py's StepConfig, which imports this module


@dataclass(frozen=True)
class Draws:
    """How a half-step samples its 0-labels; iteration is set by the loop before each half-step."""

    per_label: int  # K: draws per labelled pair of the row
    weight: float  # each 0-label's weight
    sampling: str  # popularity, sqrt or uniform (data/negatives.py's sampling_weights)
    seed: int
    iteration: int = 0
    # Over all blocks (with_totals): the number of labels N and Σ_i g(n_i) over every item; 0: the
    # block's own, which are the totals only where one block holds every label (the one-task fit).
    labels_total: float = 0.0
    share_total: float = 0.0
    # Without replacement (the default): K·n_r distinct items, ∝ the weights at each step
    # (data/negatives.py's smallest_keys); it ranked 3–5 % higher than drawing K·n_r with
    # replacement and dropping repeats, which leaves a heavy row far fewer (docs/binary-labels.md).
    replace: bool = False
    # The loop's first `coarse` iterations draw COARSE_SHARE times fewer 0-labels, each weighing as
    # many times more (at_iteration): a row's 0-labels still weigh K·w per labelled pair in all,
    # except a row with fewer unlabelled items than it would draw, which takes them all at the
    # heavier weight (at w in the later iterations). Those iterations only start the fit.
    coarse: int = 0


# From the hashed init the first iterations move every factor far, and a quarter of the draws
# points them the same way: on MovieLens latest-small ≥ 4 (four splits) and a synthetic binary
# set, two such iterations and then K gave the same NDCG@10 as K throughout, in as many
# iterations, two of them cheaper (docs/benchmarks.md, "Coarse first draws").
COARSE_SHARE = 4


def coarse_iterations(*cfgs: object) -> int:
    """How many first iterations of a loop over these StepConfigs draw coarsely: the loop's
    stop rule compares only the iterations after them (their losses are of another sample)."""
    return max((cfg.draws.coarse for cfg in cfgs if getattr(cfg, "draws", None) is not None), default=0)


def draw_plan(draws: Draws, labels: np.ndarray, other_labels: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(draws per row, the other side's relative chance of being drawn) for one block.

    labels are the block's rows' label counts, other_labels those of the other side's entities
    in the block (0: not named here, never drawn). Both sides draw the pair (u, i) λ_ui =
    K·n_u·g(n_i)/Σ_j g(n_j) times in expectation, g the sampling's weight of an item's label
    count, so both half-steps fit one objective: a user draws K·n_u items ∝ g(n_i); an item
    draws K·N·g(n_i)/Σ g items' worth of users (N the block's labels), ∝ n_u. Drawing users
    ∝ g(n_u) and K·n_i of them, as a mirror image of the user side, gives every item the same
    share of 0-labels whatever the sampling, which cancels item popularity out of P(exposed)
    (NDCG@10 0.231 against 0.255 on ml-latest-small ≥ 4, scripts/exposure_ranking.py).
    With replacement (repeats dropped) a pair is then a 0-label with chance about 1 − exp(−λ_ui)
    in either half-step. Without (the default), a row takes min(its count, its unlabelled
    entities) distinct ones, and the two sides saturate differently: on dense labels the item
    half-step puts up to a quarter more 0-labels on the most labelled items than the user
    half-step (tested), though as many in all and per user.
    """
    if side == "user":
        pool = sampling_weights(other_labels, draws.sampling)
        pool[other_labels == 0] = 0.0  # only the entities the block's ratings name
        return draws.per_label * labels, pool
    share = sampling_weights(labels, draws.sampling)
    share[labels == 0] = 0.0
    total = draws.share_total or share.sum()
    n = draws.labels_total or labels.sum()
    expected = draws.per_label * n * share / total if total > 0 else np.zeros(len(labels))
    return np.rint(expected).astype(np.int64), other_labels.astype(np.float64)


def at_reg(cfg: StepConfigLike, reg: float, coarse: int | None = None) -> StepConfigLike:
    """cfg at λ = reg, its draws (if any) drawing coarsely in their first coarse iterations
    (unchanged for None): a fit warm-started near its optimum takes none (the exposure λ search's
    points and the fit from its factors)."""
    draws = getattr(cfg, "draws", None)
    if draws is not None and coarse is not None:
        draws = dataclasses.replace(draws, coarse=coarse)
    return dataclasses.replace(cfg, reg=reg, draws=draws)


def with_totals(cfg: StepConfigLike, totals: dict[str, float] | None) -> StepConfigLike:
    """cfg whose draws, if any, use the label totals over all blocks (blocks/build.py's
    label_totals: labels, sqrt_labels, entities), so a block draws at one task's rates."""
    draws = getattr(cfg, "draws", None)
    if draws is None or totals is None:
        return cfg
    share = {"popularity": totals["labels"], "sqrt": totals["sqrt_labels"], "uniform": totals["entities"]}
    exact = dataclasses.replace(draws, labels_total=totals["labels"], share_total=share[draws.sampling])
    return dataclasses.replace(cfg, draws=exact)


def with_negatives(
    draws: Draws,
    row_ptr: np.ndarray,
    cols: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None,
    weight: np.ndarray | None,
    keys: np.ndarray,
    n_other: int,
    side: str,
    col_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(row_ptr, cols, y, offset, weight) of the block's ratings and this iteration's 0-labels,
    each row's ratings first, then its draws. cols index the n_other rows of the other side
    the block holds; keys are the block's own rows' hash keys; col_labels, those rows' label
    counts over all blocks (else counted in this block, exact only where it holds every label)."""
    row_ptr, cols = np.asarray(row_ptr, np.int64), np.asarray(cols, np.int64)
    n = len(row_ptr) - 1
    labels = np.diff(row_ptr)
    other_labels = np.bincount(cols, minlength=n_other) if col_labels is None else np.asarray(col_labels)
    counts, pool = draw_plan(draws, labels, other_labels, side)
    neg_ptr, neg_cols = fresh_negatives(
        row_ptr, cols, keys, counts, pool, seed=draws.seed, iteration=draws.iteration, replace=draws.replace
    )
    drawn = np.diff(neg_ptr)
    # Each row's ratings, then its draws: rating j of row r goes to j + (draws of the rows before
    # r), draw k of row r to k + (ratings of the rows up to r); a scatter, not a sort of the rows.
    to_rating = np.arange(len(cols)) + np.repeat(neg_ptr[:-1], labels)
    to_draw = np.arange(len(neg_cols)) + np.repeat(row_ptr[1:], drawn)

    def merged(rated: np.ndarray, draws: np.ndarray | float, dtype: type) -> np.ndarray:
        out = np.empty(len(cols) + len(neg_cols), dtype)
        out[to_rating], out[to_draw] = rated, draws
        return out

    new_offset = None
    if offset is not None:
        offset = np.asarray(offset, np.float64)
        if side == "user":  # an item's offset, from any of its ratings here
            per_col = np.zeros(n_other)
            per_col[cols] = offset
            drawn_offset = per_col[neg_cols]
        else:  # the row's own item offset
            drawn_offset = np.repeat(offset[row_ptr[:-1][labels > 0]] if n else offset[:0], drawn[labels > 0])
        new_offset = merged(offset, drawn_offset, np.float64)
    return (
        row_ptr + neg_ptr,
        merged(cols, neg_cols, np.int32),
        merged(np.asarray(y, np.float64), 0.0, np.float64),
        new_offset,
        merged(np.ones(len(cols)) if weight is None else np.asarray(weight, np.float64), draws.weight, np.float64),
    )


def at_iteration(cfg: StepConfigLike, iteration: int) -> StepConfigLike:
    """cfg for one iteration's half-step (1 the first): its draws, if it has any, for that
    iteration; within the first draws.coarse, K // COARSE_SHARE draws per labelled pair (at
    least one) at the weight that keeps their total K·w."""
    draws = getattr(cfg, "draws", None)
    if draws is None:
        return cfg
    drawn = dataclasses.replace(draws, iteration=iteration)
    if iteration <= draws.coarse:
        fewer = max(1, draws.per_label // COARSE_SHARE)
        drawn = dataclasses.replace(drawn, per_label=fewer, weight=draws.weight * draws.per_label / fewer)
    return dataclasses.replace(cfg, draws=drawn)


class DrawsAhead:
    """A loop's half-steps' ratings with their 0-labels, each drawn while the half-step before
    it solves, in one second thread.

    A half-step's draws are a function of its ratings, its rows' keys and the iteration, never
    of the factors, so a loop that runs its half-steps one after the other in one process (the
    one-task fit) need not wait for them: numpy's sorts, gathers and arithmetic release the
    GIL, and the draws of the next half-step overlap the Newton solve of this one. The arrays
    are the ones drawn in turn, to the bit; the cost is one more half-step's drawn ratings in
    memory. draws[h](iteration) gives half-step h's (with_negatives' tuple), the loop taking
    them in order, h = 0, 1, ... within an iteration, up to last_iteration."""

    def __init__(self, draws: Sequence[Callable[[int], tuple]], last_iteration: int) -> None:
        self._draws, self._last = list(draws), last_iteration
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cfspark-draws")
        self._pending: tuple[tuple[int, int], Future] | None = None
        self._submit((1, 0))

    def _submit(self, at: tuple[int, int]) -> None:
        iteration, half = at
        self._pending = (at, self._pool.submit(self._draws[half], iteration)) if iteration <= self._last else None

    def take(self, iteration: int, half: int) -> tuple:
        """Half-step half's ratings at iteration, and the next half-step's drawing begun."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (iteration, half):
            drawn = pending[1].result()
        else:  # out of order: the pending draw is not this one
            if pending is not None:
                pending[1].cancel()
            drawn = self._draws[half](iteration)
        self._submit((iteration, half + 1) if half + 1 < len(self._draws) else (iteration + 1, 0))
        return drawn

    def close(self) -> None:
        """Stop drawing ahead: a draw not begun is dropped, one under way ends unread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pending = None


def draws_ahead(
    sides: Sequence[tuple[StepConfigLike, tuple, np.ndarray, int]], last_iteration: int
) -> DrawsAhead | None:
    """A DrawsAhead over a loop's half-steps, each (its StepConfig, its ratings as CSR
    (row_ptr, cols, y, offset, weight), its rows' keys, the other side's row count), in loop
    order; None where none of them draws."""
    if all(getattr(cfg, "draws", None) is None for cfg, *_ in sides):
        return None

    def half(cfg: StepConfigLike, csr: tuple, keys: np.ndarray, n_other: int) -> Callable[[int], tuple]:
        def drawn(iteration: int) -> tuple | None:
            draws = at_iteration(cfg, iteration).draws
            return None if draws is None else with_negatives(draws, *csr, keys, n_other, cfg.side)

        return drawn

    return DrawsAhead([half(*side) for side in sides], last_iteration)
