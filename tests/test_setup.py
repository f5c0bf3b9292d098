"""Setup without index joins: the model does not depend on the block counts, for integer and
string ids; string ids that share a hash are refused; blocks are balanced by rating load."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyspark
import pytest
from planted import planted_ratings
from pyspark.sql import functions as F
from pyspark.sql import types as T
from tests_support import jobs_of

from cfspark import CollaborativeFilter
from cfspark.blocks import partitioning, placement
from cfspark.blocks.build import Side, build_blocks
from cfspark.blocks.hashing import hashed_blocks, murmur3, xxhash64
from cfspark.blocks.inblock import pack_arrays
from cfspark.blocks.placement import check_distinct, entity_counts, route_blocks
from cfspark.core.errors import InputError
from cfspark.core.ownership import make_owned
from cfspark.core.plans import cache_plain, narrow_rows, one_job, unreduced_groups
from cfspark.core.slots import task_slots
from cfspark.fit import blockwise
from cfspark.fit.blockwise import block_counts, setup
from cfspark.fit.targets import prepare
from cfspark.kernels.priors import prior_from_rows
from cfspark.train.arrow_bodies import OUT_SCHEMA, init_blocks
from cfspark.train.checkpoint import MARKER
from cfspark.train.trainer import half_step

# λ_b fixed: these tests set up half-steps by hand, where a fit would first estimate "auto" from the ratings.
PARAMS = dict(rank=3, maxIter=5, tol=0.0, seed=7, regParam=0.05, regUnits="als", biasReg=5.0)


@pytest.fixture(scope="module")
def planted():
    return planted_ratings(n_users=150, n_items=80, rank=3, density=0.25, noise=0.5, seed=2)  # about 3,000 ratings


def _factors(df) -> dict:
    id_col = df.columns[0]
    return {r[id_col]: np.array([*r.features, r.bias]) for r in df.collect()}


def test_blocks_left_to_the_data_fill_the_task_slots(spark, planted, monkeypatch, tmp_path):
    """With no block count set, setup makes the fewest multiple of the slots (local[2]'s 2,
    read through the DataFrame API) whose blocks hold at most maxBlockRatings; a fit with a
    checkpoint to resume takes that checkpoint's counts instead."""
    assert task_slots(spark) == spark.sparkContext.defaultParallelism == 2
    monkeypatch.setattr(blockwise, "MIN_BLOCK_RATINGS", 1)  # blocks this small would otherwise be one task's work
    df = spark.createDataFrame(planted.rows(), "user int, item int, rating double")
    n = df.count()
    # 3 blocks would hold them: the next multiple of 2 is 4.
    cf = CollaborativeFilter(maxBlockRatings=n // 3 + 1, **PARAMS)
    blocks, stats, _ = setup(cf.fit_settings(), df, num_ratings=n)
    assert (blocks.num_user_blocks, blocks.num_item_blocks) == (4, 4)
    blocks.unpersist(), stats.unpersist()
    folder = tmp_path / "checkpoints"
    make_owned(str(folder))
    (folder / MARKER).write_text(json.dumps({"blocks": [3, 5]}))  # as written on a cluster of other slots
    kept = cf.copy({cf.checkpointDir: str(folder), cf.checkpointInterval: 1})
    assert block_counts(kept.fit_settings(), n, spark) == (3, 5)
    assert block_counts(kept.copy({kept.numUserBlocks: 2}).fit_settings(), n, spark) == (2, 5)
    assert block_counts(cf.fit_settings(), n, spark) == (4, 4)


@pytest.mark.parametrize("ids", ["integer", "string"])
@pytest.mark.slow
def test_block_counts_do_not_change_the_model(spark, planted, ids):
    if ids == "string":
        rows = [(f"user-{u}", f"{i:03d}", r) for u, i, r in planted.rows()]
        schema, types = "user string, item string, rating double", (T.StringType(), T.StringType())
    else:
        rows = planted.rows()
        schema, types = "user int, item long, rating double", (T.IntegerType(), T.LongType())
    df = spark.createDataFrame(rows, schema).cache()
    one = CollaborativeFilter(numUserBlocks=1, numItemBlocks=1, **PARAMS).fit_validated(df)
    many = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_validated(df)
    assert (many.summary["num_user_blocks"], many.summary["num_item_blocks"]) == (3, 2)
    for side, dtype in zip(("user", "item"), types, strict=True):
        a, b = (_factors(getattr(m, f"{side}_factors")) for m in (one, many))
        assert getattr(many, f"{side}_factors").schema[side].dataType == dtype  # the ids come back as they went in
        assert a.keys() == b.keys() == {r[0] for r in df.select(side).distinct().collect()}
        keys = sorted(a)
        np.testing.assert_allclose([b[k] for k in keys], [a[k] for k in keys], rtol=1e-8, atol=1e-12)
        assert np.abs([a[k] for k in keys]).max() > 0.1  # factors that moved, not zeros
    for m in (one, many):
        m.unpersist()
    df.unpersist()


def test_string_ids_that_share_a_hash_are_refused(spark, monkeypatch):
    names = spark.createDataFrame([(f"user-{j}",) for j in range(20)], "user string")
    check_distinct(entity_counts(names, "user"), "user")  # 64 bits: 20 ids, 20 values
    monkeypatch.setattr(placement, "ID_BITS", 3)  # 8 values for 20 ids: some must share one
    counts = entity_counts(names, "user")
    assert counts.count() <= 8 and counts.agg(F.sum("ratings")).first()[0] == 20
    with pytest.raises(InputError, match=r"shared by more than one user id, e\.g\. 'user-\d+' and another id"):
        check_distinct(counts, "user")
    numbers = spark.createDataFrame([(j,) for j in range(20)], "user long")
    check_distinct(entity_counts(numbers, "user"), "user")  # integers are their own values
    # A distributed fit stops in setup, before any training (a one-task fit orders no ids by hash).
    ratings = spark.createDataFrame(
        [(f"user-{j}", "item", 1.0 + j % 3) for j in range(20)], "user string, item string, rating double"
    )
    with pytest.raises(InputError, match="shared by more than one user id"):
        CollaborativeFilter(rank=2, maxIter=1, numUserBlocks=2, numItemBlocks=1).fit_validated(ratings)


def test_item_blocks_are_balanced_by_load_where_hashing_is_not(spark):
    p = planted_ratings(n_users=400, n_items=300, rank=2, density=0.03, noise=0.5, seed=1, popularity_sd=1.5)
    df = spark.createDataFrame(p.rows(), "user long, item long, rating double").cache()
    mean = df.count() / 4
    heaviest = np.unique(p.items, return_counts=True)[1].max()
    hashed = dict(df.groupBy(F.pmod(F.hash("item"), F.lit(4))).count().collect())
    assert heaviest <= 0.5 * mean  # no single item stops a balance within 1.5 × the mean...
    assert max(hashed.values()) > 1.5 * mean  # ...but hashing alone does not reach it
    settings = CollaborativeFilter(rank=2, numUserBlocks=2, numItemBlocks=4).fit_settings()
    blocks, stats, _ = setup(settings, df)
    loads = {r.block: int(np.frombuffer(r.row_ptr, dtype=np.int64)[-1]) for r in blocks.items.collect()}
    assert sorted(loads) == [0, 1, 2, 3] and sum(loads.values()) == df.count()
    assert max(loads.values()) <= 1.5 * mean, (loads, mean)
    placed = blocks.item_side.placement
    assert list(placed.loads) == [loads[b] for b in range(4)] and list(placed.hashed_loads) == [
        hashed.get(b, 0) for b in range(4)
    ]
    assert len(placed.heavy) > 0 and (placed.heavy_blocks != hashed_blocks(placed.heavy, 4, wide=True)).any()
    # Cut by hashed block, counted, placed, then moved: every InBlock is the one numpy packs
    # from its ratings, routed to the placed blocks from the start.
    t = prepare(settings, df).targets.toPandas()
    values = {side: t[side].to_numpy(np.int64) for side in ("user", "item")}
    sides = {
        "user": (blocks.user_side.placement, settings.seed, blocks.users),
        "item": (placed, settings.seed + 1, blocks.items),
    }
    where = {}
    for side, (p, _, _) in sides.items():
        where[side] = route_blocks(
            values[side], hashed_blocks(values[side], p.num_blocks, wide=True), (p.heavy, p.heavy_blocks)
        )
    for own, other in (("user", "item"), ("item", "user")):
        _, key_seed, inblocks = sides[own]
        for row in inblocks.collect():
            sel = where[own] == row.block
            ids = values[own][sel]
            expected = pack_arrays(
                ids, where[other][sel], values[other][sel], t["y"].to_numpy()[sel],
                xxhash64(ids, key_seed, wide=True), weight=None,
            )  # fmt: skip
            assert row.n == expected.pop("n") and row.offset is None and expected.pop("offset") is None
            for name, array in expected.items():
                got = None if getattr(row, name) is None else np.frombuffer(getattr(row, name), array.dtype)
                np.testing.assert_array_equal(got, array, err_msg=f"{own} block {row.block}: {name}")
    blocks.unpersist(), stats.unpersist(), df.unpersist()


def test_the_inblocks_stay_in_place_in_a_half_step(spark, planted, capsys):
    # The InBlocks' copy in place is cached hash-partitioned by block, so a half-step's cogroup
    # shuffles only the messages: no exchange between the cached InBlocks and the cogroup.
    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double")
    cf = CollaborativeFilter(rank=2, numUserBlocks=3, numItemBlocks=2, biasReg=5.0)
    settings = cf.fit_settings()
    blocks, stats, _ = setup(settings, df)
    user_cfg, item_cfg = settings.step_config("user"), settings.step_config("item")
    users = blocks.users.mapInArrow(init_blocks(user_cfg, send=False), OUT_SCHEMA)
    items = blocks.items.mapInArrow(init_blocks(item_cfg, send=True), OUT_SCHEMA)
    capsys.readouterr()
    half_step(blocks.in_place("user"), users, items, user_cfg, blocks.num_user_blocks).explain()
    lines = capsys.readouterr().out.splitlines()
    cogroup = next(j for j, line in enumerate(lines) if "FlatMapCoGroupsInArrow" in line)
    scan = next(j for j, line in enumerate(lines) if "InMemoryTableScan" in line and "row_ptr" in line)
    assert cogroup < scan and not any("Exchange" in line for line in lines[cogroup:scan]), "\n".join(lines[: scan + 1])
    blocks.unpersist(), stats.unpersist()


def _first_states(blocks, earlier, cfgs) -> list:
    """A warm start's first state tables, as sorted (dest, src, params) rows per side."""
    from cfspark.train.warm import warm_start

    tables = warm_start(blocks, earlier.user_factors, earlier.item_factors, *cfgs)
    return [sorted((r.dest, r.src, bytes(r.params)) for r in t.select("dest", "src", "params").collect())
            for t in tables]  # fmt: skip


@pytest.mark.slow
def test_a_warm_start_caches_no_copy_in_place_when_the_workers_keep_the_blocks(spark, planted, monkeypatch):
    # The joined start (a table of earlier factors too large to carry) cogroups every block
    # once and leaves the blocks with the workers: the InBlocks move inside its own job. Its
    # first states equal those of the cached copy in place, which a fit with the workers'
    # cache off cogroups against at every half-step.
    from cfspark.train import warm

    monkeypatch.setattr(warm, "INLINE_BYTES", 0)
    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double").cache()
    earlier = CollaborativeFilter(numUserBlocks=1, numItemBlocks=1, **{**PARAMS, "maxIter": 2}).fit_validated(df)
    settings = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_settings()
    blocks, stats, _ = setup(settings, df)
    cfgs = settings.step_config("user"), settings.step_config("item")
    moved = _first_states(blocks, earlier, cfgs)
    assert blocks._in_place == {}
    monkeypatch.setenv("CFSPARK_BLOCK_CACHE", "off")
    in_place = _first_states(blocks, earlier, cfgs)
    assert sorted(blocks._in_place) == ["item", "user"]
    assert moved == in_place and len(moved[0]) == 3 and len(moved[1]) > 2  # the items' messages too
    blocks.unpersist(), stats.unpersist(), earlier.unpersist(), df.unpersist()


def test_collect_sides_brings_tables_of_other_id_types_to_the_driver_in_one_job(spark):
    """train/warm.collect_sides: each table's ids (of its own type: long users, string items),
    features and biases, as the table holds them, collected in one Spark job."""
    from cfspark.train.warm import collect_sides

    schema = "features array<double>, bias double"
    users = spark.createDataFrame([(7, [0.5, -1.0], 0.25), (3, [2.0, 1.5], -0.5)], f"user long, {schema}")
    items = spark.createDataFrame([("i-9", [1.0, 0.0], 0.75)], f"item string, {schema}")
    (got_users, got_items), jobs = jobs_of(spark, lambda: collect_sides([users, items]))
    assert jobs == 1
    assert got_users.column_names == ["user", "features", "bias"] and got_users.schema.field("user").type == pa.int64()
    by_id = {r["user"]: (r["features"], r["bias"]) for r in got_users.to_pylist()}
    assert by_id == {7: ([0.5, -1.0], 0.25), 3: ([2.0, 1.5], -0.5)}
    assert got_items.to_pylist() == [{"item": "i-9", "features": [1.0, 0.0], "bias": 0.75}]


@pytest.mark.parametrize("ids", ["integer", "string"])
@pytest.mark.slow
def test_a_small_table_of_earlier_factors_starts_the_blocks_as_the_join_does(spark, planted, monkeypatch, ids):
    # Carried inside the start's body and found by the blocks' own ids, the earlier factors
    # give the same first states, bit for bit, as joined to the index: with users and items
    # the earlier model knows and the data has not (dropped), and the other way (hashed init).
    from cfspark.train import warm

    rows = planted.rows()
    if ids == "string":
        rows = [(f"user-{u}", f"{i:03d}", r) for u, i, r in rows]
    df = spark.createDataFrame(rows, f"user {ids}, item {ids}, rating double".replace("integer", "long")).cache()
    users, items = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    old = df.filter(~F.col("user").isin(users[:10]) & ~F.col("item").isin(items[:5]))
    new = df.filter(~F.col("user").isin(users[-10:]) & ~F.col("item").isin(items[-5:])).cache()
    earlier = CollaborativeFilter(numUserBlocks=1, numItemBlocks=1, **{**PARAMS, "maxIter": 2}).fit_validated(old)
    settings = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_settings()
    blocks, stats, _ = setup(settings, new)
    cfgs = settings.step_config("user"), settings.step_config("item")
    for side in ("user", "item"):
        inline = _inline_one(blocks, side, getattr(earlier, f"{side}_factors"), settings.rank)
        # Integer ids are carried as they are; string ids only where the data has them (its values).
        known = old.select(side).distinct()
        known = known if ids == "integer" else known.join(new.select(side).distinct(), side)
        assert inline is not None and len(inline[0]) == known.count()
    carried = _first_states(blocks, earlier, cfgs)
    monkeypatch.setenv("CFSPARK_BLOCK_CACHE", "off")  # no block kept: the body reads no block for the users
    assert _first_states(blocks, earlier, cfgs) == carried
    monkeypatch.delenv("CFSPARK_BLOCK_CACHE")
    monkeypatch.setattr(warm, "INLINE_BYTES", 0)
    assert _inline_one(blocks, "user", earlier.user_factors, settings.rank) is None
    joined = _first_states(blocks, earlier, cfgs)
    assert carried == joined and len(carried[0]) == 3 and len(carried[1]) > 2
    # Some rows started from the earlier factors, some from the hashed init (the cold start's states).
    cold = [sorted((r.dest, bytes(r.params)) for r in t.filter("src = -1").select("dest", "params").collect())
            for t in (blocks.users.mapInArrow(init_blocks(cfgs[0], send=False), OUT_SCHEMA),
                      blocks.items.mapInArrow(init_blocks(cfgs[1], send=True), OUT_SCHEMA))]  # fmt: skip
    for side, states in enumerate(carried):
        width, same = cfgs[side].width, []
        started_rows = [(dest, params) for dest, src, params in states if src == -1]
        for (dest, params), (cold_dest, cold_params) in zip(started_rows, cold[side], strict=True):
            assert dest == cold_dest
            started, hashed = (np.frombuffer(p).reshape(-1, width) for p in (params, cold_params))
            same.append(np.all(started == hashed, axis=1))
        same = np.concatenate(same)
        assert same.sum() == (10 if side == 0 else 5), side  # the users and items new to the data
    blocks.unpersist(), stats.unpersist(), earlier.unpersist(), new.unpersist(), df.unpersist()


def _inline_one(blocks, side: str, factors, rank: int) -> tuple | None:
    """One side's earlier factors as the warm start carries them inline (None: joined instead)."""
    from cfspark.train import warm

    return warm._inline_sides(blocks, {side: factors}, rank, {side: None})[side]



@pytest.mark.slow
def test_earlier_factors_of_known_row_counts_come_to_the_driver_in_one_job(spark, planted, monkeypatch):
    # Given the tables' row counts (as the λ search's task knows them), both sides' small
    # tables are collected in one job with no count before it, and are those each side's
    # table gives alone. The given count is the bound's: over it, a side is joined, not collected.
    from cfspark.train import warm

    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double").cache()
    earlier = CollaborativeFilter(numUserBlocks=1, numItemBlocks=1, **{**PARAMS, "maxIter": 2}).fit_validated(df)
    settings = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **PARAMS).fit_settings()
    blocks, stats, _ = setup(settings, df)
    factors = {"user": earlier.user_factors, "item": earlier.item_factors}
    rows = {side: table.count() for side, table in factors.items()}
    assert rows == {"user": 150, "item": 80}
    alone = {side: _inline_one(blocks, side, table, settings.rank) for side, table in factors.items()}
    both, jobs = jobs_of(spark, lambda: warm._inline_sides(blocks, factors, settings.rank, rows))
    assert jobs == 1
    for side in factors:
        assert len(both[side][0]) == rows[side]
        assert all(np.array_equal(a, b) for a, b in zip(both[side], alone[side], strict=True)), side
    # A bound the users' 150 rows exceed and the items' 80 do not.
    monkeypatch.setattr(warm, "INLINE_BYTES", 100 * (settings.rank + 2) * 8)
    bounded, jobs = jobs_of(spark, lambda: warm._inline_sides(blocks, factors, settings.rank, rows))
    assert jobs == 1 and bounded["user"] is None  # the users' table is neither counted nor collected
    assert all(np.array_equal(a, b) for a, b in zip(bounded["item"], alone["item"], strict=True))
    # The given count decides, with no job: a table said to be over the bound is not collected.
    over = {"user": 10**9, "item": 10**9}
    refused = jobs_of(spark, lambda: warm._inline_sides(blocks, factors, settings.rank, over))
    assert refused == ({"user": None, "item": None}, 0)
    blocks.unpersist(), stats.unpersist(), earlier.unpersist(), df.unpersist()


