"""jobs/train.py end to end, in this process on the shared session: the mse job on a small
CSV with string ids, and the bce job. spark-submit itself runs here for the bad-input exit
code, and for the whole job on the standalone cluster (tests/test_cluster.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from planted import planted_ratings
from test_bad_input import train_job
from tests_support import C1_ONLY, REPO

from cfspark import CFModel
from cfspark.core.schema import ITEM, USER
from cfspark.data.split import split_ratings

pytestmark = pytest.mark.slow

TOP_N = 5
N_ITEMS = 30


def spark_submit(*args: str) -> subprocess.CompletedProcess:
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    job = os.path.join(REPO, "jobs", "train.py")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    return subprocess.run(
        [submit, "--master", "local[2]", "--driver-memory", "1g", "--driver-java-options", C1_ONLY, job, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):  # spark: the job's getOrCreate then takes the shared session
    tmp = tmp_path_factory.mktemp("e2e")
    p = planted_ratings(n_users=40, n_items=N_ITEMS, rank=2, density=0.5, noise=0.3, seed=9)
    lines = ["user;film;stars"] + [f"user-{u:03d};film-{i:03d};{r:.3f}" for u, i, r in p.rows()]
    (tmp / "ratings.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "out"
    args = [
        "--config",
        os.path.join(REPO, "conf", "default.toml"),
        "--set",
        f"input.path={tmp / 'ratings.csv'}",
        "--set",
        "input.delimiter=;",
        "--set",
        "input.user_col=user",
        "--set",
        "input.item_col=film",
        "--set",
        "input.rating_col=stars",
        "--set",
        f"output.path={out}",
        "--set",
        f"output.top_n={TOP_N}",
        "--set",
        "output.similar_items=2",
        "--set",
        "model.max_iter=5",
        "--set",
        "model.rank=2",
        "--set",
        "model.num_user_blocks=2",
        "--set",
        "model.num_item_blocks=3",
        "--set",
        "checkpoint.interval=2",
        "--set",
        "compare.als=true",
        "--set",
        "compare.als_reg_grid=[0.1]",
        "--set",
        "compare.als_max_iter=5",  # the comparison's plumbing, not ALS's accuracy, is under test
        "--set",
        "compare.als_num_blocks=2",
        "--set",
        "spark.shuffle_partitions=4",  # the shared session's own (conftest)
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train_job.main(args)
    proc = SimpleNamespace(returncode=code, stdout=printed.getvalue(), stderr="")
    return tmp, out, proc


def test_job_succeeds_and_prints_a_summary(run):
    _, out, proc = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test rmse" in proc.stdout and "Spark ALS" in proc.stdout and str(out) in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    winner = "cfspark wins" if m["test"]["rmse"] <= m["als"]["test"]["rmse"] else "Spark ALS wins"
    assert f"{winner} on test RMSE: {m['test']['rmse']:.4f} against {m['als']['test']['rmse']:.4f}" in proc.stdout
    assert sorted(os.listdir(out)) == ["_cfspark", "metrics.json", "model", "recommendations", "similar_items"]
    assert not os.path.exists(f"{out}_checkpoints")  # removed after success
    assert not [n for n in os.listdir(out.parent) if ".partial-" in n]


def test_metrics_json_has_every_key(run):
    _, out, _ = run
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss"] == "mse"
    for split in ("train", "test"):
        assert m[split]["rmse"] > 0 and m[split]["mae"] > 0
    assert 2 <= len(m["iterations"]) <= 5  # max_iter = 5, or fewer when tol stops it
    assert [it["iteration"] for it in m["iterations"]] == list(range(1, len(m["iterations"]) + 1))
    assert m["iterations"][-1]["stop"] == m["model"]["stop_reason"]
    # Automatic λ by default: the chosen reg, in units of the spread, is in the model's λ.
    fitted = m["model"]
    assert fitted["reg"] == pytest.approx(fitted["reg_search"]["reg"] * fitted["spread"], rel=1e-12)
    assert fitted["reg_search"]["reg"] in [p["reg"] for p in fitted["reg_path"]]
    assert all(it["train_loss"] > 0 and it["seconds"] > 0 for it in m["iterations"])
    assert {"read_validate", "split", "fit", "evaluate", "recommend_write", "model_write", "als"} <= m["timings"].keys()
    assert m["als"]["test"]["rmse"] > 0 and m["als"]["test"]["mae"] > 0 and m["als"]["fit_seconds"] > 0
    assert m["als"]["params"] == {"rank": 2, "regParam": 0.1, "maxIter": 5, "seed": 7}
    assert m["als"]["test"]["count"] == m["test"]["count"] == m["counts"]["test"]


def test_similar_items_are_the_saved_models_cosine_ranking(spark, run):
    _, out, _ = run
    written = spark.read.parquet(str(out / "similar_items"))
    assert written.columns == ["film", "similar", "rank", "score"]
    expected = CFModel.load(str(out / "model")).allSimilarItems(2)
    assert written.count() > 0 and sorted(written.collect()) == sorted(expected.collect())


def test_recommendations_exclude_training_pairs_and_fill_top_n(spark, run):
    tmp, out, _ = run
    recs = spark.read.parquet(str(out / "recommendations"))
    assert recs.columns == ["user", "film", "rank", "score"]
    assert dict(recs.dtypes)["user"] == "string" and dict(recs.dtypes)["film"] == "string"
    raw = spark.read.csv(str(tmp / "ratings.csv"), header=True, sep=";").selectExpr(
        f"user as {USER}", f"film as {ITEM}", "cast(stars as double) as rating"
    )
    train, _ = split_ratings(raw, test_fraction=0.2, seed=42)
    rated: dict[str, set] = {}
    for r in train.collect():
        rated.setdefault(r[USER], set()).add(r[ITEM])
    got: dict[str, list] = {}
    for r in recs.collect():
        got.setdefault(r.user, []).append((r.rank, r.film, r.score))
    assert got.keys() == rated.keys()
    for user, rows in got.items():
        rows.sort()
        assert [rk for rk, _, _ in rows] == list(range(1, len(rows) + 1))
        assert len(rows) == min(TOP_N, N_ITEMS - len(rated[user]))
        assert not {film for _, film, _ in rows} & rated[user]
        scores = [s for _, _, s in rows]
        assert scores == sorted(scores, reverse=True)


def test_model_tables_use_the_input_ids_and_reproduce_scores(spark, run):
    _, out, _ = run
    users = {r.user: r for r in spark.read.parquet(str(out / "model" / "user_factors")).collect()}
    items = {r.film: r for r in spark.read.parquet(str(out / "model" / "item_factors")).collect()}
    means = {r.film: r.item_mean for r in spark.read.parquet(str(out / "model" / "item_stats")).collect()}
    (text,) = [r.value for r in spark.read.text(str(out / "model" / "metadata")).collect()]
    meta = json.loads(text)
    assert meta["paramMap"]["rank"] == 2 and meta["paramMap"]["loss"] == "mse"
    assert meta["cfspark"]["config"]["model"]["num_item_blocks"] == 3
    assert {"cfspark_version", "spark_version", "counts"} <= meta["cfspark"].keys()
    # The job's model loads, and recommends what the job wrote.
    model = CFModel.load(str(out / "model"))
    written = spark.read.parquet(str(out / "recommendations"))
    assert sorted(model.recommendForAllUsers(TOP_N).collect()) == sorted(written.collect())
    assert all(u.startswith("user-") for u in users) and all(i.startswith("film-") for i in items)
    assert len(next(iter(users.values())).features) == 2
    top = spark.read.parquet(str(out / "recommendations")).filter("rank = 1").limit(3).collect()
    for r in top:
        expected = (
            np.dot(users[r.user].features, items[r.film].features) + users[r.user].bias + items[r.film].bias
            + means[r.film]
        )  # fmt: skip
        assert r.score == pytest.approx(expected, rel=1e-9)


def test_bad_input_exits_non_zero_through_spark_submit(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\nu1,m1,4\nu1,m1,5\n")
    proc = spark_submit("--set", f"input.path={tmp_path / 'ratings.csv'}", "--set", f"output.path={tmp_path / 'out'}")
    assert proc.returncode == 3  # bad input (docs/operations.md, Exit codes)
    # spark-submit's PythonRunner merges the driver's stderr into its own stdout.
    assert "cfspark: error: 1 (user, item) pair(s) appear more than once" in proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["ratings.csv"]


def test_bce_job_on_the_course_binary_table(spark, tmp_path):
    from test_bce import course_labels

    rows = course_labels()
    (tmp_path / "labels.csv").write_text("who,movie,engaged\n" + "".join(f"{u},{m},{v}\n" for u, m, v in rows))
    df = spark.createDataFrame(
        [(u, m, 1.0 if v in ("1", "true") else 0.0) for u, m, v in rows], "user string, item string, rating double"
    )
    # The first split seed whose test part holds both labels, so AUC is defined.
    seed = next(
        s
        for s in range(100)
        if {r.rating for r in split_ratings(df, test_fraction=0.3, seed=s)[1].collect()} == {0.0, 1.0}
    )
    out = tmp_path / "out"
    # In this process, on the shared session, as the mse job above.
    code = train_job.main([
        "--set", f"input.path={tmp_path / 'labels.csv'}", "--set", "input.user_col=who",
        "--set", "input.item_col=movie", "--set", "input.rating_col=engaged", "--set", "model.loss=bce",
        "--set", "model.rank=2",
        "--set", "model.reg=0.5", "--set", "model.max_iter=5", "--set", "split.test_fraction=0.3",
        "--set", f"split.seed={seed}", "--set", f"output.path={out}", "--set", "output.top_n=3",
        "--set", "checkpoint.interval=0", "--set", "compare.als=true", "--set", "compare.als_reg_grid=[0.1]",
        "--set", "compare.als_alpha_grid=[1.0]", "--set", "compare.als_max_iter=5", "--set", "compare.als_num_blocks=2",
        "--set", "spark.shuffle_partitions=4",  # the shared session's own (conftest)
    ])  # fmt: skip
    assert code == 0
    recs = spark.read.parquet(str(out / "recommendations")).collect()
    train, _ = split_ratings(df, test_fraction=0.3, seed=seed)
    labelled = {(r.user, r.item) for r in train.collect()}
    assert recs and all(0.0 < r.score < 1.0 for r in recs)
    assert not {(r.who, r.movie) for r in recs} & labelled
    # The exposure model (the bce default): the score is P(exposed)·P(like | shown), both given.
    assert list(recs[0].asDict()) == ["who", "movie", "rank", "score", "p_like", "p_exposed"]
    assert all(r.score == pytest.approx(r.p_like * r.p_exposed, rel=1e-9) for r in recs)
    assert (out / "model" / "exposure" / "metadata").is_dir()
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test"]["score_auc"] <= 1.0
    assert m["loss"] == "bce"
    # The exposure part's λ (model.exposure_reg = "auto"): the best point of the path that chose it.
    exposure = m["model"]["exposure"]
    assert exposure["reg"] == exposure["reg_search"]["reg"]
    assert exposure["reg_search"]["ndcg"] == max(p["ndcg"] for p in exposure["reg_path"])
    pointwise = {"logloss", "auc"}
    ranking = {"precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k"}
    assert pointwise <= m["train"].keys() and pointwise | ranking <= m["test"].keys()
    assert 0.0 <= m["test"]["auc"] <= 1.0 and m["test"]["logloss"] > 0 and m["test"]["k"] == 3
    assert pointwise | ranking <= m["als"]["explicit"]["test"].keys() and m["als"]["explicit"]["test"]["clip_eps"] > 0
    assert {"auc"} | ranking <= m["als"]["implicit"]["test"].keys()
    assert m["als"]["implicit"]["test"]["logloss"] is None and m["als"]["implicit"]["params"]["alpha"] == 1.0
    offsets = spark.read.parquet(str(out / "model" / "item_stats"))
    assert offsets.columns == ["movie", "positives", "labelled", "positive_rate", "item_offset"]
