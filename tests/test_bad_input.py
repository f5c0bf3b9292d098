"""Bad input and bad config: one clear line, exit code 2, and no output left behind.

The job's main() runs in-process on the shared session (it calls getOrCreate);
test_end_to_end.py checks the same through a real spark-submit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time

import pytest
from tests_support import REPO

spec = importlib.util.spec_from_file_location("train_job", os.path.join(REPO, "jobs", "train.py"))
train_job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_job)

GOOD = "userId,movieId,rating\nu1,m1,4\nu1,m2,3\nu2,m1,5\nu2,m3,1\n"

CASES = {
    "missing_column": ("userId,film,rating\nu1,m1,4\n", "no column 'movieId'"),
    "null_user": ("userId,movieId,rating\nu1,m1,4\n,m2,3\n", "column 'userId' has 1 null id(s) out of 2 rows"),
    "null_item": ("userId,movieId,rating\nu1,m1,4\nu2,,3\n", "column 'movieId' has 1 null id(s)"),
    "null_rating": ("userId,movieId,rating\nu1,m1,4\nu2,m2,\n", "column 'rating' has 1 null rating(s)"),
    "not_number": (
        "userId,movieId,rating\nu1,m1,4\nu2,m2,great\nu3,m3,bad\n",
        "column 'rating' has 2 value(s) that are not numbers out of 3 rows, e.g. {'userId': 'u2'",
    ),
    "nan": ("userId,movieId,rating\nu1,m1,4\nu2,m2,NaN\n", "column 'rating' has 1 NaN or infinite rating(s)"),
    "inf": ("userId,movieId,rating\nu1,m1,4\nu2,m2,Infinity\n", "column 'rating' has 1 NaN or infinite rating(s)"),
    "overflow": (
        "userId,movieId,rating\nu1,m1,1e308\nu2,m1,1e308\nu3,m2,4\n",
        "column 'rating' has 2 rating(s) above 1e+100 in magnitude out of 3 rows, e.g. {'userId': 'u1'",
    ),
    "empty": ("userId,movieId,rating\n", "the input has no ratings (0 rows)"),
    "duplicates": (
        "userId,movieId,rating\nu1,m1,4\nu1,m1,5\nu2,m1,3\n",
        "1 (user, item) pair(s) appear more than once, e.g. {userId: 'u1', movieId: 'm1'} appears 2 times",
    ),
}

CONFIG_CASES = {
    "rank": (["--set", "model.rank=0"], "model.rank must be >= 1, got 0"),
    "reg": (["--set", "model.reg=-0.5"], "model.reg must be >= 0.0, got -0.5"),
    "unknown_key": (["--set", "model.rnak=5"], "unknown config key model.rnak (from --set); did you mean model.rank?"),
    "reg_nan": (["--set", "model.reg=nan"], "model.reg must be finite, got nan"),
    "grid_inf": (["--set", "compare.als_reg_grid=[0.1, inf]"], "compare.als_reg_grid must be finite, got [0.1, inf]"),
    "run_date": (["--set", "output.run_date=2026-02-30"], "output.run_date must be a date YYYY-MM-DD"),
    "unknown_loss": (["--set", "model.loss=hinge"], "model.loss = 'hinge' is not one of mse, bce"),
    "wrong_type": (["--set", "model.rank=ten"], "config key model.rank must be a int, got 'ten'"),
}


def _run(capsys, tmp_path, *args):
    out = tmp_path / "out"
    code = train_job.main(
        ["--set", f"output.path={out}", "--set", "spark.shuffle_partitions=4", "--set", "model.max_iter=2", *args]
    )
    return code, capsys.readouterr().err, out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_one_clear_line(spark, capsys, tmp_path, case):
    text, message = CASES[case]
    data = tmp_path / "ratings.csv"
    data.write_text(text)
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={data}")
    assert code == 3
    assert err.startswith("cfspark: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["ratings.csv"]
    assert data.read_text() == text  # the input is never touched


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_refused(spark, capsys, tmp_path, case):
    args, message = CONFIG_CASES[case]
    code, err, out = _run(capsys, tmp_path, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_help_lists_every_key_with_its_default(capsys):
    from cfspark.config import load_defaults

    with pytest.raises(SystemExit) as stop:
        train_job.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "  model.rank = 10\n" in text and "  input.binarize_threshold = nan\n" in text
    assert all(f"  {s}.{k} = " in text for s, values in load_defaults().items() for k in values)


def test_missing_path_is_refused(spark, capsys, tmp_path):
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={tmp_path / 'nope.csv'}")
    assert code == 3 and "does not exist" in err and str(tmp_path / "nope.csv") in err
    assert not out.exists()


def test_existing_output_is_never_overwritten(spark, capsys, tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text(GOOD)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={data}")
    assert code == 2 and "already exists" in err
    assert (out / "keep.txt").read_text() == "precious"


def test_duplicates_can_be_averaged(spark, capsys, tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text(GOOD + "u1,m1,2\n")
    code, _, out = _run(
        capsys,
        tmp_path,
        "--set",
        f"input.path={data}",
        "--set",
        "input.duplicates=mean",
        "--set",
        "split.test_fraction=0.0",
        "--set",
        "checkpoint.interval=0",
    )
    assert code == 0
    means = {r.movieId: r.item_mean for r in spark.read.parquet(str(out / "model" / "item_means")).collect()}
    assert means == {"m1": (3.0 + 5.0) / 2, "m2": 3.0, "m3": 1.0}
    # Strict JSON: input.binarize_threshold = nan (off) is written as null, not a bare NaN.
    meta = strict_json(out / "model" / "metadata.json")
    assert meta["config"]["input"]["binarize_threshold"] is None
    assert strict_json(out / "metrics.json")["train"]["count"] == 4


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_json_files_are_strict(tmp_path):
    from cfspark.fs import write_json

    write_json(str(tmp_path / "m.json"), {"auc": float("nan"), "grid": [1.0, float("inf")], "n": {"x": -float("inf")}})
    assert strict_json(tmp_path / "m.json") == {"auc": None, "grid": [1.0, None], "n": {"x": None}}


BCE_CASES = {
    "not_a_label": (
        "userId,movieId,rating\nu1,m1,1\nu2,m2,2\nu3,m3,2\n",
        [],
        "column 'rating' has 2 label(s) other than 0/1 or true/false out of 3 rows, e.g. value '2' in",
    ),
    "binarize_text": (
        "userId,movieId,rating\nu1,m1,4\nu2,m2,good\n",
        ["--set", "input.binarize_threshold=4"],
        "input.binarize_threshold needs numbers: column 'rating' has 1 value(s) that are not numbers",
    ),
    "all_one_label": (
        "userId,movieId,rating\nu1,m1,1\nu2,m2,1\n",
        ["--set", "split.test_fraction=0.0"],
        "all 2 training labels are 1; bce needs both 0 and 1 labels",
    ),
}


@pytest.mark.parametrize("case", sorted(BCE_CASES))
def test_bad_labels_are_refused(spark, capsys, tmp_path, case):
    text, extra, message = BCE_CASES[case]
    data = tmp_path / "labels.csv"
    data.write_text(text)
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={data}", "--set", "model.loss=bce", *extra)
    assert code == 3 and message in err, err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["labels.csv"]


def test_a_diverging_fit_stops_with_the_training_failure_code(spark, capsys, tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text(GOOD)
    code, err, out = _run(
        capsys, tmp_path, "--set", f"input.path={data}", "--set", "model.optimizer=gd",
        "--set", "model.learning_rate=1e100", "--set", "split.test_fraction=0.0",
    )  # fmt: skip
    assert code == 4 and "cfspark: error: the training loss is " in err and "at iteration " in err, err
    assert sorted(os.listdir(tmp_path)) == ["ratings.csv"]  # no output, no checkpoints


def test_a_failed_write_has_its_own_code_and_keeps_the_old_output(spark, capsys, tmp_path, monkeypatch):
    from cfspark.model import CFModel

    data = tmp_path / "ratings.csv"
    data.write_text(GOOD)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous result")

    def fail(self, path, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(CFModel, "save", fail)
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={data}", "--set", "output.overwrite=true",
                          "--set", "checkpoint.interval=0")  # fmt: skip
    assert code == 5 and "cfspark: error: writing the results failed: OSError: disk full" in err, err
    assert (out / "keep.txt").read_text() == "previous result"
    assert sorted(os.listdir(tmp_path)) == ["out", "ratings.csv"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_give_the_interrupted_codes(capsys, signum, code):
    from cfspark.cli import exit_code

    def body() -> int:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises well before this ends
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert exit_code(body) == code
    assert "cfspark: error: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the job's handler is removed again


def test_each_error_class_has_its_own_exit_code():
    from cfspark import errors
    from cfspark.cli import code_for

    classes = [errors.ConfigError, errors.InputError, errors.TrainingError, errors.OutputError, errors.BusyError]
    codes = [code_for(cls("x")) for cls in classes]
    assert codes == [2, 3, 4, 5, 6]