def test_the_search_gives_its_factor_tables_row_counts(spark, planted):
    # The λ search's task knows how many users and items its factor tables hold: the fit's
    # warm start takes those counts rather than counting the tables.
    from cfspark.fit.reg_search import choose_reg

    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double")
    settings = CollaborativeFilter(**{**PARAMS, "regParam": "auto"}).fit_settings()
    _, found = choose_reg(settings, df, with_factors=True)
    users, items, rows = found["factors"]
    assert rows == (users.count(), items.count()) and rows[0] > 100 and rows[1] > 50
    assert "factor_rows" not in found and all(len(row) == 3 for row in users.collect())
    users.unpersist(), items.unpersist()


def test_earlier_ids_of_another_type_are_taken_as_the_datas(spark):
    # A model fitted on string ids warm-starts a fit on integer ids: "7" and "12" are the ids
    # 7 and 12, and "x" matches none, rather than failing the cast. The other way, the integer
    # ids 1 and 3 of an earlier model are the string ids "1" and "3" (hashed: those the data has).
    from types import SimpleNamespace

    factors = spark.createDataFrame(
        [("12", [1.0, 2.0], 0.5), ("x", [3.0, 4.0], 0.25), ("7", [5.0, 6.0], 0.125)],
        "user string, features array<double>, bias double",
    )
    blocks = SimpleNamespace(side=lambda side: Side("user", T.LongType(), None, None))
    values, features, bias = _inline_one(blocks, "user", factors, 2)
    assert values.tolist() == [7, 12] and features.tolist() == [[5.0, 6.0], [1.0, 2.0]]
    assert bias.tolist() == [0.125, 0.5]

    factors = spark.createDataFrame(
        [(1, [1.0, 2.0], 0.5), (2, [3.0, 4.0], 0.25), (3, [5.0, 6.0], 0.125)],
        "user long, features array<double>, bias double",
    )
    entities = spark.createDataFrame([("3", 30), ("1", 10), ("y", 99)], "user string, value long")
    blocks = SimpleNamespace(side=lambda side: Side("user", T.StringType(), entities, None))
    values, features, bias = _inline_one(blocks, "user", factors, 2)
    assert values.tolist() == [10, 30] and features.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert bias.tolist() == [0.5, 0.125]


