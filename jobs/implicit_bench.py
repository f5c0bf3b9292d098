"""spark-submit entry point: positive-only counts, the all-items (and sampled) models against implicit ALS.

    spark-submit jobs/implicit_bench.py [ratings.csv] [out.json] [--sampled]

The job is cfspark.bench.implicit.main; the console script cfspark-implicit-bench runs the same
(docs/binary-labels.md#the-positive-only-model).
"""

import sys

from cfspark.bench.implicit import main

if __name__ == "__main__":
    sys.exit(main())
