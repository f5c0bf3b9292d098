"""spark-submit entry point: cfspark against Spark ALS on one split, in one session.

    spark-submit jobs/benchmark.py --set input.path=... --set output.path=bench/ [--set key=value ...]

The job is cfspark.bench.benchmark.main; the console script cfspark-benchmark runs the same.
cfspark must be importable by the driver: installed in its Python (pip install -e .
or the wheel), or shipped with --py-files as the zip that scripts/package.sh builds.
"""

import sys

from cfspark.bench.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
