"""spark-submit entry point: write synthetic ratings from a planted model to Parquet.

    spark-submit jobs/generate.py --output data/synth-1m --users 50000 --items 10000 --ratings 1000000

The job is cfspark.app.generate.main; the console script cfspark-generate runs the same.
cfspark must be importable by the driver: installed in its Python (pip install -e .
or the wheel), or shipped with --py-files as the zip that scripts/package.sh builds.
"""

import sys

from cfspark.app.generate import main

if __name__ == "__main__":
    sys.exit(main())
