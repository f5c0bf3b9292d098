"""spark-submit entry point: train cfspark and write recommendations, model and metrics.

    spark-submit jobs/train.py [--config conf/default.toml] [--set section.key=value ...]

The job is cfspark.app.train.main; the console script cfspark-train runs the same.
cfspark must be importable by the driver: installed in its Python (pip install -e .
or the wheel), or shipped with --py-files as the zip that scripts/package.sh builds.
"""

import sys

from cfspark.app.train import main

if __name__ == "__main__":
    sys.exit(main())
