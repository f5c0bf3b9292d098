"""Where the trainer keeps its local checkpoints: one copy in local mode, two on a cluster."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pyspark import StorageLevel

from cfspark.train.trainer import checkpoint_level


def _session(master):
    def get(key, default=None):
        if master is None:
            raise RuntimeError("conf hidden")
        assert key == "spark.master"
        return master

    return SimpleNamespace(conf=SimpleNamespace(get=get))


@pytest.mark.parametrize(
    ("master", "copies"),
    [("local", 1), ("local[2]", 1), ("local[*]", 1), ("local-cluster[2,1,1024]", 2), ("spark://127.0.0.1:7077", 2),
     ("yarn", 2), ("k8s://https://api:6443", 2), (None, 2)],
)  # fmt: skip
def test_replicated_wherever_an_executor_can_be_lost_alone(master, copies):
    level = checkpoint_level(_session(master))
    assert level.replication == copies and level.useDisk and level.useMemory
    assert level == (StorageLevel.MEMORY_AND_DISK if copies == 1 else StorageLevel.MEMORY_AND_DISK_2)


def test_the_test_session_is_local_and_keeps_one_copy(spark):
    assert checkpoint_level(spark) == StorageLevel.MEMORY_AND_DISK
