"""cfspark against Spark ALS on one split, in one session.

    cfspark-benchmark --set input.path=... --set output.path=bench/ [--set key=value ...]
    spark-submit jobs/benchmark.py --set input.path=... --set output.path=bench/ [...]

Takes the same --config/--set keys as cfspark-train (input, split, model, compare), and
writes benchmark.json, benchmark.md and, if matplotlib is installed, benchmark.png.
"""

from __future__ import annotations

import json
import os

from cfspark.cli import config_parser, exit_code, job_config, job_logging, job_session


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--als-curve", default="2,5,10", help="ALS iteration counts for its time-to-accuracy curve")
    args = parser.parse_args(argv)
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        from cfspark.benchmark import ratio_table, run_benchmark
        from cfspark.plot import plot_curves

        out = cfg["output"]["path"]
        spark = job_session("cfspark-benchmark", cfg, als=True)
        record = run_benchmark(spark, cfg, als_curve_iters=[int(x) for x in args.als_curve.split(",") if x])
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
