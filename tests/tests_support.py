"""Paths and helpers shared by the tests."""

import os
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The JVMs the tests start compile with C1 only: they run many small, different jobs, and
# C2's compiler threads took one of the machine's 2 cores (docs/testing.md). It changes no
# result. CFSPARK_TEST_JIT=-XX:TieredStopAtLevel=4 (the JVM's default) measures against C2.
C1_ONLY = os.environ.get("CFSPARK_TEST_JIT", "-XX:TieredStopAtLevel=1")


def file_bytes(folder) -> dict[str, bytes]:
    """Every file under folder, by its path relative to folder, with its contents."""
    found = {}
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                found[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
    return found


def assert_bracketed(points: list[dict], reg: float, metric: str, resolution: float) -> None:
    """reg is the best of the search's points (dicts with "reg" and metric) and is bracketed:
    a worse point on each side, or, at an end of the points, a neighbour within resolution of
    it (a flat end, where kernels/bracket.py stops widening)."""
    by_reg = sorted(points, key=lambda p: p["reg"])
    scores = [p[metric] for p in by_reg]
    assert len(by_reg) > 1, by_reg
    j = min(range(len(by_reg)), key=lambda k: abs(by_reg[k]["reg"] / reg - 1.0))
    assert abs(by_reg[j]["reg"] / reg - 1.0) < 1e-9 and scores[j] == min(scores), (reg, by_reg)
    if 0 < j < len(by_reg) - 1:
        # Ties go to the weaker λ (kernels/bracket.py), so a stronger neighbour may tie.
        assert scores[j - 1] > scores[j] <= scores[j + 1], by_reg
    else:
        inner = scores[1] if j == 0 else scores[-2]
        assert scores[j] < inner <= scores[j] * (1 + resolution), by_reg


def assert_same_path(a: list[dict], b: list[dict], metric: str = "rmse") -> None:
    """Two searches' paths walked alike: the same points (λ, iterations, rank, λ_b) and their
    scores equal up to the order of float sums (a global mean taken from a task's rows or
    from Spark's sums differs in its last bits)."""
    assert [{k: v for k, v in p.items() if k != metric} for p in a] == [
        {k: v for k, v in p.items() if k != metric} for p in b
    ]
    assert [p[metric] for p in a] == pytest.approx([p[metric] for p in b], rel=1e-12)


def jobs_of(spark, run) -> tuple[object, int]:
    """run()'s result and the number of Spark jobs it started."""
    sc = spark.sparkContext  # a test may count jobs; the library uses the DataFrame API alone
    group = f"counted-{uuid.uuid4().hex}"  # the tracker keeps a group's finished jobs: one group per call
    sc.setJobGroup(group, "jobs counted by a test")
    try:
        result = run()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    # The tracker learns of jobs from the listener bus, which lags behind them under load.
    sc._jsc.sc().listenerBus().waitUntilEmpty(60_000)
    return result, len(sc.statusTracker().getJobIdsForGroup(group))
