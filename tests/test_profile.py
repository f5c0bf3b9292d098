"""The per-phase profile: job tags, and stage metrics summed per phase from the monitoring API."""

from __future__ import annotations

import pytest

from cfspark.bench import profile
from cfspark.bench.profile import profile_table, stage_breakdown
from cfspark.core.errors import CfsparkError
from cfspark.core.phases import phase


def test_phase_tags_jobs_only_inside_the_block(spark):
    with phase(spark, "pack"):
        assert "cfspark-pack" in spark.getTags()
    assert "cfspark-pack" not in spark.getTags()


def _stage(stage_id, run_ms, read_bytes):
    return {
        "stageId": stage_id,
        "numCompleteTasks": 2,
        "executorRunTime": run_ms,
        "executorCpuTime": run_ms * 500_000,  # ns: half the run time
        "jvmGcTime": 10,
        "executorDeserializeTime": 5,
        "shuffleReadBytes": read_bytes,
        "shuffleWriteBytes": read_bytes // 2,
        "shuffleFetchWaitTime": 0,
        "shuffleWriteTime": 2_000_000,
    }


def _task(run_ms, records):
    return {"taskMetrics": {"executorRunTime": run_ms, "shuffleReadMetrics": {"recordsRead": records}}}


def test_stage_metrics_are_summed_per_phase_from_tagged_jobs(monkeypatch):
    replies = {
        "/jobs": [
            {"jobId": 0, "jobTags": ["spark-session-1-cfspark-user-steps"], "stageIds": [0]},  # before after_job
            {"jobId": 1, "jobTags": ["spark-session-1-cfspark-user-steps"], "stageIds": [1, 2]},
            {"jobId": 2, "jobTags": ["spark-session-1-cfspark-pack"], "stageIds": [3]},
            {"jobId": 3, "jobTags": [], "stageIds": [4]},  # untagged: the benchmark's own queries
        ],
        "/stages?status=complete": [_stage(0, 9000, 0), _stage(1, 1500, 2**20), _stage(2, 500, 3 * 2**20)]
        + [_stage(3, 4000, 2**21), _stage(4, 7000, 0)],
        # The user-steps stages' tasks: in stage 1 one block is twice as heavy as the other, and
        # an empty partition (no records read) is left out. Stage 2, lighter, is not asked for.
        "/stages/1/0/taskList?length=100000": [_task(500, 10), _task(1000, 10), _task(1, 0)],
    }
    monkeypatch.setattr(profile, "_get", lambda url: replies[url[len("api") :]])
    got = stage_breakdown("api", after_job=0)
    assert got["user-steps"] == {
        "jobs": 1,
        "stages": 2,
        "tasks": 4,
        "task_seconds": 2.0,
        "cpu_seconds": 1.0,
        "gc_seconds": 0.02,
        "deserialize_seconds": 0.01,
        "shuffle_read_mib": 4.0,
        "shuffle_write_mib": 2.0,
        "shuffle_fetch_wait_seconds": 0.0,
        "shuffle_write_seconds": 0.004,
        "task_spread_median": 2.0,  # job 1's heaviest stage (1): one block twice the other
        "task_spread_worst": 2.0,
    }
    assert got["pack"]["task_seconds"] == 4.0 and got["pack"]["shuffle_read_mib"] == 2.0 and got["pack"]["jobs"] == 1
    assert all(got[p]["stages"] == 0 for p in ("prepare", "index", "init", "item-steps"))

    history = [{"user_kernel_seconds": 0.75, "user_codec_seconds": 0.25, "item_kernel_seconds": 0.0}]
    table = profile_table(got, history, {"setup": 3.0, "user-steps": 1.5, "item-steps": 0.0})
    # user-steps: 2.0 task s = 0.75 numpy + 0.25 Arrow cells + 1.0 JVM and transfer.
    assert "| user-steps | 1.5 | 2.0 | 0.8 | 0.2 | 1.0 | 0.0 | 4 | 2 | 0.0 | 0.0 | 2.00 ×, 2.00 × |" in table
    assert "| pack | (setup) | 4.0 | 0.0 | 0.0 | 4.0 |" in table
    assert "Spark jobs per phase: pack 1, user-steps 1." in table  # the untagged job is no phase's


def test_profile_needs_the_ui(spark):
    assert profile.ui_api(spark) is None  # the test session runs with the UI off
    with pytest.raises(CfsparkError, match="spark.ui.enabled"):
        profile.profile_fit(spark, {})
