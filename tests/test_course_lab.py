"""The course lab's own cost checks, J = 13.67 (λ = 0) and 28.09 (λ = 1.5), on its published X, W, b."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cfspark.kernels.block import BlockProblem

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "course-lab")

pytestmark = pytest.mark.skipif(not os.path.isdir(LAB), reason="course-lab data is not beside the repo")


def _load(name):
    return np.loadtxt(os.path.join(LAB, f"small_movies_{name}.csv"), delimiter=",", ndmin=2)


def _cost(Y, R, X, W, b, reg):
    """J through cfspark's kernels: the user-side block loss plus the item-side L2 term."""
    k = X.shape[1]
    users, items = np.nonzero(R.T)  # user-major order, as a user block stores its ratings
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=W.shape[0]))])
    mask = np.r_[np.ones(k), 0.0]
    user_block = BlockProblem.build(
        row_ptr=row_ptr,
        cols=items,
        other=np.hstack([X, np.ones((len(X), 1))]),
        y=Y[items, users],
        loss="mse",
        reg=reg,
        reg_mask=mask,
    )
    params = np.hstack([W, b.reshape(-1, 1)])
    return user_block.loss_and_grad(params)[0] + user_block.reg_loss(np.hstack([X, np.ones((len(X), 1))]))


@pytest.mark.parametrize(("reg", "expected"), [(0.0, 13.67), (1.5, 28.09)])
def test_lab_cost_is_reproduced(reg, expected):
    Y, R, X, W, b = (_load(n) for n in "YRXWb")
    assert Y.shape == (4778, 443) and int(R.sum()) == 39253
    nm, nu, nf = 5, 4, 3
    J = _cost(Y[:nm, :nu], R[:nm, :nu], X[:nm, :nf], W[:nu, :nf], b[0, :nu], reg)
    assert round(J, 2) == expected


def test_lab_first_movie_mean():
    Y, R = _load("Y"), _load("R")
    assert Y[0][R[0] == 1].mean() == pytest.approx(3.4)
