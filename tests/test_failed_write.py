"""A failure while the job writes its outputs leaves the previous good output untouched
and no staging folder behind (local mode; the fault is injected into Spark's Parquet writer)."""

from __future__ import annotations

import os

import pytest
from planted import planted_ratings
from pyspark.sql import DataFrameWriter

from cfspark.app.config import load_config
from cfspark.app.train import run_job
from cfspark.core.errors import OutputError


def _fail_model_tables(monkeypatch):
    """Spark's own write fails half-way: recommendations and user factors are written, the rest is not."""
    real = DataFrameWriter.parquet

    def parquet(self, path, *args, **kwargs):
        if path.endswith("/model/item_factors"):
            raise OSError(f"injected: cannot write {path}")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(DataFrameWriter, "parquet", parquet)


@pytest.mark.slow
def test_a_failed_write_keeps_the_previous_output_and_leaves_no_staging(spark, tmp_path, monkeypatch):
    rows = planted_ratings(n_users=20, n_items=15, rank=2, density=0.5, noise=0.2, seed=4).rows()
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    out = tmp_path / "out"
    (out / "recommendations").mkdir(parents=True)
    (out / "recommendations" / "part-0.parquet").write_bytes(b"the previous good run")
    (out / "metrics.json").write_text('{"previous": true}\n')
    (out / "_cfspark").write_text("")  # the marker of an earlier cfspark output
    cfg = load_config(None, [f"input.path={tmp_path / 'ratings.csv'}", f"output.path={out}", "output.overwrite=true",
                             "model.rank=2", "model.max_iter=1", "model.num_user_blocks=2", "model.num_item_blocks=2",
                             "checkpoint.interval=0", "spark.shuffle_partitions=2"])  # fmt: skip
    _fail_model_tables(monkeypatch)
    # The job turns it into its write-failure class (exit code 5), keeping Spark's message.
    with pytest.raises(OutputError, match=r"injected: cannot write .*/out\.partial-\w+/model/item_factors"):
        run_job(spark, cfg)
    assert sorted(os.listdir(tmp_path)) == ["out", "ratings.csv"]  # no out.partial-*, no out.old-*
    assert sorted(os.listdir(out)) == ["_cfspark", "metrics.json", "recommendations"]
    assert (out / "metrics.json").read_text() == '{"previous": true}\n'
    assert (out / "recommendations" / "part-0.parquet").read_bytes() == b"the previous good run"
