"""Where a fit's time goes, per phase: JVM task time, shuffle, GC, and Python kernels.

    cfspark-profile --set input.path=... --set output.path=prof/ [--set key=value ...]
    spark-submit jobs/profile_fit.py --set input.path=... --set output.path=prof/ [...]

Takes the same --config/--set keys as cfspark-train and needs Spark's UI (on by default),
whose monitoring API holds the task metrics. Writes profile.json and profile.md to
output.path.

The trainer tags its Spark jobs by phase (SparkSession.addTag, which works over Spark
Connect too). Afterwards, Spark's monitoring REST API on the driver's UI gives every
stage's task metrics, and the jobs' tags say which phase a stage belongs to. The
Python side (numpy kernels, Arrow cells decoded and encoded) is timed inside the tasks
and comes from the fit's history. Each setup phase's wall seconds come from its log line.

With compare.als = true, Spark ALS (the first regParam of compare.als_reg_grid,
compare.als_max_iter iterations, the model's rank) is fitted on the same training split
in the same session after cfspark, as the yardstick: the profile then gives setup and
the whole fit as ratios of ALS's fit.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.app.cli import config_parser, exit_code, job_config, job_logging, job_session
from cfspark.app.run import Run, warm_up_sample
from cfspark.bench.benchmark import tree_peak_rss
from cfspark.core.errors import CfsparkError
from cfspark.core.phases import PHASES, SETUP, TAG_PREFIX
from cfspark.core.schema import ITEM, RATING, USER


def _get(url: str) -> list | dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def ui_api(spark: SparkSession, ports: range = range(4040, 4060)) -> str | None:
    """The REST API root of this application's UI, or None when the UI is off."""
    if spark.conf.get("spark.ui.enabled", "true") == "false":
        return None
    app_id = spark.conf.get("spark.app.id")
    for port in ports:
        root = f"http://localhost:{port}/api/v1/applications/{app_id}"
        try:
            _get(f"{root}/environment")
            return root
        except OSError:
            continue
    return None


def _phase_of(tags: list[str]) -> str | None:
    # Classic Spark prefixes a session's tags with the session's id.
    for name in PHASES:
        if any(t.endswith(TAG_PREFIX + name) for t in tags):
            return name
    return None


# Our name for a summed stage metric: (the REST API's field, its units per second or MiB).
_STAGE_METRICS = {
    "task_seconds": ("executorRunTime", 1e3),
    "cpu_seconds": ("executorCpuTime", 1e9),
    "gc_seconds": ("jvmGcTime", 1e3),
    "deserialize_seconds": ("executorDeserializeTime", 1e3),
    "shuffle_read_mib": ("shuffleReadBytes", 2**20),
    "shuffle_write_mib": ("shuffleWriteBytes", 2**20),
    "shuffle_fetch_wait_seconds": ("shuffleFetchWaitTime", 1e3),
    "shuffle_write_seconds": ("shuffleWriteTime", 1e9),
}


def last_job(api_root: str) -> int:
    return max((job["jobId"] for job in _get(f"{api_root}/jobs")), default=-1)


