"""cfspark: collaborative filtering at cluster scale on Apache Spark."""

from cfspark.estimator import CollaborativeFilter
from cfspark.model import CFModel

__version__ = "0.1.0"

__all__ = ["CFModel", "CollaborativeFilter", "__version__"]
