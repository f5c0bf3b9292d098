"""cfspark/ uses the DataFrame API only, so every part of it runs over Spark Connect.

A Connect client has no SparkContext, no JVM gateway and no RDDs: code that reaches for
them works under spark-submit and fails only for Connect users. This test reads the
source (names in code, not in comments or strings) so such a use fails here, at once,
instead of in a Connect session later.
"""

from __future__ import annotations

import io
import os
import tokenize

from tests_support import REPO

FORBIDDEN = {
    "sparkContext": "the SparkContext (no Connect equivalent)",
    "SparkContext": "the SparkContext (no Connect equivalent)",
    "_jvm": "the py4j JVM gateway",
    "_jsc": "the JVM SparkContext",
    "_jdf": "a DataFrame's JVM object",
    "_jsparkSession": "the JVM SparkSession",
    "rdd": "DataFrame.rdd",
    "RDD": "the RDD API",
    "parallelize": "SparkContext.parallelize",
}


def forbidden_names(source: str) -> list[tuple[int, str]]:
    return [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.NAME and tok.string in FORBIDDEN
    ]


def test_the_check_catches_each_kind_of_use():
    code = "a = spark.sparkContext\nb = df.rdd.map(f)\nc = spark._jvm.x\nd = sc.parallelize([1])\n# rdd in a comment\n"
    assert forbidden_names(code) == [(1, "sparkContext"), (2, "rdd"), (3, "_jvm"), (4, "parallelize")]
    assert forbidden_names('"""an RDD in a docstring"""\nx = "sparkContext"\n') == []


def test_cfspark_uses_no_spark_context_jvm_or_rdd():
    root = os.path.join(REPO, "cfspark")
    found = []
    checked = 0
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    for line, word in forbidden_names(f.read()):
                        found.append(f"{os.path.relpath(path, REPO)}:{line}: {word} ({FORBIDDEN[word]})")
                checked += 1
    assert checked >= 40
    assert found == []