@pytest.mark.slow
def test_a_warm_start_finds_string_ids_in_other_blocks(spark, planted):
    # Three iterations, then one more warm-started with other block counts, equal four cold
    # ones: every earlier factor reached its id through the index read back from the blocks.
    rows = [(f"user-{u}", f"{i:03d}", r) for u, i, r in planted.rows()]
    df = spark.createDataFrame(rows, "user string, item string, rating double").cache()
    params = {**PARAMS, "optimizer": "newton"}
    first = CollaborativeFilter(numUserBlocks=3, numItemBlocks=2, **{**params, "maxIter": 3}).fit_validated(df)
    warm = CollaborativeFilter(numUserBlocks=2, numItemBlocks=3, **{**params, "maxIter": 1}, initialModel=first)
    warm = warm.fit_validated(df)
    # The warm start keeps the blocks it decodes, as the init pass does: no half-step misses them.
    assert [h["cache_misses"] for h in warm.history] == [0]
    cold = CollaborativeFilter(numUserBlocks=1, numItemBlocks=1, **{**params, "maxIter": 4}).fit_validated(df)
    for side in ("user", "item"):
        a, b = (_factors(getattr(m, f"{side}_factors")) for m in (cold, warm))
        keys = sorted(a)
        assert keys == sorted(b)
        np.testing.assert_allclose([b[k] for k in keys], [a[k] for k in keys], rtol=1e-8, atol=1e-12)
    for m in (first, warm, cold):
        m.unpersist()
    df.unpersist()