def stage_breakdown(api_root: str, *, after_job: int = -1) -> dict[str, dict]:
    """Summed task metrics of the completed stages of each tagged phase (seconds, MiB),
    over the jobs numbered after after_job."""
    stage_phase, stage_job = {}, {}
    jobs = dict.fromkeys(PHASES, 0)
    for job in _get(f"{api_root}/jobs"):
        name = _phase_of(job.get("jobTags", [])) if job["jobId"] > after_job else None
        if name:
            jobs[name] += 1
            stage_phase.update({s: name for s in job["stageIds"]})
            stage_job.update({s: job["jobId"] for s in job["stageIds"]})
    totals = {name: {"jobs": jobs[name], "stages": 0, "tasks": 0, **dict.fromkeys(_STAGE_METRICS, 0.0)}
              for name in PHASES}  # fmt: skip
    heaviest: dict[int, dict] = {}  # per job of a half-step phase: its stage with the most task time
    for stage in _get(f"{api_root}/stages?status=complete"):
        name = stage_phase.get(stage["stageId"])
        if name is None:
            continue
        t = totals[name]
        t["stages"] += 1
        t["tasks"] += stage["numCompleteTasks"]
        for key, (field, per_unit) in _STAGE_METRICS.items():
            t[key] += stage[field] / per_unit
        job = stage_job[stage["stageId"]]
        if name in SPREAD_PHASES and stage["executorRunTime"] > heaviest.get(job, {}).get("executorRunTime", -1):
            heaviest[job] = stage
    spreads: dict[str, list[float | None]] = {}
    for stage in heaviest.values():  # a half-step's cogroup stage, where the blocks' numpy runs
        spreads.setdefault(stage_phase[stage["stageId"]], []).append(_task_spread(api_root, stage))
    out = {name: {k: round(v, 3) for k, v in t.items()} for name, t in totals.items()}
    for name, values in spreads.items():
        values = sorted(v for v in values if v is not None)
        if values:
            out[name]["task_spread_median"] = round(values[len(values) // 2], 2)  # the upper median
            out[name]["task_spread_worst"] = round(values[-1], 2)
    return out


# Phases whose tasks are blocks: there, a slow task is a heavy block (skew) that every
# half-step waits for, so the profile reports how far the slowest task is from the median.
SPREAD_PHASES = ("user-steps", "item-steps")


def _task_spread(api_root: str, stage: dict) -> float | None:
    """The stage's slowest task time over its median task time (1.0 = even), over the
    tasks that read records: a shuffle into more partitions than blocks leaves empty ones,
    whose near-zero times would make any stage look skewed."""
    tasks = _get(f"{api_root}/stages/{stage['stageId']}/{stage.get('attemptId', 0)}/taskList?length=100000")
    times = sorted(
        t["taskMetrics"]["executorRunTime"]
        for t in tasks
        if t.get("taskMetrics") and _records_read(t["taskMetrics"]) > 0
    )
    if len(times) < 2 or times[(len(times) - 1) // 2] <= 0:
        return None
    return times[-1] / times[(len(times) - 1) // 2]  # the lower median


def _records_read(metrics: dict) -> int:
    return metrics.get("inputMetrics", {}).get("recordsRead", 0) + metrics.get("shuffleReadMetrics", {}).get(
        "recordsRead", 0
    )


def _spread(b: dict) -> str:
    if "task_spread_median" not in b:
        return ""
    return f"{b['task_spread_median']:.2f} ×, {b['task_spread_worst']:.2f} ×"


def profile_table(breakdown: dict[str, dict], history: list[dict], wall: dict[str, float]) -> str:
    """Markdown: per phase, wall seconds, task seconds and what the tasks spent them on."""
    python = {
        "user-steps": sum(h.get("user_kernel_seconds", 0.0) for h in history),
        "item-steps": sum(h.get("item_kernel_seconds", 0.0) for h in history),
    }
    if "one-task" in wall:  # the loop ran inside one task: its kernels are that phase's
        python = {"one-task": python.pop("user-steps") + python.pop("item-steps")}
    codec = {
        "user-steps": sum(h.get("user_codec_seconds", 0.0) for h in history),
        "item-steps": sum(h.get("item_codec_seconds", 0.0) for h in history),
    }
    lines = [
        "| phase | wall s | task s | numpy kernels s | Arrow cells ↔ numpy s | JVM and Arrow transfer s"
        " | of which GC s | shuffle read MiB | shuffle write MiB | fetch wait s | shuffle write s"
        " | slowest / median task (median stage, worst stage) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in PHASES:
        b = breakdown[name]
        k, c = python.get(name, 0.0), codec.get(name, 0.0)
        rest = b["task_seconds"] - k - c
        seconds = f"{wall[name]:.1f}" if name in wall else ("(setup)" if name in SETUP else "")
        lines.append(
            f"| {name} | {seconds} | {b['task_seconds']:.1f} | {k:.1f} | {c:.1f} | {rest:.1f}"
            f" | {b['gc_seconds']:.1f} | {b['shuffle_read_mib']:.0f} | {b['shuffle_write_mib']:.0f}"
            f" | {b['shuffle_fetch_wait_seconds']:.1f} | {b['shuffle_write_seconds']:.1f} | {_spread(b)} |"
        )
    lines.append(f"\nSetup, all four phases: {wall['setup']:.1f} s wall.")
    if all("jobs" in breakdown[name] for name in PHASES):
        counts = ", ".join(f"{name} {breakdown[name]['jobs']}" for name in PHASES if breakdown[name]["jobs"])
        lines.append(f"Spark jobs per phase: {counts}.")
    return "\n".join(lines)


class _SetupLog(logging.Handler):
    """Collects the seconds that each setup phase logs ("setup: %s took %.2f s")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "setup: %s took %.2f s" and isinstance(record.args, tuple):
            name, seconds = record.args
            self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)


@contextmanager
def setup_phases() -> Iterator[dict[str, float]]:
    """Inside the block, the wall seconds of each setup phase, summed per phase."""
    logger, handler = logging.getLogger("cfspark"), _SetupLog()
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler.seconds
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def als_fit_seconds(train: DataFrame, *, rank: int, reg: float, max_iter: int, seed: int) -> float:
    """Seconds of Spark ALS's fit on train (its ids as ints, cached before the clock starts)."""
    from pyspark.ml.recommendation import ALS

    def as_int(name: str):
        col = F.col(name)
        if isinstance(train.schema[name].dataType, T.IntegralType):
            return col.cast("int").alias(name)
        return (F.dense_rank().over(Window.orderBy(name)) - 1).alias(name)

    data = train.select(as_int(USER), as_int(ITEM), F.col(RATING).cast("float")).cache()
    data.count()
    als = ALS(rank=rank, maxIter=max_iter, regParam=reg, userCol=USER, itemCol=ITEM, ratingCol=RATING, seed=seed)
    began = time.perf_counter()
    als.fit(data)  # ALS materialises its factors inside fit
    seconds = time.perf_counter() - began
    data.unpersist()
    return seconds


_BLOCK_COUNTS = (("numUserBlocks", "num_user_blocks"), ("numItemBlocks", "num_item_blocks"))


def profile_fit(spark: SparkSession, cfg: dict) -> dict:
    """Fit once on the configured split and return where the time went, per phase."""
    api = ui_api(spark)
    if api is None:
        raise CfsparkError("the profile reads Spark's monitoring API: run with spark.ui.enabled=true")
    with Run(spark, cfg) as run:
        run.read()
        train, _ = run.split()
        estimator = run.estimator().setCheckpointDir("")
        # Untimed: starts the Python workers and compiles the JVM's hot paths, as a long job would have.
        warm_up = warm_up_sample(train, run.counts["train"])
        estimator.copy({estimator.maxIter: 2}).fit_validated(warm_up).unpersist()
        warm_up.unpersist()
        after_job = last_job(api)
        began = time.perf_counter()
        with setup_phases() as setup_wall:
            model = run.fit(estimator)
        fit_seconds = time.perf_counter() - began
        history = model.history
        wall = {"setup": model.summary["setup_seconds"], **{k: setup_wall[k] for k in SETUP if k in setup_wall}}
        if model.summary.get("one_task"):
            wall["one-task"] = sum(h["seconds"] for h in history)
        else:
            wall["user-steps"] = sum(h["user_seconds"] for h in history)
            wall["item-steps"] = sum(h["seconds"] - h["user_seconds"] for h in history)
        breakdown = stage_breakdown(api, after_job=after_job)
        record = {
            "fit_seconds": round(fit_seconds, 3),
            "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
            "stages": breakdown,
            "iterations": history,
            "table": profile_table(breakdown, history, wall),
            "params": {name: model.summary[key] for name, key in _BLOCK_COUNTS},
        }
        compare = cfg["compare"]
        if compare["als"]:
            seconds = als_fit_seconds(
                train, rank=cfg["model"]["rank"], reg=float(compare["als_reg_grid"][0]),
                max_iter=compare["als_max_iter"], seed=cfg["model"]["seed"],
            )  # fmt: skip
            record["als"] = {
                "fit_seconds": round(seconds, 3),
                "regParam": float(compare["als_reg_grid"][0]),
                "maxIter": compare["als_max_iter"],
                "blas": "Java (the JVM has no native BLAS here)",
                "setup_ratio": round(wall["setup"] / seconds, 3),
                "fit_ratio": round(fit_seconds / seconds, 3),
            }
            record["table"] += (
                f"\nSpark ALS fit ({compare['als_max_iter']} iterations, Java BLAS): {seconds:.1f} s; "
                f"cfspark setup {wall['setup'] / seconds:.2f} ×, whole fit {fit_seconds / seconds:.2f} × ALS's fit."
            )
        record["memory"] = tree_peak_rss(os.getpid())
        record["table"] += f"\nJVM peak resident memory (VmHWM): {record['memory']['jvm_mib'] / 1024:.1f} GiB."
        model.unpersist()
        return record


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__).parse_args(argv)
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        record = profile_fit(job_session("cfspark-profile", cfg), cfg)
        out = cfg["output"]["path"]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "profile.json"), "w") as f:
            json.dump({**record, "config": cfg}, f, indent=2, default=str)
        with open(os.path.join(out, "profile.md"), "w") as f:
            f.write(record["table"] + "\n")
        print(f"fit {record['fit_seconds']:.1f} s, blocks {record['params']}")
        print(record["table"])
        return 0

    return exit_code(body)
