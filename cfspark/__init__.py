"""cfspark: collaborative filtering at cluster scale on Apache Spark.

The public face: the estimator, its models and the course's Params. The folders below are
the layers, low to high (a module imports only from its own layer or lower ones, which
tests/test_layering.py checks): core and kernels; data and blocks; train; fit; ml; app and bench.
"""

import sys

from cfspark.ml import estimator as _estimator
from cfspark.ml import model as _model
from cfspark.ml.estimator import CollaborativeFilter
from cfspark.ml.exposure_model import ExposureAwareModel
from cfspark.ml.model import CFModel
from cfspark.ml.params import COURSE_PARAMS

__version__ = "0.1.0"

# Saved estimators and pipelines name their classes by module (pyspark.ml's metadata
# "class"), and those saved before the modules moved into ml/ name the old ones.
sys.modules.setdefault("cfspark.estimator", _estimator)
sys.modules.setdefault("cfspark.model", _model)

__all__ = ["COURSE_PARAMS", "CFModel", "CollaborativeFilter", "ExposureAwareModel", "__version__"]
