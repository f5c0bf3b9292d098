"""The walk rules of train/saddle.py that choose where a point of the λ search starts."""

import math

import numpy as np

from cfspark.train.saddle import keep_near_best, nearest


def test_a_point_starts_from_the_nearest_fitted_lambda_and_a_tie_goes_to_the_stronger():
    fitted = {math.log(r): (0.0,) for r in (0.03, 0.1, 0.3)}
    assert nearest(fitted, math.log(0.05)) == math.log(0.03)  # 0.51 from 0.03 in log λ, 0.69 from 0.1
    assert nearest(fitted, math.log(0.2)) == math.log(0.3)  # 0.41 from 0.3, 0.69 from 0.1
    assert nearest(fitted, math.log(5.0)) == math.log(0.3)  # past an end: that end
    assert nearest({-2.0: (0.0,), -1.0: (0.0,)}, -1.5) == -1.0  # halfway: the stronger λ


def test_only_the_best_point_and_its_nearest_neighbours_keep_their_factors():
    scores = {0.01: 0.90, 0.03: 0.85, 0.1: 0.80, 0.3: 0.82, 0.9: 0.95}
    fitted = {math.log(r): (s, np.full(2, r)) for r, s in scores.items()}
    keep_near_best(fitted)
    assert sorted(round(math.exp(k), 6) for k in fitted) == [0.03, 0.1, 0.3]
    assert fitted[math.log(0.1)][1].tolist() == [0.1, 0.1]  # each keeps its own params
    keep_near_best(fitted, keep=1)
    assert list(fitted) == [math.log(0.1)]