def test_each_block_has_a_partition_of_its_own(spark, planted):
    """Keyed by the block number, Spark's hash partitioning put both of 2 blocks in one
    partition (one task did both half-steps); keyed by partition_key, block b is partition b."""
    for n in (2, 3, 8, 64):
        keys = partitioning.partition_keys(n)
        assert sorted(np.mod(murmur3(np.array(keys, np.int32), wide=False).astype(np.int64), n)) == list(range(n))
    n = 8
    rows = spark.range(n).select(F.col("id").cast("int").alias("block"))
    placed = rows.withColumn(partitioning.PART, partitioning.partition_key(F.col("block"), n))
    got = placed.repartition(n, partitioning.PART).select("block", F.spark_partition_id().alias("p")).collect()
    assert sorted((r.block, r.p) for r in got) == [(b, b) for b in range(n)]
    naive = rows.repartition(n, "block").select(F.spark_partition_id().alias("p")).distinct().count()
    assert naive < n  # what keying by the block number did
    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double")
    blocks, stats, _ = setup(CollaborativeFilter(rank=2, numUserBlocks=2, numItemBlocks=3).fit_settings(), df)
    # Packed in one exchange: user block b in partition b, item block b in partition 2 + b.
    where = blocks.packed.select("side", "block", F.spark_partition_id().alias("p")).collect()
    assert sorted((r.side, r.block, r.p) for r in where) == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3), (1, 2, 4)]
    where = blocks.in_place("item").select(F.col("block"), F.spark_partition_id().alias("p")).collect()
    assert sorted((r.block, r.p) for r in where) == [(0, 0), (1, 1), (2, 2)]
    blocks.unpersist(), stats.unpersist()


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_the_targets_join_broadcasts_a_small_item_table_and_gives_what_a_shuffle_gives(
    spark, planted, capsys, monkeypatch, loss
):
    """Joined to a broadcast item table, the ratings do not move (no Exchange over them);
    past targets.BROADCAST_ITEMS Spark plans the join itself; both give the same targets."""
    from cfspark.fit import targets as targets_module

    rows = planted.rows() if loss == "mse" else [(u, i, float(r > 0)) for u, i, r in planted.rows()]
    df = spark.createDataFrame(rows, "user long, item long, rating double").cache()
    settings = CollaborativeFilter(loss=loss, exposure=False).fit_settings()

    def targets_and_plan(limit: int) -> tuple[list, str]:
        monkeypatch.setattr(targets_module, "BROADCAST_ITEMS", limit)
        prepared = prepare(settings, df)
        capsys.readouterr()
        prepared.targets.explain()
        plan = capsys.readouterr().out
        got = sorted(tuple(r) for r in prepared.targets.collect())
        prepared.item_stats.unpersist()
        return got, plan

    broadcast, plan = targets_and_plan(10**6)
    # Past the limit, the join is Spark's to plan; with its own broadcasts off too, it shuffles.
    threshold = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        shuffled, fallback = targets_and_plan(0)
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", threshold)
    assert "BroadcastHashJoin" in plan and "SortMergeJoin" not in plan, plan
    assert "BroadcastHashJoin" not in fallback and "SortMergeJoin" in fallback, fallback
    assert len(broadcast) == len(rows) and broadcast == shuffled
    targets_y = {(u, i): y for u, i, y, *_ in broadcast}
    u, i, r = rows[0]
    expected = r - planted_mean(rows, i, settings) if loss == "mse" else r  # a closed form for one rating
    assert targets_y[(u, i)] == pytest.approx(expected, rel=1e-12)
    df.unpersist()


