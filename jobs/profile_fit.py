"""spark-submit entry point: one fit, and where its time went per phase and stage.

    spark-submit jobs/profile_fit.py --set input.path=... --set output.path=prof/ [--set key=value ...]

The job is cfspark.bench.profile.main; the console script cfspark-profile runs the same.
cfspark must be importable by the driver: installed in its Python (pip install -e .
or the wheel), or shipped with --py-files as the zip that scripts/package.sh builds.
"""

import sys

from cfspark.bench.profile import main

if __name__ == "__main__":
    sys.exit(main())
