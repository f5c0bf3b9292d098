"""The estimator's duplicate check, folded into the fit: each path refuses a repeated
(user, item) pair where it sorts the pairs anyway (the one-task arrays, the packed user
blocks), with the message of the separate check, naming the pair in the input's own ids;
and on data without repeats every path fits the model the separate check let through."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from tests_support import jobs_of

from cfspark import CollaborativeFilter
from cfspark.core.errors import InputError, RepeatedPairsError
from cfspark.kernels.repeats import repeats, sorted_repeats
from cfspark.ml import estimator

SCHEMA = "uid string, iid string, stars double"
COLUMNS = {"userCol": "uid", "itemCol": "iid", "ratingCol": "stars"}
# The separate check on data without repeats: the shuffle's map stage and the look for a repeat.
SEPARATE_CHECK_JOBS = 2
SMALL = {**COLUMNS, "rank": 2, "maxIter": 3, "regParam": 0.1}
BLOCKS = {"numUserBlocks": 2, "numItemBlocks": 2}
# The planted repeat: the pair u3/i5 twice, with another rating.
REFUSED = (
    r"^1 \(user, item\) pair\(s\) appear more than once, e\.g\. \{uid: 'u3', iid: 'i5'\} appears 2 times "
    r'\(set the duplicates Param to combine them: "mean", "max", "last" or "sum"\)$'
)

PATHS = {  # (params, labels): every way a fit goes
    "one task, mse": ({}, "stars"),
    "blockwise, mse": (BLOCKS, "stars"),
    "automatic λ in one task": ({"regParam": "auto"}, "stars"),
    "automatic λ beside the blocks": ({"regParam": "auto", **BLOCKS}, "stars"),
    "bce, one task": ({"loss": "bce", "exposure": False}, "labels"),
    "bce, automatic λ in one task": ({"loss": "bce", "exposure": False, "regParam": "auto"}, "labels"),
    "bce with exposure, one job": ({"loss": "bce", "exposureNegatives": 2}, "labels"),
    "bce with exposure, blockwise": ({"loss": "bce", "exposureNegatives": 2, **BLOCKS}, "labels"),
    "positive-only, all items": ({"loss": "bce"}, "positives"),
    "positive-only, all items, blockwise": ({"loss": "bce", **BLOCKS}, "positives"),
    "positive-only, sampled": ({"loss": "bce", "implicit": "sampled", "exposureNegatives": 2}, "positives"),
}


def _rows(kind: str) -> list[tuple[str, str, float]]:
    """40 users × 25 items, about half of the pairs, each pair once; ids are strings."""
    rng = np.random.default_rng(5)
    rows = []
    for u in range(40):
        for i in range(25):
            if rng.random() < 0.5 or (u, i) == (3, 5):
                value = {"stars": float(rng.integers(1, 6)), "labels": float(rng.random() < 0.6)}.get(kind, 1.0)
                rows.append((f"u{u}", f"i{i}", value))
    return rows


@pytest.fixture(scope="module")
def data(spark):
    def frames(kind: str):
        clean = _rows(kind)
        again = [r for r in clean if r[:2] == ("u3", "i5")][0]
        repeated = [*clean, (again[0], again[1], 1.0 - again[2] if kind == "labels" else again[2])]
        return spark.createDataFrame(clean, SCHEMA).cache(), spark.createDataFrame(repeated, SCHEMA).cache()

    return {kind: frames(kind) for kind in ("stars", "labels", "positives")}


def _factors(model) -> dict:
    """Every factor table of a model (its exposure part's too), as {id: (features, bias)}."""
    tables = {"user": model.userFactors, "item": model.itemFactors}
    found = {side: {r[0]: (tuple(r.features), r.bias) for r in t.collect()} for side, t in tables.items()}
    if model.exposure_model is not None:
        found.update({f"exposure {k}": v for k, v in _factors(model.exposure_model).items()})
    return found


def _with_separate_check(monkeypatch) -> None:
    """The estimator as before the fold: validate_given's shuffle refuses repeats itself."""
    given = estimator.validate_given
    monkeypatch.setattr(estimator, "validate_given", lambda *a, **k: given(*a, **{**k, "fit_refuses": False}))


@pytest.mark.parametrize("path", list(PATHS))
def test_each_path_refuses_a_repeated_pair_in_the_inputs_ids(spark, data, path):
    params, kind = PATHS[path]
    with pytest.raises(InputError, match=REFUSED) as refused:
        CollaborativeFilter(**{**SMALL, **params}).fit(data[kind][1])
    assert not isinstance(refused.value, RepeatedPairsError)  # worded in the input's columns


def _blockwise_slow(paths) -> list:
    """paths, the blockwise ones marked slow: their fits cost 10–20 s each here."""
    return [pytest.param(p, marks=pytest.mark.slow) if "block" in p else p for p in paths]


# The paths whose jobs test_the_fold_saves_the_separate_checks_jobs counts.
COUNTED = ["one task, mse", "blockwise, mse"]


@pytest.fixture(scope="module")
def clean_fits(spark, data):
    """fits(path): the path's fits on data without repeats, made once for the module: the folded
    fit's factors and the factors of the fit with the separate check. For the COUNTED paths a
    second folded fit runs between them, and the jobs of it and of the separate check's fit are
    counted: the first fit of the data fills its cache, a job the others do not run."""
    done: dict[str, dict] = {}

    def fits(path: str) -> dict:
        if path not in done:
            params, kind = PATHS[path]
            cf = CollaborativeFilter(**{**SMALL, **params})
            clean = data[kind][0]
            found = {"folded": _factors(cf.fit(clean))}
            if path in COUNTED:
                _, found["folded jobs"] = jobs_of(spark, lambda: cf.fit(clean))
            with pytest.MonkeyPatch.context() as patch:
                _with_separate_check(patch)
                if path in COUNTED:
                    model, found["separate jobs"] = jobs_of(spark, lambda: cf.fit(clean))
                else:
                    model = cf.fit(clean)
            found["separate"] = _factors(model)
            done[path] = found
        return done[path]

    return fits


@pytest.mark.parametrize("path", _blockwise_slow(PATHS))
def test_each_path_fits_the_same_model_as_with_the_separate_check(clean_fits, path):
    fits = clean_fits(path)
    assert fits["folded"] == fits["separate"]


@pytest.mark.slow
def test_a_warm_start_refuses_a_repeated_pair(spark, data):
    clean, repeated = data["stars"]
    earlier = CollaborativeFilter(**SMALL).fit(clean)
    with pytest.raises(InputError, match=REFUSED):
        CollaborativeFilter(**SMALL, initialModel=earlier).fit(repeated)
    assert _factors(CollaborativeFilter(**SMALL, initialModel=earlier).fit(clean))  # and fits clean data


def test_cross_validation_refuses_a_repeated_pair(spark, data):
    # Of three folds' training parts, at least one holds both rows of the pair.
    cf = CollaborativeFilter(**SMALL)
    grid = ParamGridBuilder().addGrid(cf.regParam, [0.1]).build()
    evaluator = RegressionEvaluator(labelCol="stars", metricName="rmse")
    cv = CrossValidator(estimator=cf, estimatorParamMaps=grid, evaluator=evaluator, numFolds=3, seed=2)
    with pytest.raises(InputError, match=REFUSED):
        cv.fit(data["stars"][1])


def test_implicit_prefs_still_refuse_a_repeat_the_fit_never_sees(spark):
    # A count of 0 is dropped before the fit: its pair is still refused, by the separate check.
    rows = [("u1", "i1", 3.0), ("u1", "i1", 0.0), ("u2", "i1", 1.0), ("u2", "i2", 2.0)]
    with pytest.raises(InputError, match=r"\{uid: 'u1', iid: 'i1'\} appears 2 times"):
        CollaborativeFilter(**SMALL, implicitPrefs=True).fit(spark.createDataFrame(rows, SCHEMA))


def test_other_rules_still_combine_the_repeats(spark, data):
    combined = CollaborativeFilter(**SMALL, duplicates="mean").fit(data["stars"][1])
    assert combined.summary["history"]


def test_repeats_count_pairs_and_name_the_most_repeated():
    own = np.array([4, 1, 1, 2, 4, 1, 0, 4])
    other = np.array([7, 3, 3, 5, 7, 3, 9, 2])
    assert repeats(own, other, 10) == (2, 1, 3, 3)  # (1, 3) three times, (4, 7) twice
    assert repeats(np.arange(5), np.zeros(5, int), 1) is None
    assert sorted_repeats(np.array([0, 0, 1, 1]), np.array([2, 2, 2, 2])) == (2, 0, 2, 2)


@pytest.mark.parametrize("path", _blockwise_slow(COUNTED))
def test_the_fold_saves_the_separate_checks_jobs(clean_fits, path):
    # The separate check's jobs (the shuffle of every pair and the look for a repeat in it)
    # are gone; the fit's own jobs are the same ones (the pack job collects a few more cells).
    fits = clean_fits(path)
    folded, separate = fits["folded jobs"], fits["separate jobs"]
    print(path, "jobs of est.fit:", folded, "folded,", separate, "with the separate check")
    assert separate - folded == SEPARATE_CHECK_JOBS