def planted_mean(rows: list, item: int, settings) -> float:
    """μ_i shrunk towards the global mean g by meanPrior pseudo-ratings; under "auto" by the
    method of moments' σ²/τ² over the items (kernels/priors.py)."""
    g = sum(r for _, _, r in rows) / len(rows)
    mine = [r for _, i, r in rows if i == item]
    m = settings.meanPrior
    if m == "auto":
        codes = {i: k for k, i in enumerate(sorted({i for _, i, _ in rows}))}
        group = np.array([codes[i] for _, i, _ in rows])
        m = prior_from_rows(group, np.array([r for _, _, r in rows], dtype=float), None, len(codes))
    return (sum(mine) + m * g) / (len(mine) + m)


def test_prepare_finds_the_global_mean_and_counts_from_the_item_sums(spark):
    """μ_i = (Σ a·r + m·g) / (Σ a + m) with g = Σ a·r / Σ a over all ratings, the same whether g
    is given or found from the item sums; the item and rating counts come with them."""
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 40, 600), rng.integers(0, 25, 600)
    rating, weight = rng.normal(3.0, 1.0, 600), rng.uniform(0.5, 2.0, 600)
    rows = list({(int(u), int(i)): (int(u), int(i), float(r), float(w))
                 for u, i, r, w in zip(users, items, rating, weight, strict=True)}.values())  # fmt: skip
    df = spark.createDataFrame(rows, "user long, item long, rating double, weight double")
    u, i, r, w = (np.array(c) for c in zip(*rows, strict=True))
    g, m = (w * r).sum() / w.sum(), 5.0
    expected = {int(k): ((w * r)[i == k].sum() + m * g) / (w[i == k].sum() + m) for k in np.unique(i)}
    settings = CollaborativeFilter(meanPrior=m, weightCol="weight").fit_settings()
    for given in (None, g):
        prepared = prepare(settings, df, given)
        assert prepared.global_baseline == pytest.approx(g, rel=1e-12)
        assert prepared.num_ratings == len(rows)
        got = {row.item: row.item_mean for row in prepared.item_stats.collect()}
        assert got.keys() == expected.keys()
        assert all(got[k] == pytest.approx(v, rel=1e-12) for k, v in expected.items())
        prepared.item_stats.unpersist()


