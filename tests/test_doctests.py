"""The docstring examples run, against the test session (as `spark`)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["cfspark.ml.estimator", "cfspark.ml.model"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(spark, name):
    result = doctest.testmod(importlib.import_module(name), extraglobs={"spark": spark}, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
