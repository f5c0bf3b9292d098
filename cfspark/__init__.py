"""cfspark: collaborative filtering at cluster scale on Apache Spark.

The public face: the estimator, its models and the course's Params. The folders below are
the layers, low to high (a module imports only from its own layer or lower ones, which
tests/test_layering.py checks): core and kernels; data and blocks; train; fit; ml; app and bench.

The face is imported on first use, not with the package. A Python worker that runs a
half-step imports cfspark.train or cfspark.kernels, and with them this file: importing the
face here pulled in pyspark.ml, and pandas with it: each fresh worker's import took 1.4 s,
now about 0.5 s (docs/benchmarks.md, "A package root that workers import for nothing").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Each public name and the module that defines it.
_FACE = {
    "CollaborativeFilter": "cfspark.ml.estimator",
    "CFModel": "cfspark.ml.model",
    "ExposureAwareModel": "cfspark.ml.exposure_model",
    "COURSE_PARAMS": "cfspark.ml.params",
}

__all__ = ["COURSE_PARAMS", "CFModel", "CollaborativeFilter", "ExposureAwareModel", "__version__"]


def __getattr__(name: str):
    if name in _FACE:
        value = getattr(importlib.import_module(_FACE[name]), name)
        globals()[name] = value  # found once; later lookups do not come here
        return value
    raise AttributeError(f"module 'cfspark' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACE})


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Saved estimators and pipelines name their classes by module (pyspark.ml's metadata
    "class"), and those saved before the modules moved into ml/ name cfspark.estimator and
    cfspark.model. Importing either gives the module under ml/ itself, when it is imported."""

    MOVED = {"cfspark.estimator": "cfspark.ml.estimator", "cfspark.model": "cfspark.ml.model"}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.MOVED else None

    def create_module(self, spec):
        return importlib.import_module(self.MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The module is the one under ml/, already run."""


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