def test_one_job_plans_a_shuffle_without_adaptive_stages_and_restores_the_session(spark, capsys):
    # Inside one_job a shuffle is planned as a stage of the job that reads it (no AdaptiveSparkPlan,
    # whose query stages run as jobs of their own); the session's setting comes back, also on failure.
    def shuffled():  # a fresh DataFrame each time: a DataFrame keeps the plan it was first given
        return spark.range(8).withColumn("part", F.col("id") % 2).repartition(2, "part")

    key = "spark.sql.adaptive.enabled"
    spark.conf.unset(key)
    with one_job(spark):
        shuffled().explain()
        assert spark.conf.get(key) == "false"
    assert "AdaptiveSparkPlan" not in capsys.readouterr().out
    assert spark.conf.get(key, None) is None  # unset again, not set to a value
    spark.conf.set(key, "true")
    with pytest.raises(RuntimeError, match="a failed query"), one_job(spark):
        raise RuntimeError("a failed query")
    assert spark.conf.get(key) == "true"
    shuffled().explain()
    assert "AdaptiveSparkPlan" in capsys.readouterr().out
    spark.conf.unset(key)


def test_overlapping_one_job_blocks_restore_the_session_once_the_last_one_leaves(spark):
    """Blocks that overlap without nesting (a warm start's two sides, each in its thread, say):
    adaptive execution stays off until the last one leaves, then the session's value returns."""
    key = "spark.sql.adaptive.enabled"
    spark.conf.set(key, "true")
    first, second = one_job(spark), one_job(spark)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert spark.conf.get(key) == "false"  # the second block is still planning
    second.__exit__(None, None, None)
    assert spark.conf.get(key) == "true"
    spark.conf.unset(key)


def test_narrow_rows_bounds_arrow_batches_by_rows_alone_unless_no_row_bound_is_set(spark):
    """Inside narrow_rows a job sends Python batches of maxRecordsPerBatch rows, whatever the
    byte limit; with no row bound (0) the byte limit stays; the session's values come back."""

    def batch_rows(batches):
        for batch in batches:
            yield pa.RecordBatch.from_pydict({"rows": pa.array([batch.num_rows], pa.int64())})

    def sizes() -> list[int]:
        rows = spark.range(0, 2000, 1, 1).select(F.col("id"), (F.col("id") * 0.5).alias("y"))
        return sorted({row.rows for row in rows.mapInArrow(batch_rows, "rows long").collect()})

    rows_key, bytes_key = "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.execution.arrow.maxBytesPerBatch"
    spark.conf.set(rows_key, "500")
    spark.conf.set(bytes_key, "2048")  # about 128 rows of two 8-byte columns
    try:
        assert max(sizes()) < 500
        with narrow_rows(spark):
            assert sizes() == [500]
        assert max(sizes()) < 500 and spark.conf.get(bytes_key) == "2048"
        spark.conf.set(rows_key, "0")
        with narrow_rows(spark):
            assert max(sizes()) < 500 and spark.conf.get(bytes_key) == "2048"
    finally:
        spark.conf.unset(rows_key)
        spark.conf.unset(bytes_key)


def test_cache_plain_stores_the_columns_unencoded_and_leaves_the_session_as_it_was(spark):
    """A column of long runs, which the default cache encodes to almost nothing, takes its full
    8 bytes a row under cache_plain; the session's setting is untouched."""

    probe = "cache_plain_probe"  # names this test's cache among any others the session holds

    def cached_bytes(df) -> int:
        df.count()
        infos = spark.sparkContext._jsc.sc().getRDDStorageInfo()
        size = sum(info.memSize() for info in infos if probe in info.name())
        df.unpersist(blocking=True)
        return size

    def runs():  # a new plan each time: a plan already cached would be found, not cached again
        return spark.range(0, 200_000, 1, 1).select(F.floor(F.col("id") / 10_000).alias(probe))

    key = "spark.sql.inMemoryColumnarStorage.compressed"
    # Settings under which cache() keeps the live session in its plan, not a copy, unless told.
    live = {"spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
            "spark.sql.sources.bucketing.autoBucketedScan.enabled": "false"}  # fmt: skip
    spark.conf.set(key, "true")
    try:
        encoded, plain = cached_bytes(runs().cache()), cached_bytes(cache_plain(runs()))
        assert spark.conf.get(key) == "true"
        assert plain >= 8 * 200_000 > 20 * encoded
        for name, value in live.items():
            spark.conf.set(name, value)
        assert cached_bytes(cache_plain(runs())) == plain
        assert {name: spark.conf.get(name) for name in live} == live
    finally:
        for name in (key, *live):
            spark.conf.unset(name)


