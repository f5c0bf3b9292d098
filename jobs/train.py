"""spark-submit entry point: train cfspark and write recommendations, model and metrics.

spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cfspark.config import load_config  # noqa: E402
from cfspark.errors import CfsparkError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file whose keys override conf/default.toml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set model.rank=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    logging.getLogger("cfspark").setLevel(logging.INFO)
    try:
        cfg = load_config(args.config, args.overrides)
        # Executors run the same interpreter as this driver unless told otherwise.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        from cfspark.job import run, summary

        spark = (
            SparkSession.builder.appName("cfspark-train")
            .config("spark.sql.shuffle.partitions", str(cfg["spark"]["shuffle_partitions"]))
            .config("spark.log.level", "WARN")
            .getOrCreate()
        )
        metrics = run(spark, cfg)
        print(summary(metrics, cfg["output"]["path"]))
        return 0
    except CfsparkError as e:
        print(f"cfspark: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
