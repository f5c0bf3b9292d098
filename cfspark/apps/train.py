"""Train cfspark and write recommendations, model and metrics.

cfspark-train [--config conf/default.toml] [--set section.key=value ...]
spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]
cfspark-train --remote sc://host:15002 [...]   (through Spark Connect)
"""

from __future__ import annotations

from cfspark.cli import config_parser, exit_code, job_config, job_logging, job_session


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