def test_unreduced_groups_plans_one_aggregation_after_the_shuffle_and_the_same_counts(spark):
    """Inside unreduced_groups a grouped count has no partial count before its shuffle, and
    counts what the two-phase plan counts; the session's setting is untouched."""
    pairs = spark.range(0, 4_000, 1, 3).select((F.col("id") % 7).alias("u"), (F.col("id") % 500).alias("i"))

    def run() -> tuple[list, str]:
        counted = pairs.groupBy("u", "i").count()
        rows = sorted(counted.collect())
        return rows, counted._jdf.queryExecution().executedPlan().toString()

    two_phase, plan = run()
    assert "partial_count" in plan
    with unreduced_groups(spark):
        one_phase, bypassed = run()
    # Spark 4.3 brought the setting; earlier versions ignore it and plan both phases.
    bypassable = tuple(int(v) for v in pyspark.__version__.split(".")[:2]) >= (4, 3)
    assert ("partial_count" not in bypassed) == bypassable and "count(1)" in bypassed
    assert one_phase == two_phase and len(one_phase) == 3_500 and {r["count"] for r in one_phase} == {1, 2}
    assert spark.conf.get("spark.sql.execution.bypassPartialAggregation", None) is None


@pytest.mark.parametrize(("loss", "weighted"), [("mse", False), ("mse", True), ("bce", False)])
def test_only_the_target_columns_that_can_hold_values_cross_to_the_chunking(spark, planted, loss, weighted):
    """Targets.carries names the offset (bce's item offsets) and the weight (a weight column)
    where they can hold a value, and every other such column is null in every row; blocks
    built from the carried columns alone equal those built from all of them."""
    rows = [(u, i, r if loss == "mse" else float(r > 0), 1.0 + (u % 3)) for u, i, r in planted.rows()]
    df = spark.createDataFrame(rows, "user long, item long, rating double, weight double")
    df = df if weighted else df.drop("weight")
    settings = CollaborativeFilter(loss=loss, exposure=False, weightCol="weight" if weighted else None).fit_settings()
    prepared = prepare(settings, df)
    expected = (*(("offset",) if loss == "bce" else ()), *(("weight",) if weighted else ()))
    assert prepared.carries == expected
    for name in {"offset", "weight"} - set(expected):
        assert prepared.targets.filter(F.col(name).isNotNull()).count() == 0
    def packed(carries: tuple[str, ...]) -> list:
        blocks = build_blocks(prepared.targets, prepared.baseline, num_user_blocks=2, num_item_blocks=3, seed=7,
                              num_ratings=len(rows), carries=carries)  # fmt: skip
        both = [sorted(map(tuple, side.drop("part").collect())) for side in (blocks.users, blocks.items)]
        blocks.unpersist()
        return both

    assert packed(prepared.carries) == packed(("offset", "weight"))
    prepared.item_stats.unpersist()


def test_prepare_takes_the_item_means_from_the_sums_target_stats_kept_and_a_fit_releases_them(
    spark, planted, monkeypatch
):
    """The item sums target_stats keeps (keep_sums) give prepare() the item means it finds from
    the ratings; sums it is given are the ones it uses (sums of ratings + 1 shift each μ_i by
    Σa / (Σa + m)); and a fit keeps them only while it runs."""
    from cfspark.fit import one_task, paths
    from cfspark.fit.targets import target_stats

    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double").cache()
    settings = CollaborativeFilter(meanPrior=4.0).fit_settings()
    stats = target_stats(settings, df, keep_sums=True)
    # A second call that keeps nothing leaves the first one's cached sums as they are.
    assert target_stats(settings, df).item_sums is None and stats.item_sums.storageLevel.useMemory
    fresh, kept = prepare(settings, df, stats.global_mean), prepare(settings, df, stats.global_mean, stats.item_sums)
    means = {r.item: (r.item_mean, r.ratings) for r in fresh.item_stats.collect()}
    assert {r.item: (r.item_mean, r.ratings) for r in kept.item_stats.collect()} == means
    shifted_sums = target_stats(settings, df.withColumn("rating", F.col("rating") + 1.0), keep_sums=True).item_sums
    shifted = prepare(settings, df, stats.global_mean, shifted_sums)
    for r in shifted.item_stats.collect():
        mean, n = means[r.item]
        assert r.item_mean == pytest.approx(mean + n / (n + 4.0), rel=1e-12)
    for table in (fresh.item_stats, kept.item_stats, shifted.item_stats, stats.item_sums, shifted_sums):
        table.unpersist()

    seen, given = [], []
    real_stats, real_prepare = paths.target_stats, one_task.prepare
    monkeypatch.setattr(paths, "target_stats", lambda *a, **k: seen.append(real_stats(*a, **k)) or seen[-1])
    monkeypatch.setattr(one_task, "prepare", lambda *a: given.append(a[3]) or real_prepare(*a))
    # λ_b fixed: with it automatic, the fit would take the item means in the search's own task.
    CollaborativeFilter(meanPrior=4.0, regParam=0.1, biasReg=5.0, maxIter=2).fit(df)
    assert len(seen) == 1 and len(given) == 1 and given[0] is seen[0].item_sums is not None
    assert seen[0].item_sums.storageLevel.useMemory is False  # released as the fit returned
    df.unpersist()


