"""The train job: read → split → fit → evaluate → write, under output.path's lock.

    cfspark-train [--config conf/default.toml] [--set section.key=value ...]
    spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]
    cfspark-train --remote sc://host:15002 [...]   (through Spark Connect)

main parses the command line; run_job runs one Run (app/run.py) and returns its metrics.
"""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from cfspark.app.checks import check_sizes, check_warm_start
from cfspark.app.cli import config_parser, exit_code, job_config, job_logging, job_session
from cfspark.app.config import Config
from cfspark.app.guard import RunLock, remove_stale_staging
from cfspark.app.output import check_output, check_paths
from cfspark.app.run import Run

log = logging.getLogger("cfspark")


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--remote", metavar="sc://HOST:PORT", help="run through Spark Connect (same as spark.remote)")
    args = parser.parse_args(argv)
    if args.remote:
        args.overrides.append(f"spark.remote={args.remote}")
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        metrics = run_job(job_session("cfspark-train", cfg, als=cfg["compare"]["als"]), cfg)
        print(summary(metrics, cfg["output"]["path"]))
        return 0

    return exit_code(body)


def run_job(spark: SparkSession, cfg: Config) -> dict:
    """Run the whole job, holding output.path's lock; return the metrics written to metrics.json."""
    check_paths(cfg)
    check_warm_start(spark, cfg)
    locked = [("output.path", cfg["output"]["path"])]
    if cfg["checkpoint"]["dir"] and cfg["checkpoint"]["interval"] > 0:
        locked.append(("checkpoint.dir", cfg["checkpoint"]["dir"]))
    with RunLock(locked):
        remove_stale_staging(cfg["output"]["path"])
        return _run_locked(spark, cfg)


def _run_locked(spark: SparkSession, cfg: Config) -> dict:
    check_output(cfg)
    with Run(spark, cfg) as run:
        check_sizes(spark, cfg, run.read())
        run.split()
        model = run.fit()
        recs, relevant = run.recommend(model), run.relevant(model)
        metrics = run.evaluate(model, recs, relevant)
        if cfg["compare"]["als"]:
            metrics["als"] = run.compare(model, relevant)
        run.write(model, recs, metrics)
        return metrics


def summary(metrics: dict, out_path: str) -> str:
    """A few lines for the console."""
    c, t = metrics["counts"], metrics["test"]
    k = t.get("k")
    ranking = f"P@{k} {_fmt(t.get('precision_at_k'))}  NDCG@{k} {_fmt(t.get('ndcg_at_k'))}"
    pointwise = ("rmse", "mae") if metrics["loss"] == "mse" else ("logloss", "auc")
    lines = [
        f"cfspark ({metrics['loss']}): {c['ratings']} rows ({c['train']} train, {c['test']} test), {c['users']} users, "
        f"{c['items']} items, {len(metrics['iterations'])} iterations, λ = {metrics['model']['reg']:g}",
        "  test " + "  ".join(f"{m} {_fmt(t[m])}" for m in pointwise) + "  " + ranking,
    ]
    als = metrics.get("als", {})
    for name, fit in [("Spark ALS", als)] if "params" in als else [(f"Spark ALS {n}", r) for n, r in als.items()]:
        a = fit["test"]
        lines.append(
            f"  {name}: test "
            + "  ".join(f"{m} {_fmt(a.get(m))}" for m in pointwise)
            + f"  P@{k} {_fmt(a.get('precision_at_k'))}  NDCG@{k} {_fmt(a.get('ndcg_at_k'))}"
            + f"  (fit {fit['fit_seconds']:.1f} s)"
        )
    lines.append(f"  fit {metrics['timings']['fit']:.1f} s; results in {out_path}")
    if metrics["loss"] == "mse" and "params" in als and t["rmse"] and als["test"]["rmse"]:
        ours, theirs = t["rmse"], als["test"]["rmse"]
        verdict = "cfspark wins" if ours <= theirs else "Spark ALS wins"
        lines.append(
            f"  {verdict} on test RMSE: {ours:.4f} against {theirs:.4f} ({ours / theirs:.3f} ×), ALS's best of "
            f"regParam {als['params']['regParam']:g} over {len(als['grid'])} tried on the test split"
        )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


__all__ = ["main", "run_job", "summary"]
