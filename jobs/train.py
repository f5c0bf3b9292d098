"""spark-submit entry point: train cfspark and write recommendations, model and metrics.

spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cfspark.cli import config_parser, exit_code, job_config, job_logging, job_session  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__).parse_args(argv)
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        from cfspark.job import run, summary

        metrics = run(job_session("cfspark-train", cfg, als=cfg["compare"]["als"]), cfg)
        print(summary(metrics, cfg["output"]["path"]))
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
