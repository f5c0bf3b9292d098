"""Write synthetic ratings from a planted model to Parquet.

cfspark-generate --output data/synth-1m --users 50000 --items 10000 --ratings 1000000
spark-submit jobs/generate.py --output data/synth-1m --users 50000 --items 10000 --ratings 1000000
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from cfspark.app.cli import exit_code, job_session
from cfspark.data.synthetic import SyntheticSpec, write_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to write ratings/, planted_*/ and spec.json into")
    for field in dataclasses.fields(SyntheticSpec):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help="binary 0/1 labels instead of ratings")
        else:
            kind = int if field.type in ("int", int) else float
            parser.add_argument(flag, type=kind, default=field.default, help=f"default {field.default}")
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    spec = SyntheticSpec(**args)

    def body() -> int:
        began = time.perf_counter()
        write_synthetic(job_session("cfspark-generate"), spec, output)
        print(f"cfspark: wrote {spec.ratings} synthetic ratings to {output} in {time.perf_counter() - began:.1f} s")
        return 0

    return exit_code(body)
