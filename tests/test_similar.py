"""Similar items and users: cosine on the factors through the blockwise top-N, against a
brute-force numpy ranking, with exact ties, a zero vector and the query itself left out."""

from __future__ import annotations

import numpy as np
import pytest

from cfspark import CFModel

K = 4


def _vectors() -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(14, 3))
    x[12] = 2.0 * x[3]  # the same direction as item 3: an exact tie with it for every query
    x[13] = x[5]  # a copy of item 5: cosine 1 with it
    x[9] = 0.0  # a zero vector, similar to nothing (cosine 0 with everything)
    return x


def _brute_force(x: np.ndarray, k: int) -> dict[int, list[tuple[int, float]]]:
    norms = np.sqrt((x * x).sum(axis=1))
    unit = x / np.maximum(norms, 1e-300)[:, None]
    cosine = unit @ unit.T
    best = {}
    for q in range(len(x)):
        ranked = sorted((-cosine[q, c], c) for c in range(len(x)) if c != q)[:k]
        best[q] = [(c, -s) for s, c in ranked]
    return best


@pytest.fixture(scope="module")
def model(spark):
    x = _vectors()
    rows = [[float(v) for v in x[i]] for i in range(len(x))]
    items = spark.createDataFrame(
        [(10 * i, v, 0.5) for i, v in enumerate(rows)], "item long, features array<double>, bias double"
    )
    users = spark.createDataFrame(
        [(f"u{i}", v, -1.0) for i, v in enumerate(rows)], "user string, features array<double>, bias double"
    )
    cf = CFModel(users, items, rank=3)
    return cf.setItemCol("movie").setUserCol("who")


def _ranked(df, key: str) -> dict:
    got = {}
    for r in sorted(df.collect(), key=lambda r: (r[key], r["rank"])):
        got.setdefault(r[key], []).append((r["similar"], r["score"]))
    return got


def test_all_similar_items_are_the_brute_force_cosine_ranking(model):
    expected = _brute_force(_vectors(), K)
    df = model.allSimilarItems(K)
    assert df.columns == ["movie", "similar", "rank", "score"]
    got = _ranked(df, "movie")
    assert sorted(got) == [10 * i for i in range(14)]
    for q, best in expected.items():
        assert [c for c, _ in got[10 * q]] == [10 * c for c, _ in best], q
        np.testing.assert_allclose([s for _, s in got[10 * q]], [s for _, s in best], rtol=1e-9, atol=1e-12)
    assert got[50][0] == (130, pytest.approx(1.0)) and got[130][0] == (50, pytest.approx(1.0))  # never itself
    assert all(s == 0.0 for _, s in got[90])  # the zero vector: ties at 0, the lowest ids first
    assert [c for c, _ in got[90]] == [0, 10, 20, 30]


def test_similar_users_of_a_subset_equal_the_all_pairs_rows(spark, model):
    subset = spark.createDataFrame([("u3",), ("u3",), ("u12",), ("nobody",)], "who string")
    got = _ranked(model.similarUsers(subset, K), "who")
    everyone = _ranked(model.allSimilarUsers(K), "who")
    assert sorted(got) == ["u12", "u3"] and got == {u: everyone[u] for u in ("u12", "u3")}
    expected = _brute_force(_vectors(), K)
    assert [c for c, _ in got["u12"]] == [f"u{c}" for c, _ in expected[12]]
    assert got["u12"][0][0] == "u3"  # the same direction, cosine 1