def test_users_none_of_whom_can_be_heavy_are_hashed_without_counting_and_heavy_ones_are_counted_and_placed(
    spark, monkeypatch
):
    """Integer user ids cut by hashed block: when the chunks' sizes bound every user under the
    heavy threshold, hashing places them all, as counting them would (no count is taken);
    users skewed past it are counted and the heaviest placed by load."""
    from cfspark.blocks import build

    settings = CollaborativeFilter(rank=2, numUserBlocks=4, numItemBlocks=2).fit_settings()
    # 20,000 users of 5 ratings: the threshold is 25 ratings (0.1 % of a block's 25,000). A
    # user's k-th rating has an item among k·100 … k·100 + 99: no pair repeats (the pack refuses one).
    item = F.floor(F.col("id") / 20_000) * 100 + F.pmod(F.hash("id"), F.lit(100))
    light = spark.range(100_000).select(
        (F.col("id") % 20_000).alias("user"), item.cast("long").alias("item"),
        (F.pmod(F.hash("id", F.lit(1)), F.lit(5)) + 1).cast("double").alias("rating"),
    ).cache()  # fmt: skip
    real_counted = build._counted
    monkeypatch.setattr(build, "_counted", lambda *a: pytest.fail("counted users that cannot be heavy"))
    blocks, stats, _ = setup(settings, light)
    users = blocks.user_side.placement
    per_user = entity_counts(light, "user")
    (counted,) = placement.place_sides([(per_user, "user", 4)], total=light.count(), max_block_ratings=10**7)
    assert len(users.heavy) == 0 and len(counted.heavy) == 0
    np.testing.assert_array_equal(users.loads, counted.loads)
    assert users.heaviest >= counted.heaviest  # a bound, from the chunks
    blocks.unpersist(), stats.unpersist(), light.unpersist()

    # The planted items' popularity skew, given to the users instead.
    p = planted_ratings(n_users=400, n_items=300, rank=2, density=0.03, noise=0.5, seed=1, popularity_sd=1.5)
    heavy = spark.createDataFrame(p.rows(), "item long, user long, rating double").cache()
    monkeypatch.setattr(build, "_counted", real_counted)
    blocks, stats, _ = setup(settings, heavy)
    users = blocks.user_side.placement
    (counted,) = placement.place_sides([(entity_counts(heavy, "user"), "user", 4)], total=heavy.count(),
                                       max_block_ratings=10**7)  # fmt: skip
    assert len(users.heavy) > 0
    np.testing.assert_array_equal(users.heavy, counted.heavy)
    np.testing.assert_array_equal(users.loads, counted.loads)
    loads = {r.block: int(np.frombuffer(r.row_ptr, dtype=np.int64)[-1]) for r in blocks.users.collect()}
    assert [loads[b] for b in range(4)] == list(users.loads)
    blocks.unpersist(), stats.unpersist(), heavy.unpersist()


def test_the_chunking_job_fills_its_cache_and_sums_the_chunks_sizes(spark, planted):
    """The one job that cuts the ratings into chunks and caches them also returns every chunk's
    sizes, which placing the users by hashing sums per block: the cached chunks' own, and
    every rating counted once on each side."""
    from cfspark.blocks import build

    df = spark.createDataFrame(planted.rows(), "user long, item long, rating double")
    prepared = prepare(CollaborativeFilter(**PARAMS).fit_settings(), df)
    targets = prepared.targets.cache()  # the item means' broadcast is a job of its own: taken here
    targets.count()
    dtypes = {name: targets.schema[name].dataType for name in ("user", "item")}
    rules = {"user": (3, 7, None), "item": (2, 8, None)}
    (chunks, sizes), jobs = jobs_of(spark, lambda: build._chunk(targets, dtypes, rules, prepared.carries))
    assert jobs == 1 and chunks.is_cached
    cells = chunks.select("side", "block", "ratings", "most").collect()
    assert sorted(zip(*sizes.to_pydict().values(), strict=True)) == sorted(map(tuple, cells))
    for side, blocks in ((0, 3), (1, 2)):
        # A total this large puts the heavy threshold above any bound: hashing places them all.
        placed = build._placed_by_hashing(sizes, side, "user", blocks, 10**10, 10**9)
        mine = [r for r in cells if r.side == side]
        loads = [sum(r.ratings for r in mine if r.block == b) for b in range(blocks)]
        np.testing.assert_array_equal(placed.loads, loads)
        assert sum(loads) == df.count() and placed.heaviest == max(
            sum(r.most for r in mine if r.block == b) for b in range(blocks)
        )
    chunks.unpersist(), targets.unpersist(), prepared.item_stats.unpersist()


def test_hashed_placement_stands_only_where_no_entity_can_be_heavy_and_no_block_is_over_the_limit():
    # 8M ratings in 4 blocks: heavy means over 0.1 % of a mean block's 2M, 2,000 ratings.
    loads, total = np.array([2_000_000, 2_100_000, 1_900_000, 2_000_000]), 8_000_000
    assert placement.heavy_threshold(total, 4) == 2000
    at = np.array([2000, 1500, 2000, 10])
    p = placement.hashed_placement("user", loads, at, total=total, max_block_ratings=2_100_000)
    assert p is not None and len(p.heavy) == 0 and len(p.heavy_blocks) == 0 and p.heaviest == 2000
    np.testing.assert_array_equal(p.loads, loads)
    np.testing.assert_array_equal(p.hashed_loads, loads)
    over = at + np.array([0, 0, 1, 0])  # one block's bound past the threshold: the counts decide
    assert placement.hashed_placement("user", loads, over, total=total, max_block_ratings=2_100_000) is None
    assert placement.hashed_placement("user", loads, at, total=total, max_block_ratings=2_099_999) is None
