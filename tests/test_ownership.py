"""Fault injection for the ownership rule (cfspark.core.ownership): for every path key the job
writes (output, staging, checkpoint, run_date), pointed at a folder of the user's, whatever
the flags, every file of the user's is left byte for byte.

Most cases call the functions the job uses (check_output, staged, staged_partition,
remove_stale_staging, Checkpointer, remove_checkpoints) directly; one job run, in-process,
puts them together.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
from test_bad_input import GOOD, train_job
from tests_support import file_bytes

from cfspark.app.config import load_config
from cfspark.app.guard import remove_stale_staging
from cfspark.app.output import check_output, remove_checkpoints, staged, staged_partition
from cfspark.core.errors import ConfigError
from cfspark.core.ownership import MARKER, checkpoint_folder, is_dead, job_run, make_owned, read_marker

# Names cfspark itself writes, so that a careless match on a name would show.
USER_FILES = {
    "precious.txt": b"the user's own",
    "sub/data.bin": bytes(range(256)),
    "iter-000001/users/part-0.parquet": b"not a checkpoint",
    "latest.json": b"{}",
    "metrics.json": b'{"mine": true}',
    "recommendations/run_date=2026-01-01/part-0.parquet": b"a partition of the user's",
    "model/run_date=2026-01-01/notes.txt": b"x",
}


def plant(folder) -> dict[str, bytes]:
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return file_bytes(folder)


def cfg_of(tmp_path, **keys):
    overrides = [f"input.path={tmp_path / 'ratings.csv'}", f"output.path={tmp_path / 'out'}"]
    return load_config(None, overrides + [f"{k.replace('__', '.')}={v}" for k, v in keys.items()])


def write_a_result(stage: str, part: str = "") -> None:
    for table in ("recommendations", "model", "metrics"):
        os.makedirs(os.path.join(stage, table) + part)
        with open(os.path.join(stage, table) + part + "/part-0", "w") as f:
            f.write("new")


FLAGS = list(itertools.product([False, True], ["", "2026-01-01"], [False, True]))


@pytest.mark.parametrize(("overwrite", "run_date", "replace_table"), FLAGS)
def test_output_and_run_date_on_a_users_folder(tmp_path, overwrite, run_date, replace_table):
    """The check before any read refuses, and so does the final move, should the check be passed by."""
    out = tmp_path / "out"
    out.mkdir()
    before = plant(out)
    cfg = cfg_of(tmp_path, output__overwrite=str(overwrite).lower(), output__run_date=f'"{run_date}"',
                 output__replace_table=str(replace_table).lower())  # fmt: skip
    with pytest.raises(ConfigError, match=f"output.path {out}"):
        check_output(cfg)
    part = f"/run_date={run_date}" if run_date else ""
    writer = staged_partition(str(out), part) if run_date else staged(str(out), overwrite)
    with pytest.raises(ConfigError), job_run(), writer as stage:
        write_a_result(stage, part)
    assert file_bytes(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or aside folder left


def test_a_users_partition_in_cfsparks_table_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    make_owned(str(out / "recommendations" / "run_date=2026-01-02"))  # cfspark's own date
    (out / "model").mkdir()
    before = {k: v for k, v in plant(out).items() if k in USER_FILES}
    refused = pytest.raises(ConfigError, match="run_date=2026-01-01 exists and was not made by cfspark")
    with refused, job_run(), staged_partition(str(out), "/run_date=2026-01-01") as stage:
        write_a_result(stage, "/run_date=2026-01-01")
    assert {k: v for k, v in file_bytes(out).items() if k in USER_FILES} == before
    # cfspark's own date of the same table is replaced: the rule is the marker, not the name.
    with job_run(), staged_partition(str(out), "/run_date=2026-01-02") as stage:
        write_a_result(stage, "/run_date=2026-01-02")
    assert (out / "recommendations" / "run_date=2026-01-02" / "part-0").read_text() == "new"
    assert {k: v for k, v in file_bytes(out).items() if k in USER_FILES} == before


def test_staging_siblings_are_removed_only_when_a_dead_run_made_them(tmp_path):
    out = tmp_path / "out"
    users = [tmp_path / "out.partial-mine", tmp_path / "out.old-2024-backup"]
    for folder in users:
        folder.mkdir()
        plant(folder)
    before = {f.name: file_bytes(f) for f in users}
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        others = {  # marked by a live process, a run of this process still going, and a dead run
            "out.partial-live": {"run": "x", "pid": live.pid, "host": socket.gethostname()},
            "out.partial-other-host": {"run": "x", "pid": 1, "host": "another-host"},
            "out.old-dead": {"run": "x", "pid": 999999999, "host": socket.gethostname()},
        }
        for name, info in others.items():
            (tmp_path / name).mkdir()
            (tmp_path / name / MARKER).write_text(json.dumps(info))
        with job_run():
            make_owned(str(tmp_path / "out.partial-this-run"))
            assert not is_dead(read_marker(str(tmp_path / "out.partial-this-run")))
            removed = remove_stale_staging(str(out))
        assert is_dead(read_marker(str(tmp_path / "out.partial-this-run")))  # its run has ended
    finally:
        live.kill()
        live.wait()
    assert removed == [str(tmp_path / "out.old-dead")]
    assert {f.name: file_bytes(f) for f in users} == before
    left = ["out.partial-mine", "out.old-2024-backup", "out.partial-live", "out.partial-other-host"]
    assert sorted(os.listdir(tmp_path)) == sorted([*left, "out.partial-this-run"])


@pytest.mark.parametrize("explicit", [False, True])
def test_checkpoints_in_a_users_folder_go_to_a_subfolder_of_their_own(spark, tmp_path, explicit):
    from cfspark.train.arrow_bodies import OUT_SCHEMA, STATE, out_record
    from cfspark.train.checkpoint import Checkpointer

    folder = tmp_path / ("ck" if explicit else "out_checkpoints")
    folder.mkdir()
    before = plant(folder)
    row = out_record(0, STATE, b"p", m=b"m", v=b"v", t=1, data_loss=1.0)
    df = spark.createDataFrame([tuple(row.values())], OUT_SCHEMA)
    ck = Checkpointer(spark, str(folder), 1, "fp")
    assert ck.directory == str(folder / "cfspark-checkpoints") == checkpoint_folder(str(folder))
    for iteration in (1, 2):  # the second save drops the first's iter-*: its own only
        ck.save(iteration, df, df, [], (1, 1))
    assert ck.load((1, 1)).iteration == 2
    for keep in (True, False):  # after a successful run: kept, then removed
        keys = {"checkpoint__keep": str(keep).lower(), "checkpoint__interval": 1}
        remove_checkpoints(cfg_of(tmp_path, **keys, **({"checkpoint__dir": str(folder)} if explicit else {})))
        assert (folder / "cfspark-checkpoints").exists() == keep
        assert {k: v for k, v in file_bytes(folder).items() if not k.startswith("cfspark-checkpoints/")} == before


@pytest.mark.slow
def test_a_job_pointed_at_the_users_folders_leaves_them_byte_for_byte(spark, capsys, tmp_path):
    """One real run with every path beside or inside the user's folders: a checkpoint dir of
    theirs, staging-named siblings, and a model saved over one of their folders by the library."""
    from cfspark import CFModel

    (tmp_path / "ratings.csv").write_text(GOOD + "u3,m1,2\nu3,m2,5\nu4,m3,4\nu4,m2,2\n")
    mine = {name: tmp_path / name for name in ("ck", "out.partial-mine", "out.old-backup", "models")}
    before = {}
    for name, folder in mine.items():
        folder.mkdir()
        before[name] = plant(folder)
    code = train_job.main([
        "--set", f"input.path={tmp_path / 'ratings.csv'}", "--set", f"output.path={tmp_path / 'out'}",
        "--set", f"checkpoint.dir={mine['ck']}", "--set", "checkpoint.interval=1", "--set", "model.max_iter=2",
        "--set", "model.num_user_blocks=2", "--set", "model.num_item_blocks=2", "--set", "split.test_fraction=0",
        "--set", "spark.shuffle_partitions=2",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert read_marker(str(tmp_path / "out"))["pid"] == os.getpid()  # the output carries the run's marker
    model = CFModel.load(str(tmp_path / "out" / "model"))
    with pytest.raises(FileExistsError, match="already exists; to replace it, use write\\(\\).overwrite\\(\\)"):
        model.write().save(str(mine["models"]))  # as pyspark.ml: an existing path is refused
    model.write().save(str(tmp_path / "fresh" / "model"))
    assert CFModel.load(str(tmp_path / "fresh" / "model")).rank == model.rank
    assert {name: file_bytes(folder) for name, folder in mine.items()} == before  # the checkpoints' subfolder is gone
    assert sorted(os.listdir(tmp_path)) == ["ck", "fresh", "models", "out", "out.old-backup", "out.partial-mine",
                                            "ratings.csv"]  # fmt: skip
