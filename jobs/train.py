"""spark-submit entry point: train cfspark and write recommendations, model and metrics.

spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]
python jobs/train.py --remote sc://host:15002 [...]   (through Spark Connect)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cfspark.cli import config_parser, exit_code, job_config, job_logging, job_session  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--remote", metavar="sc://HOST:PORT", help="run through Spark Connect (same as spark.remote)")
    args = parser.parse_args(argv)
    if args.remote:
        args.overrides.append(f"spark.remote={args.remote}")
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
