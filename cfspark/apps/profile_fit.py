"""One fit, and where its time went per phase and stage.

    cfspark-profile --set input.path=... --set output.path=prof/ [--set key=value ...]
    spark-submit jobs/profile_fit.py --set input.path=... --set output.path=prof/ [...]

Takes the same --config/--set keys as cfspark-train and needs Spark's UI (on by default),
whose monitoring API holds the task metrics. Writes profile.json and profile.md to
output.path.
"""

from __future__ import annotations

import json
import os

from cfspark.cli import config_parser, exit_code, job_config, job_logging, job_session


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__).parse_args(argv)
    job_logging()

    def body() -> int:
        cfg = job_config(args)
        from cfspark.profile import profile_fit

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
