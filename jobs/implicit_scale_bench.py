"""spark-submit entry point: the bce default's fit time on positive-only counts against implicit ALS.

    spark-submit jobs/implicit_scale_bench.py [--sizes 1 5] [--out out.json]

The job is cfspark.bench.implicit_scale.main (docs/benchmarks.md).
"""

import sys

from cfspark.bench.implicit_scale import main

if __name__ == "__main__":
    sys.exit(main())
