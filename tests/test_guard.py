"""Run locks across processes, and the path checks (no Spark needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cfspark.app.guard import RunLock, check_disjoint, check_writable
from cfspark.core.errors import BusyError, ConfigError, OutputError

HOLD = """
import sys, time
from cfspark.app.guard import RunLock
with RunLock([("output.path", sys.argv[1])]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_held_by_another_live_process_is_refused_then_taken_once_it_dies(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        info = json.loads((tmp_path / "out.lock").read_text())
        assert info["pid"] == holder.pid
        with pytest.raises(BusyError, match=f"output.path {out} is in use by another run \\(pid {holder.pid} on "):
            RunLock([("output.path", out)]).__enter__()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert (tmp_path / "out.lock").exists()
    with RunLock([("output.path", out)]):  # stale: nobody holds it any more
        assert json.loads((tmp_path / "out.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out.lock").exists()


def test_locks_are_released_and_folders_made_for_them_removed(tmp_path):
    with RunLock([("output.path", str(tmp_path / "a" / "b" / "out"))]):
        assert (tmp_path / "a" / "b" / "out.lock").is_file()
    assert os.listdir(tmp_path) == []


def test_path_checks(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "file").write_text("x")
    check_disjoint("output.path", str(tmp_path / "out"), "input.path", str(tmp_path / "data"))  # siblings: fine
    check_disjoint("output.path", str(tmp_path / "data2"), "input.path", str(tmp_path / "data"))  # a prefix only
    with pytest.raises(ConfigError, match="is a folder above"):
        check_disjoint("output.path", str(tmp_path), "input.path", str(tmp_path / "data" / "r.csv"))
    with pytest.raises(ConfigError, match="is input.path"):  # the same folder, spelt differently
        check_disjoint("output.path", str(tmp_path / "data" / ".." / "data"), "input.path", str(tmp_path / "data"))
    check_writable("output.path", str(tmp_path / "new" / "deeper" / "out"))
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable("output.path", str(tmp_path / "file" / "out"))


def test_a_save_path_holds_the_files_below_it_as_inputfiles_spells_them(tmp_path):
    """The model writer's hold (model_io._below): a save path without a scheme is on Spark's
    default file system, so it holds that path on any scheme's host, and no sibling."""
    from cfspark.ml.model_io import _below

    folder = str(tmp_path / "m")
    assert _below(f"file://{folder}/user_factors/part-0.parquet", folder)
    assert _below(f"hdfs://nn:8020{folder}/user_factors/part-0.parquet", folder)
    assert not _below(f"hdfs://nn:8020{folder}x/part-0.parquet", folder)
    assert _below("HDFS://NN:8020/m/a/part-0.parquet", "hdfs://nn:8020/m")
    assert not _below("hdfs://other:8020/m/a/part-0.parquet", "hdfs://nn:8020/m")


def test_paths_are_compared_as_spark_reads_them(tmp_path):
    from cfspark.core.fs import expand, local_path, normalise, split_uri

    for spelling in (f"file://{tmp_path}", f"file:{tmp_path}", f"file://localhost{tmp_path}", f"{tmp_path}/a/.."):
        assert local_path(spelling) in (str(tmp_path), f"{tmp_path}/a/..") and normalise(spelling) == str(tmp_path)
    assert normalise("HDFS://NameNode:8020/a//b/../c/") == "hdfs://namenode:8020/a/c"
    assert normalise("s3a:/bucket//key/./x") == "s3a:/bucket/key/x"
    assert split_uri("HDFS://nn:8020/a/b") == ("hdfs", "nn:8020", "/a/b")
    assert split_uri("hdfs://nn") == ("hdfs", "nn", "/")
    assert split_uri("file:/a") == ("file", None, "/a") and split_uri("/a") == ("", None, "/a")
    assert local_path("file://host/a") == "//host/a" and local_path("hdfs://nn/a") == "hdfs://nn/a"
    for name in ("glob1", "glob2", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "other")
    assert expand(f"file://{tmp_path}/glob*") == [str(tmp_path / "glob1"), str(tmp_path / "glob2")]
    assert expand(f"{tmp_path}/{{glob2,link}}") == [str(tmp_path / "glob2"), str(tmp_path / "other")]  # Hadoop's braces
    assert expand(f"{tmp_path}/none*") == []
    assert expand("hdfs://nn/data/day=*/part-*") == ["hdfs://nn/data"]  # unlisted: the folder above the glob
    with pytest.raises(ConfigError, match=r"\(which matches .*/other\)"):
        check_disjoint("output.path", str(tmp_path / "link"), "input.path", f"{tmp_path}/{{glob1,other}}")
    with pytest.raises(ConfigError, match="is inside input.path"):
        check_disjoint("output.path", "hdfs://NN/data/out", "input.path", "hdfs://nn/data/*.csv")
    check_disjoint("output.path", "hdfs://nn/out", "input.path", "hdfs://nn/data/*.csv")
    check_disjoint("output.path", str(tmp_path / "data"), "input.path", "hdfs://nn/" + str(tmp_path / "data"))
