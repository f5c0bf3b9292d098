"""Bad checkpoints (issue 11, item 4): detected and skipped with a warning, never loaded
and never a crash; latest.json names its folder relative to the checkpoint dir."""

from __future__ import annotations

import json
import logging
import os

import pytest

from cfspark.train.arrow_bodies import OUT_SCHEMA, STATE, out_record
from cfspark.train.checkpoint import MARKER, Checkpointer, checkpointed_blocks

ROWS = [
    tuple(out_record(b, STATE, bytes([b]) * 64, m=b"m", v=b"v", t=3, data_loss=1.5, reg_loss=0.5).values())
    for b in range(3)
]
SHAPE = (3, 3)  # the (user, item) block counts the rows above are laid out by


@pytest.fixture
def saved(spark, tmp_path):
    """A checkpoint at iteration 2 under tmp/ck, written as the trainer writes one."""
    df = spark.createDataFrame(ROWS, OUT_SCHEMA)
    ck = Checkpointer(spark, str(tmp_path / "ck"), 2, "fp")
    ck.save(2, df, df, [{"iteration": 1, "train_loss": 3.0}, {"iteration": 2, "train_loss": 2.0}], SHAPE)
    return ck, tmp_path / "ck"


def _parts(folder):
    return sorted(p for p in folder.rglob("part-*") if p.suffix == ".parquet")


def test_a_good_checkpoint_resumes_from_any_working_directory(spark, saved, tmp_path, monkeypatch):
    ck, root = saved
    marker = json.loads((root / MARKER).read_text())
    assert marker["path"] == "iter-000002" and marker["files"]  # relative to the checkpoint dir
    monkeypatch.chdir(tmp_path.parent)
    resumed = Checkpointer(spark, str(root), 2, "fp").load(SHAPE)
    assert resumed.iteration == 2 and [h["train_loss"] for h in resumed.history] == [3.0, 2.0]
    assert sorted(r.params for r in resumed.user_out.collect()) == sorted(r[2] for r in ROWS)


def truncate_a_part(root):
    part = _parts(root / "iter-000002" / "users")[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def delete_the_folder(root):
    import shutil

    shutil.rmtree(root / "iter-000002")


def garble_the_marker(root):
    (root / MARKER).write_text('{"iteration": 2, "fingerp')


def marker_with_one_block_count(root):
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "blocks": [3]}))


def marker_without_keys(root):
    (root / MARKER).write_text('{"fingerprint": "fp"}')


def corrupt_a_part_keeping_its_size(root):
    part = _parts(root / "iter-000002" / "items")[0]
    data = bytearray(part.read_bytes())
    data[4 : len(data) - 8] = bytes(len(data) - 12)  # zeros between the magic bytes and the footer length
    part.write_bytes(bytes(data))


FAULTS = {
    "truncated_parquet": (truncate_a_part, "has"),
    "folder_deleted": (delete_the_folder, "its folder is missing"),
    "marker_garbled": (garble_the_marker, "cannot be read (JSONDecodeError"),
    "marker_incomplete": (marker_without_keys, "cannot be read (KeyError"),
    "marker_one_block_count": (marker_with_one_block_count, "laid out for 3 blocks asked for"),
    "corrupt_parquet_same_size": (corrupt_a_part_keeping_its_size, "cannot be read ("),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_checkpoint_is_skipped_with_a_warning(spark, saved, caplog, fault):
    ck, root = saved
    damage, why = FAULTS[fault]
    damage(root)
    with caplog.at_level(logging.WARNING, logger="cfspark"):
        assert Checkpointer(spark, str(root), 2, "fp").load(SHAPE) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0] and "training starts afresh" in warnings[0], warnings


def test_a_skipped_checkpoint_is_replaced_by_the_next_save(spark, saved):
    ck, root = saved
    truncate_a_part(root)
    df = spark.createDataFrame(ROWS, OUT_SCHEMA)
    ck.save(4, df, df, [], SHAPE)
    assert set(os.listdir(root)) == {"iter-000004", MARKER, "_cfspark"}  # the damaged one is dropped
    assert ck.load(SHAPE).iteration == 4


def test_a_checkpoint_of_other_block_counts_is_skipped_and_its_counts_are_read(spark, saved, tmp_path, caplog):
    """Block counts left to the data follow the cluster's task slots: a rerun takes the
    checkpoint's (checkpointed_blocks), and state rows of other counts are never loaded."""
    ck, root = saved
    assert checkpointed_blocks(str(root)) == SHAPE and checkpointed_blocks(str(tmp_path / "none")) is None
    with caplog.at_level(logging.WARNING, logger="cfspark"):
        assert Checkpointer(spark, str(root), 2, "fp").load((4, 3)) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "laid out for 3 + 3 blocks asked for, this fit asks for 4 + 3" in warning and "starts afresh" in warning
    assert Checkpointer(spark, str(root), 2, "fp").load(SHAPE).iteration == 2
    # A marker without block counts (an earlier cfspark's, which chose them otherwise) is not resumed.
    marker = json.loads((root / MARKER).read_text())
    del marker["blocks"]
    (root / MARKER).write_text(json.dumps(marker))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cfspark"):
        assert Checkpointer(spark, str(root), 2, "fp").load(SHAPE) is None
    assert "does not say which blocks" in caplog.records[-1].getMessage()


@pytest.mark.slow
def test_a_fit_over_a_damaged_checkpoint_trains_afresh(spark, tmp_path, caplog):
    from cfspark import CollaborativeFilter

    rows = [(u, i, float((u * 3 + i) % 5 + 1)) for u in range(6) for i in range(5) if (u + i) % 3]
    ratings = spark.createDataFrame(rows, "user long, item long, rating double")

    def fit(iterations: int):
        return CollaborativeFilter(
            rank=2, maxIter=iterations, numUserBlocks=2, numItemBlocks=2, checkpointDir=str(tmp_path / "ck"),
            checkpointInterval=1,
        ).fit_validated(ratings)  # fmt: skip

    fit(2)
    truncate_a_part(tmp_path / "ck")
    with caplog.at_level(logging.WARNING, logger="cfspark"):
        model = fit(3)
    # From iteration 1 (automatic λ's fit starts from the search's factors, so it may settle before 3).
    iterations = [h["iteration"] for h in model.history]
    assert model.summary["resumed_from"] == 0 and iterations == list(range(1, len(iterations) + 1)), iterations
    assert any("training starts afresh" in r.getMessage() for r in caplog.records)
