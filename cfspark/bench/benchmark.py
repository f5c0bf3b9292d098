"""cfspark against Spark ALS in one session on one split: accuracy, ranking, time, memory.

    cfspark-benchmark --set input.path=... --set output.path=bench/ [--set key=value ...]
    spark-submit jobs/benchmark.py --set input.path=... --set output.path=bench/ [...]

Takes the same --config/--set keys as cfspark-train (input, split, model, compare), and
writes benchmark.json, benchmark.md and, if matplotlib is installed, benchmark.png.

Both sides are measured in the same run, so the ratios hold on a noisy shared machine.
cfspark's time-to-accuracy curve comes from its one timed fit: the test metric is taken
after every iteration, off the clock. ALS has no such hook, so its curve refits ALS with
growing iteration counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from pyspark.sql import DataFrame, SparkSession

from cfspark.app.cli import config_parser, exit_code, job_config, job_logging, job_session
from cfspark.app.config import Config
from cfspark.app.run import Run, warm_up_sample
from cfspark.bench.compare import compare_als
from cfspark.bench.plot import plot_curves
from cfspark.data.metrics import pointwise_metrics

PRIMARY = {"mse": "rmse", "bce": "auc"}


def tree_peak_rss(root: int) -> dict:
    """Peak resident memory (VmHWM, MiB) of the JVM and of the Python workers under it.

    From pyspark the JVM is a child of this process; under spark-submit it is the parent.
    """
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as f:
                names[int(entry)] = f.read().strip()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))

    def hwm(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    jvms = [p for p in children.get(root, []) if names.get(p) == "java"]
    if not jvms and names.get(os.getppid()) == "java":
        jvms = [os.getppid()]
    workers, stack = [], [c for j in jvms for c in children.get(j, []) if c != root]
    while stack:
        pid = stack.pop()
        workers.append(pid)
        stack.extend(children.get(pid, []))
    return {
        "driver_python_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "jvm_mib": round(max((hwm(p) for p in jvms), default=0.0), 1),
        "python_workers_mib": round(sum(hwm(p) for p in workers), 1),
        "python_workers": len(workers),
        "note": "local mode: the JVM is driver and executor; worker peaks are summed over live workers",
    }


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - began, 3)


def _warm_up(estimator, train: DataFrame, train_count: int, cfg: Config) -> None:
    """Two short untimed fits and recommendations of each side on a sample of train.

    Whichever side ran first would otherwise also pay for JIT compilation of the JVM's
    code paths and for starting Python workers and importing numpy, so both timed fits
    start warm instead.
    """
    sample = warm_up_sample(train, train_count)
    model = estimator.copy({estimator.maxIter: 2}).fit_validated(sample)
    model.recommend_canonical(cfg["output"]["top_n"]).count()
    compare_als(
        sample, sample, model.item_stats, loss=model.getLoss(), rank=estimator.getRank(),
        reg_grid=cfg["compare"]["als_reg_grid"][:1], max_iter=2, seed=cfg["model"]["seed"], relevant=None,
        k=cfg["output"]["top_n"], alpha_grid=cfg["compare"]["als_alpha_grid"][:1], time_recommend=True,
        num_blocks=cfg["compare"]["als_num_blocks"],
    )  # fmt: skip
    model.unpersist()
    sample.unpersist()


def run_benchmark(spark: SparkSession, cfg: Config, *, als_curve_iters: list[int]) -> dict:
    """Fit both sides on the same split and return the benchmark record."""
    loss = cfg["model"]["loss"]
    with Run(spark, cfg) as run:
        run.read()
        train, test = run.split()
        estimator = run.estimator().setCheckpointDir("")
        _warm_up(estimator, train, run.counts["train"], cfg)

        metric = PRIMARY[loss]
        off_clock = []

        def measure(live) -> dict:
            began = time.perf_counter()
            value = pointwise_metrics(live, test)[metric]
            off_clock.append(time.perf_counter() - began)
            return {metric: value}

        model, wall = _timed(lambda: run.fit(estimator, on_iteration=measure))
        fit_seconds = round(wall - sum(off_clock), 3)
        recs = run.recommend(model)
        recommend_seconds = _timed(recs.count)[1]  # fills the cache: the whole top-N computation
        relevant = run.relevant(model)
        ours = {
            "test": run.evaluate(model, recs, relevant)["test"],
            "fit_seconds": fit_seconds,
            "recommend_all_seconds": recommend_seconds,
            "iterations": model.history,
            "params": {
                **{f: estimator.getOrDefault(f) for f in ("rank", "maxIter", "regParam", "optimizer", "innerSteps")},
                "numUserBlocks": model.summary["num_user_blocks"],
                "numItemBlocks": model.summary["num_item_blocks"],
                "oneTask": bool(model.summary.get("one_task")),
            },
        }
        als = run.compare(model, relevant, time_recommend=True)
        # A one-task fit has no model between iterations: its curve is its last point.
        curve = [
            {"iterations": h["iteration"], "fit_seconds": h["elapsed"], metric: h[metric]}
            for h in model.history
            if metric in h
        ]
        best = als if loss == "mse" else als["explicit"]
        als_curve = []
        for iters in als_curve_iters:
            point = run.compare(model, None, reg_grid=[best["params"]["regParam"]], max_iter=iters, alpha_grid=())
            point = point if loss == "mse" else point["explicit"]
            als_curve.append({"iterations": iters, "fit_seconds": point["fit_seconds"], metric: point["test"][metric]})
        return {
            "loss": loss,
            "counts": {k: run.counts[k] for k in ("ratings", "train", "test")},
            "cfspark": {**ours, "curve": curve},
            "als": {**als, "curve": als_curve},
            "memory": tree_peak_rss(os.getpid()),
            "spark_version": spark.version,
        }


def ratio_table(record: dict) -> str:
    """The Markdown table of one benchmark record: cfspark beside ALS, and their ratio; for
    bce beside explicit ALS on the labels and implicit ALS on the positives, each with its ratio."""
    loss, c = record["loss"], record["cfspark"]
    if loss == "mse":
        sides = [("ALS", record["als"])]
    else:
        sides = [(f"ALS {kind}", record["als"][kind]) for kind in ("explicit", "implicit") if record["als"][kind]]
    rows = (
        [("rmse", "test RMSE"), ("mae", "test MAE")]
        if loss == "mse"
        else [("logloss", "test logloss"), ("auc", "test AUC")]
    )
    rows += [("precision_at_k", "P@10"), ("ndcg_at_k", "NDCG@10"), ("map_at_k", "MAP@10")]
    rows += [("fit_seconds", "fit seconds"), ("recommend_all_seconds", "top-10 for all users, seconds")]
    header = "| metric | cfspark |" + "".join(f" Spark {name} | cfspark / {name} |" for name, _ in sides)
    lines = [header, "|" + " --- |" * (2 + 2 * len(sides))]

    def fmt(x, digits):
        return "n/a" if x is None else f"{x:.{digits}f}"

    for key, label in rows:
        seconds = key.endswith("seconds")
        a = c[key] if seconds else c["test"].get(key)
        cells = [fmt(a, 1 if seconds else 4)]
        for _, side in sides:
            b = side.get(key) if seconds else side["test"].get(key)
            cells += [fmt(b, 1 if seconds else 4), "n/a" if a is None or not b else f"{a / b:.{2 if seconds else 3}f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _iteration_counts(text: str) -> list[int]:
    """--als-curve's comma-separated iteration counts, each at least 1, or none for ""
    (argparse's one line and exit code 2 if not)."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of iteration counts") from None
    if counts and min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: each iteration count must be at least 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--als-curve", default="2,5,10", type=_iteration_counts,
                        help="ALS iteration counts for its time-to-accuracy curve")  # fmt: skip
    args = parser.parse_args(argv)
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        out = cfg["output"]["path"]
        spark = job_session("cfspark-benchmark", cfg, als=True)
        record = run_benchmark(spark, cfg, als_curve_iters=args.als_curve)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "benchmark.json"), "w") as f:
            json.dump({**record, "config": cfg}, f, indent=2, default=str)
        table = ratio_table(record)
        with open(os.path.join(out, "benchmark.md"), "w") as f:
            f.write(table + "\n")
        plot_curves(record, os.path.join(out, "benchmark.png"))
        print(table)
        return 0

    return exit_code(body)
