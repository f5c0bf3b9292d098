"""The bad-input matrix: every way docs/operations.md says a run is refused, each with its one
clear line on stderr, its exit code, no output and nothing of the user's touched.

The job's main() runs in-process on the shared session (it calls getOrCreate);
test_end_to_end.py checks the same through a real spark-submit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import tempfile
import time
from unittest import mock

import pytest
from tests_support import REPO

from cfspark.core.errors import InputError

spec = importlib.util.spec_from_file_location("train_job", os.path.join(REPO, "jobs", "train.py"))
train_job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_job)

GOOD = "userId,movieId,rating\nu1,m1,4\nu1,m2,3\nu2,m1,5\nu2,m3,1\n"
CONFIG, INPUT, OUTPUT, BUSY = 2, 3, 5, 6  # exit codes (docs/operations.md, Exit codes)
SIGINT, SIGTERM = 130, 143


def ratings(text: str):
    """A setup that writes ratings.csv, the default input.path."""
    return args(text=text)


def args(*extra: str, text: str = GOOD):
    """A setup that writes ratings.csv and adds these arguments ({tmp} is the test folder)."""

    def setup(tmp, spark, stack):
        (tmp / "ratings.csv").write_text(text)
        return [a.replace("{tmp}", str(tmp)) for a in extra]

    return setup


def setup_existing_output(tmp, spark, stack):
    (tmp / "ratings.csv").write_text(GOOD)
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("precious")
    return []


def output_at(where: str):
    """The input is the folder data/ holding ratings.csv; output.path is where, with overwrite on."""

    def setup(tmp, spark, stack):
        (tmp / "data").mkdir()
        (tmp / "data" / "ratings.csv").write_text(GOOD)
        return ["--set", f"input.path={tmp / 'data'}", "--set", "output.overwrite=true",
                "--set", f"output.path={where.replace('{tmp}', str(tmp))}"]  # fmt: skip

    return setup


def setup_output_under_a_file(tmp, spark, stack):
    (tmp / "ratings.csv").write_text(GOOD)
    (tmp / "notes.txt").write_text("a file, not a folder")
    return ["--set", f"output.path={tmp / 'notes.txt' / 'out'}"]


def setup_output_in_use(tmp, spark, stack):
    from cfspark.app.guard import RunLock

    (tmp / "ratings.csv").write_text(GOOD)
    stack.enter_context(RunLock([("output.path", str(tmp / "out"))]))  # another live run holds it
    return []


def setup_csv_as_parquet(tmp, spark, stack):
    (tmp / "ratings.csv").write_text(GOOD)
    return ["--set", "input.format=parquet"]


def setup_parquet_ids_disagree(tmp, spark, stack):
    """A folder of two Parquet files: userId is a string in one and a long in the other."""
    (tmp / "ratings.csv").write_text(GOOD)  # the default input.path, unused here
    for name, rows, schema in [
        ("a", [("u1", 1, 4.0)], "userId string, movieId long, rating double"),
        ("b", [(2, 2, 3.0)], "userId long, movieId long, rating double"),
    ]:
        spark.createDataFrame(rows, schema).coalesce(1).write.parquet(str(tmp / "events" / name))
        (part,) = (tmp / "events" / name).glob("part-*.parquet")
        part.rename(tmp / "events" / f"{name}.parquet")
    for name in ("a", "b"):
        for leftover in (tmp / "events" / name).iterdir():
            leftover.unlink()
        (tmp / "events" / name).rmdir()
    return ["--set", "input.format=parquet", "--set", f"input.path={tmp / 'events'}"]


def setup_parquet_boolean_ratings(tmp, spark, stack):
    spark.createDataFrame([(1, 1, True), (2, 1, False)], "userId long, movieId long, rating boolean").write.parquet(
        str(tmp / "events")
    )
    return ["--set", "input.format=parquet", "--set", f"input.path={tmp / 'events'}"]


def setup_parquet_double_ids(tmp, spark, stack):
    spark.createDataFrame([(1.5, 1, 4.0)], "userId double, movieId long, rating double").write.parquet(
        str(tmp / "events")
    )
    return ["--set", "input.format=parquet", "--set", f"input.path={tmp / 'events'}"]


def setup_checkpoints_in_use(tmp, spark, stack):
    """Another run, on another output.path, holds the same explicit checkpoint.dir."""
    from cfspark.app.guard import RunLock

    (tmp / "ratings.csv").write_text(GOOD)
    stack.enter_context(RunLock([("checkpoint.dir", str(tmp / "ck"))]))
    return ["--set", f"checkpoint.dir={tmp / 'ck'}"]


def setup_user_folder(*extra: str, files: dict[str, str] | None = None):
    """ratings.csv, and user files (relative path → text; a path ending in _cfspark is
    cfspark's marker) under the test folder; then these arguments."""

    def setup(tmp, spark, stack):
        (tmp / "ratings.csv").write_text(GOOD)
        for name, text in (files or {"out/keep.txt": "precious"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        return [a.replace("{tmp}", str(tmp)) for a in extra]

    return setup


def setup_input_glob(tmp, spark, stack):
    (tmp / "glob1").mkdir()
    (tmp / "glob1" / "ratings.csv").write_text(GOOD)
    return ["--set", f"input.path=file://{tmp}/glob*", "--set", f"output.path={tmp}/glob1",
            "--set", "output.overwrite=true"]  # fmt: skip


def setup_output_symlink_to_input(tmp, spark, stack):
    extra = output_at("{tmp}/link")(tmp, spark, stack)
    (tmp / "link").symlink_to(tmp / "data", target_is_directory=True)
    return extra


def setup_default_checkpoints_of_a_live_run(tmp, spark, stack):
    """Run A on output.path a holds its default checkpoint folder a_checkpoints; run B names it."""
    from cfspark.app.guard import RunLock

    (tmp / "ratings.csv").write_text(GOOD)
    stack.enter_context(RunLock([("output.path", str(tmp / "a")), ("checkpoint.dir", str(tmp / "a_checkpoints"))]))
    return ["--set", f"checkpoint.dir={tmp / 'a_checkpoints'}"]


DAY = "out/recommendations/run_date=2026-01-01"
DATED = {"out/_cfspark": "", "out/recommendations/_cfspark": "", f"{DAY}/_cfspark": "", f"{DAY}/p": "x"}
NOT_OURS = "exists and was not made by cfspark (it holds no _cfspark file)"
BCE = ("--set", "model.loss=bce")
H = "userId,movieId,rating\n"


# -- Input and model cases (ids, formats, weights, warm starts, sizes, saved models) --------------

RAISES = "ValueError"  # a library case: the setup returns a call that must raise ValueError with the line


def setup_mixed_folder(fmt: str):
    """A folder holding a csv file and a Parquet file, read as fmt."""

    def setup(tmp, spark, stack):
        (tmp / "events").mkdir()
        (tmp / "events" / "a.csv").write_text(GOOD)
        spark.createDataFrame([("u9", "m9", 2.0)], "userId string, movieId string, rating double").coalesce(
            1
        ).write.parquet(str(tmp / "p"))
        (part,) = (tmp / "p").glob("part-*.parquet")
        part.rename(tmp / "events" / "b.parquet")
        shutil.rmtree(tmp / "p")
        return ["--set", f"input.format={fmt}", "--set", f"input.path={tmp / 'events'}"]

    return setup


_SAVED: dict[str, str] = {}


def saved_model(spark) -> str:
    """A small mse model of rank 2, fitted and saved once for the module (copied before use)."""
    if "path" not in _SAVED:
        from cfspark import CollaborativeFilter

        folder = tempfile.mkdtemp(prefix="cfspark-bad-input-model-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        data = spark.createDataFrame(
            [(u, i, float((u * 3 + i) % 5 + 1)) for u in range(6) for i in range(5) if (u + i) % 3],
            "user long, item long, rating double",
        )
        est = CollaborativeFilter(rank=2, maxIter=2, userCol="user", itemCol="item", checkpointInterval=-1)
        est.fit(data).write().save(f"{folder}/model")
        _SAVED["path"] = f"{folder}/model"
    return _SAVED["path"]


def _one_part(model, table: str):
    return sorted((model / table).glob("part-*.parquet"))[0]


def _missing_part(model):
    _one_part(model, "item_stats").unlink()


def _truncated_part(model):
    part = _one_part(model, "user_factors")
    part.write_bytes(part.read_bytes()[:40])


def _junk_metadata(model):
    for f in (model / "metadata").iterdir():
        f.unlink()
    (model / "metadata" / "part-00000").write_text("not json\n")


def model_at(damage=None):
    """The saved model, copied to {tmp}/model and damaged; returns the copy's path."""

    def place(tmp, spark):
        shutil.copytree(saved_model(spark), tmp / "model")
        for crc in (tmp / "model").rglob(".*.crc"):  # Spark's checksums would name the damage first
            crc.unlink()
        if damage:
            damage(tmp / "model")
        return tmp / "model"

    return place


def warm_start(place, *extra: str):
    def setup(tmp, spark, stack):
        (tmp / "ratings.csv").write_text(GOOD)
        return ["--set", f"model.warm_start={place(tmp, spark)}", *extra]

    return setup


def load(place):
    def setup(tmp, spark, stack):
        from cfspark import CFModel

        path = str(place(tmp, spark))
        return lambda: CFModel.load(path)

    return setup


def recommend(call):
    """call(model, spark) on the saved model, loaded."""

    def setup(tmp, spark, stack):
        from cfspark import CFModel

        model = CFModel.load(saved_model(spark))
        return lambda: call(model, spark)

    return setup


def setup_many_ids(tmp, spark, stack):
    """3,000 users and 3,000 items, one rating each: rank 3,000 passes the data's bound, not memory's."""
    (tmp / "ratings.csv").write_text(H + "".join(f"u{i},m{i},{i % 5 + 1}\n" for i in range(3000)))
    return ["--set", "model.rank=3000", "--set", "spark.shuffle_partitions=1"]


def interrupted(signum: int):
    """A job body cut off by signum half-way through a Spark call, whose clean-up then fails too."""

    def setup(tmp, spark, stack):
        from cfspark.app.cli import exit_code

        def body() -> int:
            try:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler raises well before this ends
            finally:
                raise RuntimeError("Error while sending or receiving (a py4j call cut off)")

        return lambda: exit_code(body)

    return setup


def spark_stopped_under(error: Exception):
    """A job whose JVM was terminated: its current call fails with error."""

    def setup(tmp, spark, stack):
        from cfspark.app import cli

        def body() -> int:
            raise error

        def run() -> int:
            with mock.patch.object(cli, "spark_stopped", lambda: True):
                return cli.exit_code(body)

        return run

    return setup


STOPPED = "Spark stopped under the job (its JVM was terminated, e.g. by SIGTERM, or died); nothing was written"


def setup_config_file(text: str | bytes | None):
    """job.toml holding text (bytes as they are), or a folder of that name for None."""

    def setup(tmp, spark, stack):
        (tmp / "ratings.csv").write_text(GOOD)
        if text is None:
            (tmp / "job.toml").mkdir()
        elif isinstance(text, bytes):
            (tmp / "job.toml").write_bytes(text)
        else:
            (tmp / "job.toml").write_text(text)
        return ["--config", str(tmp / "job.toml")]

    return setup


W = "userId,movieId,rating,count\n"
WEIGHTED = ("--set", "input.weight_col=count")
MOVIELENS = ("--set", "input.format=movielens")

INPUT_CASES = {
    "movielens_tab_separated": (
        args(*MOVIELENS, text="1\t10\t4\n2\t11\t3\n"), INPUT,
        "is not in the movielens format (user::item::rating...): 2 of 2 line(s) have fewer than 3 '::'-separated "
        "fields, e.g. '1\\t10\\t4'",
    ),
    "movielens_comma_separated": (
        args(*MOVIELENS, text="1::10::4\n2,11,3\n"), INPUT, "1 of 2 line(s) have fewer than 3 '::'-separated fields",
    ),
    "csv_folder_with_parquet": (setup_mixed_folder("csv"), INPUT, "mixes Parquet files (1, e.g. b.parquet) with other "
                                "files (1, e.g. a.csv); read as csv"),
    "parquet_folder_with_csv": (setup_mixed_folder("parquet"), INPUT, "mixes Parquet files (1, e.g. b.parquet)"),
    "delimiter_space_kept": (
        args("--set", "input.delimiter= ", text="userId film rating\nu1 m1 4\n"), INPUT,
        "no column 'movieId'; its columns are ['userId', 'film', 'rating']",
    ),
    "delimiter_empty": (args("--set", 'input.delimiter=""'), CONFIG, "input.delimiter must not be empty"),
    "same_column_twice": (
        args("--set", "input.item_col=userId"), CONFIG,
        "input.user_col, item_col, rating_col and weight_col must name different columns, got ['userId', 'userId', ",
    ),
    "id_not_integer_for_long": (
        args("--set", "input.id_type=long"), INPUT, "column 'userId' has 4 id(s) that are not integers out of 4 rows",
    ),
    "id_beyond_long": (
        args("--set", "input.id_type=long", text=H + "1,10,4\n99999999999999999999,11,3\n"), INPUT,
        "column 'userId' has 1 integer id(s) out of range for long",
    ),
    "weight_huge_mse": (
        args(*WEIGHTED, text=W + "u1,m1,4,1e308\nu1,m2,3,2\nu2,m1,5,1\n"), INPUT,
        "column 'count' (input.weight_col) has 1 weight(s) above 1e+100, out of the range the loss's sums can hold",
    ),
    "weight_huge_bce": (
        args(*WEIGHTED, *BCE, text=W + "u1,m1,1,1e300\nu1,m2,0,2\nu2,m1,1,1\nu2,m2,0,1\n"), INPUT,
        "column 'count' (input.weight_col) has 1 weight(s) above 1e+100",
    ),
    "weight_range_bce": (
        args(*WEIGHTED, *BCE, "--set", "model.exposure=false", "--set", "split.test_fraction=0.0",
             "--set", "input.weight_mapping=linear",
             text=W + "u1,m1,1,1e100\nu1,m2,0,1\nu2,m1,1,1e100\nu2,m2,0,1\n"), INPUT,
        "the 4 training labels hold both 0 and 1, but their weighted share of 1s is 1 in float64: the rows' "
        "weights range from 2 to 1e+100, too wide a range for bce",
    ),
    "weight_zero": (
        args(*WEIGHTED, text=W + "u1,m1,4,0\nu1,m2,3,2\n"), INPUT, "has 1 count(s) that are not above 0 out of 2 rows",
    ),
    "weight_text": (
        args(*WEIGHTED, text=W + "u1,m1,4,many\nu1,m2,3,2\n"), INPUT, "has 1 value(s) that are not finite numbers",
    ),
    "weight_positional": (
        args(*WEIGHTED, "--set", "input.header=false", text="u1,m1,4,1\n"), INPUT,
        "input.weight_col needs named columns",
    ),
    "movielens_rating_text": (
        args(*MOVIELENS, text="u1::m1::high\n"), INPUT, "1 value(s) that are not numbers",
    ),
}  # fmt: skip

WARM_START_CASES = {
    "warm_start_missing": (
        warm_start(lambda tmp, spark: tmp / "nope"), CONFIG, "model.warm_start {tmp}/nope cannot be loaded: ",
    ),
    "warm_start_not_a_model": (
        warm_start(model_at(_junk_metadata)), CONFIG, "model.warm_start {tmp}/model cannot be loaded: ",
    ),
    "warm_start_rank": (
        warm_start(model_at(), "--set", "model.rank=1"), CONFIG,
        "model.warm_start {tmp}/model has rank 2, above model.rank = 1: a warm start keeps its model's rank",
    ),
    "warm_start_loss": (
        warm_start(model_at(), "--set", "model.rank=2", *BCE), CONFIG,
        "model.warm_start {tmp}/model was fitted with model.loss = 'mse', but model.loss is 'bce'",
    ),
    "warm_start_missing_part": (
        warm_start(model_at(_missing_part), "--set", "model.rank=2"), CONFIG,
        "cannot be loaded: the saved model {tmp}/model is incomplete: item_stats lacks 1 of its",
    ),
    "warm_start_truncated_part": (
        warm_start(model_at(_truncated_part), "--set", "model.rank=2"), CONFIG,
        "cannot be loaded: the saved model {tmp}/model is damaged: user_factors cannot be read: ",
    ),
    "rank_above_data": (
        args("--set", "model.rank=100000"), CONFIG,
        "model.rank = 100000 is above the data's 2 users and 3 items: a rank above min(#users, #items) = 2",
    ),
    "rank_beyond_memory": (setup_many_ids, CONFIG, "model.rank = 3000 needs about "),
    "similar_items_above_items": (
        args("--set", "output.similar_items=3"), CONFIG,
        "output.similar_items = 3 is above the data's 3 items less the item itself",
    ),
    "top_n_above_items": (
        args("--set", "output.top_n=1000000000"), CONFIG, "output.top_n = 1000000000 is above the data's 3 items",
    ),
    "config_file_missing": (args("--config", "{tmp}/nope.toml"), CONFIG, "config file not found: {tmp}/nope.toml"),
    "config_file_not_toml": (setup_config_file("[model\nrank = 3\n"), CONFIG, "job.toml is not valid TOML"),
    "config_file_not_utf8": (setup_config_file(b"\xff\xfe[model]\n"), CONFIG, "job.toml is not valid TOML"),
    "config_file_is_a_folder": (setup_config_file(None), CONFIG, "job.toml cannot be read: Is a directory"),
    "config_key_not_in_a_section": (setup_config_file("rank = 3\n"), CONFIG, "config key rank must be a [section]"),
    "top_n_zero": (args("--set", "output.top_n=0"), CONFIG, "output.top_n must be >= 1, got 0"),
    "test_fraction_one": (args("--set", "split.test_fraction=1.0"), CONFIG, "split.test_fraction must be in [0, 1)"),
    "format_unknown": (args("--set", "input.format=json"), CONFIG, "input.format = 'json' is not one of"),
    "sigterm_cuts_a_spark_call": (interrupted(signal.SIGTERM), SIGTERM, "cfspark: error: interrupted (signal 15)\n"),
    "sigint_cuts_a_spark_call": (interrupted(signal.SIGINT), SIGINT, "cfspark: error: interrupted (SIGINT)\n"),
    "jvm_terminated_in_the_read": (
        spark_stopped_under(InputError('cannot read input.path x as csv: Cannot invoke "DAGScheduler.cleanup"')),
        SIGTERM, STOPPED,
    ),
    "jvm_terminated_in_a_call": (spark_stopped_under(ConnectionRefusedError(111, "refused")), SIGTERM, STOPPED),
    "binarize_with_mse": (
        args("--set", "input.binarize_threshold=3"), CONFIG, "input.binarize_threshold turns ratings into labels",
    ),
}  # fmt: skip

LIBRARY_CASES = {
    "load_missing_part": (load(model_at(_missing_part)), RAISES, "is incomplete: item_stats lacks 1 of its"),
    "load_truncated_part": (load(model_at(_truncated_part)), RAISES, "is damaged: user_factors cannot be read: "),
    "load_missing_path": (load(lambda tmp, spark: tmp / "nope"), RAISES, "{tmp}/nope holds no saved CFModel: "),
    "recommend_negative": (
        recommend(lambda m, spark: m.recommendForAllUsers(-3)), RAISES,
        "numItems must be an integer >= 1 (how many to recommend), got -3",
    ),
    "recommend_items_zero": (
        recommend(lambda m, spark: m.recommendForAllItems(0)), RAISES, "numUsers must be an integer >= 1",
    ),
    "recommend_subset_fraction": (
        recommend(lambda m, spark: m.recommendForUserSubset(m.userFactors, 2.5)), RAISES,
        "numItems must be an integer >= 1 (how many to recommend), got 2.5",
    ),
    "recommend_item_subset_bool": (
        recommend(lambda m, spark: m.recommendForItemSubset(m.itemFactors, True)), RAISES,
        "numUsers must be an integer >= 1 (how many to recommend), got True",
    ),
}  # fmt: skip

# -- End of the input and model cases ----------------------------------------------------------------

# name: (setup, exit code, what the one line must say)
MATRIX = {
    # Bad input (docs/operations.md, What is refused)
    "missing_path": (args("--set", "input.path={tmp}/nope.csv"), INPUT, "input.path {tmp}/nope.csv does not exist"),
    "missing_column": (ratings("userId,film,rating\nu1,m1,4\n"), INPUT, "no column 'movieId'"),
    "null_user": (ratings(H + "u1,m1,4\n,m2,3\n"), INPUT, "column 'userId' has 1 null id(s) out of 2 rows"),
    "null_item": (ratings(H + "u1,m1,4\nu2,,3\n"), INPUT, "column 'movieId' has 1 null id(s)"),
    "null_rating": (ratings(H + "u1,m1,4\nu2,m2,\n"), INPUT, "column 'rating' has 1 null rating(s)"),
    "not_number": (
        ratings(H + "u1,m1,4\nu2,m2,great\nu3,m3,bad\n"), INPUT,
        "column 'rating' has 2 value(s) that are not numbers out of 3 rows, e.g. {'userId': 'u2'",
    ),
    "mse_text_labels": (
        ratings(H + "u1,m1,true\nu2,m2,false\nu3,m3,True\n"), INPUT,
        "column 'rating' has 3 true/false value(s) out of 3 rows, e.g. {'userId': 'u1'",
    ),
    "mse_boolean_labels": (
        setup_parquet_boolean_ratings, INPUT,
        'column \'rating\' has type boolean; true/false are labels: set model.loss = "bce"',
    ),
    "nan": (ratings(H + "u1,m1,4\nu2,m2,NaN\n"), INPUT, "column 'rating' has 1 NaN or infinite rating(s)"),
    "inf": (ratings(H + "u1,m1,4\nu2,m2,Infinity\n"), INPUT, "column 'rating' has 1 NaN or infinite rating(s)"),
    "overflow": (
        ratings(H + "u1,m1,1e308\nu2,m1,1e308\nu3,m2,4\n"), INPUT,
        "column 'rating' has 2 rating(s) above 1e+100 in magnitude out of 3 rows, e.g. {'userId': 'u1'",
    ),
    "empty": (ratings(H + ""), INPUT, "the input has no ratings (0 rows)"),
    "duplicates": (
        ratings(H + "u1,m1,4\nu1,m1,5\nu2,m1,3\n"), INPUT,
        "1 (user, item) pair(s) appear more than once, e.g. {userId: 'u1', movieId: 'm1'} appears 2 times",
    ),
    "parquet_is_csv": (setup_csv_as_parquet, INPUT, "ratings.csv as parquet: "),
    "parquet_ids_disagree": (setup_parquet_ids_disagree, INPUT, "events as parquet: "),
    "parquet_double_ids": (
        setup_parquet_double_ids, INPUT,
        "column 'userId' has 1 id(s) that are not whole numbers out of 1 rows, e.g. {'userId': 1.5, 'movieId': 1",
    ),
    "bce_not_a_label": (
        args(*BCE, text=H + "u1,m1,1\nu2,m2,2\nu3,m3,2\n"), INPUT,
        "column 'rating' has 2 label(s) other than 0/1 or true/false out of 3 rows, e.g. value '2' in",
    ),
    "bce_binarize_text": (
        args(*BCE, "--set", "input.binarize_threshold=4", text=H + "u1,m1,4\nu2,m2,good\n"),
        INPUT, "input.binarize_threshold needs numbers: column 'rating' has 1 value(s) that are not numbers",
    ),
    "bce_all_one_label": (
        # the plain model only: with model.exposure (the default) labels all 1 fit the exposure model alone
        args(*BCE, "--set", "split.test_fraction=0.0", "--set", "model.exposure=false", text=H + "u1,m1,1\nu2,m2,1\n"),
        INPUT, "all 2 training labels are 1; bce needs both 0 and 1 labels",
    ),
    # Bad config
    "rank": (args("--set", "model.rank=0"), CONFIG, "model.rank must be >= 1, got 0"),
    "reg": (args("--set", "model.reg=-0.5"), CONFIG, "model.reg must be >= 0.0, got -0.5"),
    "unknown_key": (
        args("--set", "model.rnak=5"), CONFIG, "unknown config key model.rnak (from --set); did you mean model.rank?",
    ),
    "unknown_loss": (args("--set", "model.loss=hinge"), CONFIG, "model.loss = 'hinge' is not one of mse, bce"),
    "wrong_type": (args("--set", "model.rank=ten"), CONFIG, "config key model.rank must be a int, got 'ten'"),
    "reg_nan": (args("--set", "model.reg=nan"), CONFIG, "model.reg must be finite, got nan"),
    "reg_word": (args("--set", "model.reg=fast"), CONFIG, "config key model.reg must be a float or 'auto', got 'fast'"),
    "grid_inf": (
        args("--set", "compare.als_reg_grid=[0.1, inf]"), CONFIG, "compare.als_reg_grid must be finite, got [0.1, inf]",
    ),
    "run_date": (args("--set", "output.run_date=2026-02-30"), CONFIG, "output.run_date must be a date YYYY-MM-DD"),
    # Paths: checked before anything is read, so nothing of the user's is replaced
    "output_exists": (setup_existing_output, CONFIG, "already exists; choose another or set output.overwrite = true"),
    "output_is_input_folder": (output_at("{tmp}/data"), CONFIG, "output.path {tmp}/data is input.path {tmp}/data"),
    "output_above_input": (output_at("{tmp}"), CONFIG, "output.path {tmp} is a folder above input.path {tmp}/data"),
    "output_is_input_file": (
        args("--set", "output.path={tmp}/ratings.csv", "--set", "output.overwrite=true"), CONFIG,
        "output.path {tmp}/ratings.csv is input.path {tmp}/ratings.csv; writing there would destroy it",
    ),
    "output_inside_input": (output_at("{tmp}/data/out"), CONFIG, "output.path {tmp}/data/out is inside input.path"),
    "checkpoints_above_input": (
        args("--set", "checkpoint.dir={tmp}"), CONFIG, "checkpoint.dir {tmp} is a folder above input.path",
    ),
    "output_under_a_file": (setup_output_under_a_file, OUTPUT, "notes.txt is a file, not a folder"),
    "output_in_use": (setup_output_in_use, BUSY, "output.path {tmp}/out is in use by another run (pid "),
    "checkpoints_in_use": (setup_checkpoints_in_use, BUSY, "checkpoint.dir {tmp}/ck is in use by another run (pid "),
    **INPUT_CASES,
    **WARM_START_CASES,
    **LIBRARY_CASES,
    # Ownership: only folders that cfspark made (they hold its _cfspark marker) are replaced
    "overwrite_a_users_folder": (
        setup_user_folder("--set", "output.overwrite=true"), CONFIG, f"output.path {{tmp}}/out {NOT_OURS}",
    ),
    "output_glob": (args("--set", "output.path={tmp}/out*"), CONFIG, "output.path {tmp}/out* holds a glob character"),
    "checkpoints_glob": (
        args("--set", "checkpoint.dir={tmp}/ck{1,2}"), CONFIG, "checkpoint.dir {tmp}/ck{1,2} holds a glob character",
    ),
    "input_glob_matches_output": (
        setup_input_glob, CONFIG,
        "output.path {tmp}/glob1 is input.path file://{tmp}/glob* (which matches {tmp}/glob1)",
    ),
    "output_symlink_to_input": (
        setup_output_symlink_to_input, CONFIG, "output.path {tmp}/link is input.path {tmp}/data",
    ),
    "output_file_uri_is_input": (output_at("file://{tmp}/data"), CONFIG, "output.path file://{tmp}/data is input.path"),
    "undated_over_dated": (
        setup_user_folder("--set", "output.overwrite=true", files=DATED), CONFIG,
        "output.path {tmp}/out holds date partitions (run_date=…) and this run has no output.run_date",
    ),
    "dated_into_a_users_folder": (
        setup_user_folder("--set", "output.run_date=2026-01-01"), CONFIG, f"output.path {{tmp}}/out {NOT_OURS}",
    ),
    "dated_over_a_users_partition": (
        setup_user_folder("--set", "output.run_date=2026-01-01", files={
            **DATED, "out/model/run_date=2026-01-01/mine.txt": "precious"}), CONFIG,
        f"output.path {{tmp}}/out/model/run_date=2026-01-01 {NOT_OURS}",
    ),
    "checkpoint_subfolder_a_users": (
        setup_user_folder("--set", "checkpoint.dir={tmp}/ck", files={"ck/cfspark-checkpoints/mine.txt": "x"}), CONFIG,
        f"checkpoint.dir {{tmp}}/ck/cfspark-checkpoints {NOT_OURS}",
    ),
    "default_checkpoints_of_a_live_run": (
        setup_default_checkpoints_of_a_live_run, BUSY, "checkpoint.dir {tmp}/a_checkpoints is in use by another run",
    ),
    "output_unreachable": (
        args("--set", "output.path=hdfs://nonexistent.invalid:8020/out", "--set", "checkpoint.interval=0"), OUTPUT,
        "output.path hdfs://nonexistent.invalid:8020/out cannot be reached: unknown host",
    ),
}  # fmt: skip


def _run(capsys, tmp_path, *args):
    out = tmp_path / "out"
    code = train_job.main(
        ["--set", f"output.path={out}", "--set", "spark.shuffle_partitions=4", "--set", "model.max_iter=2", *args]
    )
    return code, capsys.readouterr().err, out


def _snapshot(folder) -> dict[str, bytes | None]:
    """Every file and folder under folder, with the files' contents."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                found[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
    return found


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_refused_with_one_clear_line_and_nothing_touched(spark, capsys, tmp_path, case):
    setup, expected_code, message = MATRIX[case]
    with contextlib.ExitStack() as stack:
        extra = setup(tmp_path, spark, stack)
        before = _snapshot(tmp_path)
        if expected_code == RAISES:
            with pytest.raises(ValueError) as raised:
                extra()
            code, err = RAISES, f"cfspark: error: {raised.value}\n"
        elif callable(extra):  # a job's body, run as main runs it
            code, err = extra(), capsys.readouterr().err
        else:
            code, err, _ = _run(capsys, tmp_path, "--set", f"input.path={tmp_path / 'ratings.csv'}", *extra)
        after = _snapshot(tmp_path)
    assert code == expected_code, err
    assert err.startswith("cfspark: error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert after == before  # no output, staging, lock or checkpoint left; the input as it was


def test_a_second_config_file_is_refused_not_dropped(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        train_job.main(["--config", str(tmp_path / "a.toml"), "--config", str(tmp_path / "b.toml")])
    assert stop.value.code == CONFIG
    assert "--config is given twice" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["abc", "2,0"])
def test_the_benchmarks_als_curve_is_checked_as_an_argument(capsys, value):
    from cfspark.bench import benchmark

    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--als-curve", value])
    assert stop.value.code == CONFIG and "--als-curve" in capsys.readouterr().err


def test_help_lists_every_key_with_its_default(capsys):
    from cfspark.app.config import load_defaults

    with pytest.raises(SystemExit) as stop:
        train_job.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "  model.rank = 10\n" in text and "  input.binarize_threshold = nan\n" in text
    assert all(f"  {s}.{k} = " in text for s, values in load_defaults().items() for k in values)


def test_duplicates_can_be_averaged(spark, capsys, tmp_path):
    """Also: what a run killed while writing left behind (its lock, its staging folders, each
    marked as a dead run's) is cleared by the next run on the same output.path; a folder of
    the user's with a staging-like name is not."""
    import socket

    data = tmp_path / "ratings.csv"
    data.write_text(GOOD + "u1,m1,2\n")
    dead = json.dumps({"run": "gone", "pid": 999999, "host": socket.gethostname(), "started": "2026-01-01"})
    (tmp_path / "out.partial-dead0001" / "recommendations").mkdir(parents=True)
    (tmp_path / "out.partial-dead0001" / "_cfspark").write_text(dead)
    (tmp_path / "out.old-dead0002").mkdir()
    (tmp_path / "out.old-dead0002" / "_cfspark").write_text(dead)
    (tmp_path / "out.old-2024-backup").mkdir()
    (tmp_path / "out.old-2024-backup" / "precious.txt").write_text("the user's")
    (tmp_path / "out.lock").write_text('{"pid": 999999, "host": "gone", "started": "2026-01-01T00:00:00"}')
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
        "--set",
        "model.mean_prior=0",  # the plain item means, so the averaged duplicate shows as it is
    )
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["out", "out.old-2024-backup", "ratings.csv"]  # stale ones removed
    assert (tmp_path / "out.old-2024-backup" / "precious.txt").read_text() == "the user's"
    means = {r.movieId: r.item_mean for r in spark.read.parquet(str(out / "model" / "item_stats")).collect()}
    assert means == {"m1": (3.0 + 5.0) / 2, "m2": 3.0, "m3": 1.0}
    # Strict JSON: input.binarize_threshold = nan (off) is written as null, not a bare NaN.
    (text,) = [r.value for r in spark.read.text(str(out / "model" / "metadata")).collect()]
    meta = strict_json_text(text, "the model's metadata")
    assert meta["cfspark"]["config"]["input"]["binarize_threshold"] is None
    assert strict_json(out / "metrics.json")["train"]["count"] == 4


def strict_json(path):
    return strict_json_text(path.read_text(), path)


def strict_json_text(text, where):
    def refuse(name):
        raise ValueError(f"{where} holds {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_files_are_strict(tmp_path):
    from cfspark.core.fs import write_json

    write_json(str(tmp_path / "m.json"), {"auc": float("nan"), "grid": [1.0, float("inf")], "n": {"x": -float("inf")}})
    assert strict_json(tmp_path / "m.json") == {"auc": None, "grid": [1.0, None], "n": {"x": None}}


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
    from cfspark.ml.model_io import CFModelWriter

    data = tmp_path / "ratings.csv"
    data.write_text(GOOD)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous result")
    (tmp_path / "out" / "_cfspark").write_text("")  # an earlier output of cfspark's, adopted

    def fail(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(CFModelWriter, "saveImpl", fail)
    code, err, out = _run(capsys, tmp_path, "--set", f"input.path={data}", "--set", "output.overwrite=true",
                          "--set", "checkpoint.interval=0")  # fmt: skip
    assert code == 5 and "cfspark: error: writing the results failed: OSError: disk full" in err, err
    assert (out / "keep.txt").read_text() == "previous result"
    assert sorted(os.listdir(tmp_path)) == ["out", "ratings.csv"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_give_the_interrupted_codes(capsys, signum, code):
    from cfspark.app.cli import exit_code

    def body() -> int:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises well before this ends
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert exit_code(body) == code
    assert "cfspark: error: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the job's handler is removed again


def test_each_error_class_has_its_own_exit_code():
    from cfspark.app.cli import code_for
    from cfspark.core import errors

    classes = [errors.ConfigError, errors.InputError, errors.TrainingError, errors.OutputError, errors.BusyError]
    codes = [code_for(cls("x")) for cls in classes]
    assert codes == [2, 3, 4, 5, 6]


# -- Input and model checks below the job ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "kept_as"),
    [
        (["1", "7", "-3", "9223372036854775807"], "long"),
        (["007", "7", "8"], "string"),  # "007" is not 7's spelling: two users, not one
        (["+7", "8"], "string"),
        ([" 7", "8"], "string"),
        (["7", "8 "], "string"),
        (["-0", "1"], "string"),
    ],
)
def test_auto_ids_are_integers_only_when_every_id_round_trips(spark, ids, kept_as):
    from cfspark.data.read import Columns
    from cfspark.data.validate import validate_ratings

    df = spark.createDataFrame([(u, f"i{n}", 1.0) for n, u in enumerate(ids)], "u string, i string, r double")
    out = validate_ratings(df, Columns("u", "i", "r"), id_type="auto", duplicates="error")
    got = sorted(r.user for r in out.select("user").collect())
    assert dict(out.dtypes)["user"] == ("bigint" if kept_as == "long" else "string")
    assert got == sorted(int(u) for u in ids) if kept_as == "long" else got == sorted(ids)


def test_a_python_workers_cause_is_the_line_kept():
    from cfspark.data.read import spark_message

    text = (
        "An error occurred while calling o123.collectToPython.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed\n"
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "/x/worker.py", line 1247, in main\n'
        "    process()\n"
        '  File "/x/cfspark/kernels/block.py", line 80, in grams\n'
        "    out = np.empty((n, k, k))\n"
        "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 4.37 TiB for an array with shape "
        "(60, 100000, 100000) and data type float64\n"
        "\n"
        "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala:572)\n"
    )
    assert spark_message(Exception(text)) == (
        "_ArrayMemoryError: Unable to allocate 4.37 TiB for an array with shape (60, 100000, 100000) "
        "and data type float64"
    )
    assert spark_message(Exception("[PATH_NOT_FOUND] Path does not exist: file:/x.")) == (
        "[PATH_NOT_FOUND] Path does not exist: file:/x."
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("input.delimiter= ", " "),
        ("input.delimiter=\t", "\t"),
        ("model.loss= bce ", "bce"),
        ('input.delimiter=" "', " "),
    ],
)
def test_a_value_of_spaces_is_kept(text, value):
    from cfspark.app.config import load_config, parse_override

    assert parse_override(text)[2] == value
    section, key, _ = parse_override(text)
    assert load_config(None, [text])[section][key] == value


def test_a_saved_model_records_its_tables(spark):
    """The metadata's inventory is what is on disk: each table's rows and part files."""
    from cfspark.ml.model_io import read_metadata

    path = saved_model(spark)
    parts = read_metadata(spark, path)["cfspark"]["parts"]
    assert sorted(parts) == ["item_factors", "item_stats", "training_pairs", "user_factors"]
    pairs = sum(1 for u in range(6) for i in range(5) if (u + i) % 3)  # saved_model's ratings
    rows = {"user_factors": 6, "item_factors": 5, "item_stats": 5, "training_pairs": pairs}
    assert {name: saved["rows"] for name, saved in parts.items()} == rows
    for name, saved in parts.items():
        assert saved["files"] == sorted(f for f in os.listdir(os.path.join(path, name)) if f.startswith("part-"))


def test_an_error_not_spark_s_keeps_its_traceback(monkeypatch):
    """Only a stopped Spark turns an unexpected error into the one line; anything else is a bug (exit 1)."""
    from cfspark.app import cli

    monkeypatch.setattr(cli, "spark_stopped", lambda: False)

    def body() -> int:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        cli.exit_code(body)


def test_spark_stopped_is_false_while_the_session_runs(spark):
    """The probe asks the live session through the DataFrame API: a running Spark is not 'stopped'."""
    from cfspark.app.cli import spark_stopped

    assert spark.range(1).count() == 1
    assert spark_stopped() is False
