"""InBlock packing in numpy: the OutBlock of one side lines up with the cols of the other,
though neither side knows the other's local indices, only the 64-bit values of its ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cfspark.blocks import inblock
from cfspark.blocks.codec import cell
from cfspark.blocks.hashing import hashed_blocks, xxhash64
from cfspark.blocks.inblock import ChunkSide, chunk_ratings, index_rows, pack_arrays, pack_chunks
from cfspark.blocks.reroute import chunk_counts, reroute_chunks
from cfspark.kernels.order import stable_order


def _entities(rng, n: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct int64 values spread over the whole range (negative ones too), and a block each."""
    values = rng.choice(np.arange(-(2**40), 2**40, 2**27), size=n, replace=False) + rng.integers(0, 2**20, n)
    values[:2] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    return values.astype(np.int64), rng.integers(0, blocks, n).astype(np.int32)


def test_messages_assembled_in_src_order_reproduce_every_rating():
    rng = np.random.default_rng(0)
    n_ub, n_ib = 3, 2
    users, user_block = _entities(rng, 12, n_ub)
    items, item_block = _entities(rng, 10, n_ib)
    pairs = {(u, i) for u in range(12) for i in range(10) if rng.random() < 0.4}
    pairs |= {(u, u % 10) for u in range(12)} | {(i, i) for i in range(10)}  # nobody without a rating
    u, i = np.array(sorted(pairs)).T
    rng.shuffle(order := np.arange(len(u)))  # packing must not depend on input order
    u, i = u[order], i[order]
    y = rng.normal(size=len(u))
    user_key, item_key = users * 7 + 1, items * 3 - 2

    user_blocks, item_blocks = {}, {}
    for ub in range(n_ub):
        sel = user_block[u] == ub
        user_blocks[ub] = pack_arrays(users[u[sel]], item_block[i[sel]], items[i[sel]], y[sel], user_key[u[sel]])
    for ib in range(n_ib):
        sel = item_block[i] == ib
        item_blocks[ib] = pack_arrays(items[i[sel]], user_block[u[sel]], users[u[sel]], y[sel], item_key[i[sel]])

    # Each entity's "vector" is its position in users / items; a block holds its own in local order.
    for own_blocks, other_blocks, own, other, own_block, ru, ri, key in (
        (user_blocks, item_blocks, users, items, user_block, u, i, user_key),
        (item_blocks, user_blocks, items, users, item_block, i, u, item_key),
    ):
        for b, blk in own_blocks.items():
            mine = np.flatnonzero(own_block == b)
            np.testing.assert_array_equal(blk["ids"], np.sort(own[mine]))  # local = rank of the value
            own_position = {int(v): j for j, v in enumerate(own)}
            np.testing.assert_array_equal(blk["keys"], [key[own_position[int(v)]] for v in blk["ids"]])
            position = {int(v): j for j, v in enumerate(other)}
            msgs = {}
            for s, ob in other_blocks.items():
                hit = np.flatnonzero(ob["out_dest"] == b)
                if len(hit):
                    j = hit[0]
                    sent = ob["ids"][ob["out_idx"][ob["out_ptr"][j] : ob["out_ptr"][j + 1]]]
                    msgs[s] = np.array([position[int(v)] for v in sent])
            np.testing.assert_array_equal(blk["src"], sorted(msgs))
            np.testing.assert_array_equal(np.diff(blk["src_ptr"]), [len(msgs[s]) for s in blk["src"]])
            assembled = np.concatenate([msgs[s] for s in blk["src"]])
            np.testing.assert_array_equal(other[assembled], blk["col_ids"])  # col_ids names each assembled row
            rows = np.repeat(blk["ids"], np.diff(blk["row_ptr"]))
            got = sorted(zip(rows.tolist(), other[assembled[blk["cols"]]].tolist(), blk["y"].tolist(), strict=True))
            sel = own_block[ru] == b
            assert got == sorted(zip(own[ru[sel]].tolist(), other[ri[sel]].tolist(), y[sel].tolist(), strict=True))


def test_each_rows_ratings_come_in_column_order():
    # A row's gathers then walk the assembled matrix forwards.
    rng = np.random.default_rng(1)
    own, other = rng.integers(0, 5, 200), rng.integers(-(10**12), 10**12, 200)
    for blocks in (1, 2, 7):
        packed = pack_arrays(own, (np.abs(other) % blocks).astype(np.int32), other, rng.normal(size=200), own * 2)
        for r in range(packed["n"]):
            lo, hi = packed["row_ptr"][r : r + 2]
            assert np.all(np.diff(packed["cols"][lo:hi]) > 0)


@pytest.mark.parametrize("high", [50, 2**40])
def test_stable_order_equals_lexsort(high):
    # Narrow keys are packed into one int64 and argsorted; wide ones fall back to lexsort.
    rng = np.random.default_rng(int(np.log2(high)))
    keys = [rng.integers(0, h, 5_000) for h in (high, 7, high)]
    given = [k.copy() for k in keys]
    np.testing.assert_array_equal(stable_order(*keys), np.lexsort(keys[::-1]))
    for k, g in zip(keys, given, strict=True):  # the keys are packed in a copy, never in place
        np.testing.assert_array_equal(k, g)
    empty = np.empty(0, np.int32)
    assert stable_order(empty, empty).tolist() == []


def _ratings(rng, n: int) -> dict[str, np.ndarray]:
    i = rng.permutation(n)
    user, item = (i % 60) * 1_000_003 - 7, (i // 7 % 25) * 10**12
    return {
        "user_block": (user % 3).astype(np.int32),
        "user_id": user.astype(np.int64),
        "user_key": user * 11 + 1,
        "item_block": (item // 10**12 % 2).astype(np.int32),
        "item_id": item.astype(np.int64),
        "item_key": item + 5,
        "y": rng.normal(size=n),
    }


def test_chunked_packing_equals_packing_all_rows_at_once():
    # Two partitions cut both sides' chunks; merging a block's chunks packs it as a whole would.
    # The ratings carry weights and no offsets: the weights are packed, the offsets stay null.
    rows = _ratings(np.random.default_rng(3), 400)
    weight = np.random.default_rng(30).uniform(0.1, 3.0, 400)
    batch = pa.RecordBatch.from_pydict({**rows, "offset": pa.nulls(400, pa.float64()), "weight": weight})
    assert list(chunk_ratings(iter([]))) == []
    chunks = pa.Table.from_batches([*chunk_ratings(iter([batch.slice(0, 150)])), *chunk_ratings(iter([batch[150:]]))])
    for side, own, other, blocks in ((0, "user", "item", 3), (1, "item", "user", 2)):
        for b in range(blocks):
            mine = chunks.filter(pc.and_(pc.equal(chunks["side"], side), pc.equal(chunks["block"], b)))
            assert mine.num_rows == 2  # one chunk from each partition
            packed = pack_chunks(mine)
            sel = rows[f"{own}_block"] == b
            direct = pack_arrays(
                *(rows[c][sel] for c in (f"{own}_id", f"{other}_block", f"{other}_id", "y", f"{own}_key")),
                weight=weight[sel],
            )
            assert packed.column("n")[0].as_py() == direct.pop("n") == len(np.unique(rows[f"{own}_id"][sel]))
            assert packed.column("offset")[0].as_py() is None and direct.pop("offset") is None
            for name, expected in direct.items():
                np.testing.assert_array_equal(cell(packed, name, 0, expected.dtype), expected, err_msg=name)


def test_the_pack_body_packs_each_block_of_its_partition_as_a_group_of_its_own():
    """The mapInArrow body of setup's pack job, given chunks of several blocks of both sides in
    one partition (split across batches, an empty one among them, blocks interleaved), gives
    each block the InBlock that pack_chunks gives its chunks alone, keyed by its partition
    and side; a partition with no chunks gives nothing."""
    from cfspark.blocks.build import _packer
    from cfspark.blocks.partitioning import partition_keys

    rows = _ratings(np.random.default_rng(5), 300)
    # Distinct pairs, as validation leaves them: a repeated pair's ratings would pack in chunk order.
    _, first = np.unique(np.stack([rows["user_id"], rows["item_id"]]), axis=1, return_index=True)
    rows = {name: column[np.sort(first)] for name, column in rows.items()}
    nulls = pa.nulls(len(first), pa.float64())
    batch = pa.RecordBatch.from_pydict({**rows, "offset": nulls, "weight": nulls})
    chunks = pa.Table.from_batches([*chunk_ratings(iter([batch.slice(0, 100)])), *chunk_ratings(iter([batch[100:]]))])
    mixed = chunks.take(np.random.default_rng(6).permutation(chunks.num_rows)).combine_chunks()
    batches = [mixed.slice(0, 3), mixed.slice(3, 0), mixed.slice(3)]
    batches = [t.to_batches()[0] if t.num_rows else pa.RecordBatch.from_pylist([], schema=t.schema) for t in batches]
    pack = _packer((inblock._NO_ROUTE, inblock._NO_ROUTE), (3, 2))
    out = pa.Table.from_batches(list(pack(iter(batches))))
    assert list(pack(iter([]))) == []
    assert sorted(zip(out["side"].to_pylist(), out["block"].to_pylist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1)
    ]
    for r in range(out.num_rows):
        side, block = out["side"][r].as_py(), out["block"][r].as_py()
        alone = pack_chunks(chunks.filter(pc.and_(pc.equal(chunks["side"], side), pc.equal(chunks["block"], block))))
        assert out["part"][r].as_py() == partition_keys((3, 2)[side])[block]
        for name in alone.column_names:
            assert out[name][r].as_py() == alone[name][0].as_py(), name


def test_ratings_cut_in_slices_as_they_arrive_give_the_chunks_of_one_cut(monkeypatch):
    # Cut in slices of 64 ratings as the batches arrive, each block's chunk holds the same
    # cells, byte for byte, as cutting the whole partition at once; a null weight in a late
    # slice drops the weights of every chunk, as it does cut at once.
    rows = _ratings(np.random.default_rng(6), 500)
    weight = np.random.default_rng(60).uniform(0.1, 3.0, 500)
    batches = pa.Table.from_pydict({**rows, "weight": weight}).to_batches(max_chunksize=50)
    with_null = pa.Table.from_pydict({**rows, "weight": pa.array([*weight[:-1], None])}).to_batches(50)
    whole = [pa.Table.from_batches(list(chunk_ratings(iter(b)))) for b in (batches, with_null)]
    monkeypatch.setattr(inblock, "CUT_ROWS", 64)
    sliced = [pa.Table.from_batches(list(chunk_ratings(iter(b)))) for b in (batches, with_null)]
    assert sliced[0].equals(whole[0]) and sliced[1].equals(whole[1]) and whole[0].num_rows == 5
    assert whole[0].column("weight").null_count == 0 and whole[1].column("weight").null_count == 5


def test_placed_entities_are_routed_to_their_block_on_both_sides():
    rows = _ratings(np.random.default_rng(4), 300)
    batch = pa.RecordBatch.from_pydict({**rows, "offset": pa.array(np.linspace(-1, 1, 300))})
    heavy_user, heavy_item = np.int64(rows["user_id"][0]), np.int64(rows["item_id"][0])
    routes = (
        (np.array([heavy_user], np.int64), np.array([(rows["user_block"][0] + 1) % 3], np.int32)),
        (np.array([heavy_item], np.int64), np.array([(rows["item_block"][0] + 1) % 2], np.int32)),
    )
    sides = tuple(ChunkSide(heavy=values, heavy_blocks=blocks) for values, blocks in routes)
    chunks = pa.Table.from_batches(list(chunk_ratings(iter([batch]), sides=sides)))
    for side, value, route in ((0, heavy_user, routes[0]), (1, heavy_item, routes[1])):
        holders = [
            int(chunks["block"][r].as_py())
            for r in range(chunks.num_rows)
            if chunks["side"][r].as_py() == side and value in cell(chunks, "ids", r, np.int64)
        ]
        assert holders == [int(route[1][0])]  # all its ratings, in the placed block only
        # The other side sees it in that block too, so the messages line up.
        for r in range(chunks.num_rows):
            if chunks["side"][r].as_py() != side:
                others, where = cell(chunks, "other_ids", r, np.int64), cell(chunks, "other_block", r, np.int32)
                assert np.all(where[others == value] == route[1][0])
    total = sum(len(cell(chunks, "y", r, np.float64)) for r in range(chunks.num_rows))
    assert total == 2 * 300


def test_index_rows_give_each_entity_its_block_and_local():
    ids = [np.array([-5, 3, 10**15], np.int64), np.array([7], np.int64)]
    batch = pa.RecordBatch.from_pydict({"block": pa.array([2, 0], pa.int32()), "ids": [a.tobytes() for a in ids]})
    out = pa.Table.from_batches(list(index_rows(iter([batch]))))
    assert out.to_pylist() == [
        {"value": -5, "block": 2, "local": 0},
        {"value": 3, "block": 2, "local": 1},
        {"value": 10**15, "block": 2, "local": 2},
        {"value": 7, "block": 0, "local": 0},
    ]


@pytest.mark.parametrize("wide", [False, True])
def test_integer_ids_are_hashed_in_the_task_as_their_columns_would_give_them(wide):
    # Integer ids need no block or key columns: the task computes Spark's hash and xxhash64.
    rows = _ratings(np.random.default_rng(5), 300)
    if not wide:
        rows["user_id"] //= 10**4  # 32-bit ids
        rows["item_id"] //= 10**4
    given = dict(rows)
    for side, n, seed in (("user", 3, 11), ("item", 2, 12)):
        given[f"{side}_block"] = hashed_blocks(rows[f"{side}_id"], n, wide=wide)
        given[f"{side}_key"] = xxhash64(rows[f"{side}_id"], seed, wide=wide)
    with_columns = pa.RecordBatch.from_pydict({**given, "offset": pa.nulls(300, pa.float64())})
    ids_only = pa.RecordBatch.from_pydict(
        {c: rows[c] for c in ("user_id", "item_id", "y")} | {"offset": pa.nulls(300, pa.float64())}
    )
    hashed = (ChunkSide(3, 11, wide), ChunkSide(2, 12, wide))
    a = pa.Table.from_batches(list(chunk_ratings(iter([with_columns]))))
    b = pa.Table.from_batches(list(chunk_ratings(iter([ids_only]), sides=hashed)))
    assert a.equals(b) and a.num_rows == 5


def test_chunks_cut_by_hashed_block_then_rerouted_pack_as_chunks_cut_by_the_placed_blocks():
    # Setup cuts by the hashed blocks before it places anything, counts from the chunks, moves
    # only the placed entities' cells, and routes the other side's blocks as it packs: the
    # InBlocks equal those of a cut that knew the placement from the start.
    rows = _ratings(np.random.default_rng(6), 500)
    batch = pa.RecordBatch.from_pydict({**rows, "offset": pa.array(np.linspace(-1, 1, 500))})
    parts = [batch.slice(0, 200), batch.slice(200)]
    routes = (
        (np.sort(np.unique(rows["user_id"])[[0, 5, 9]]), np.array([2, 0, 2], np.int32)),
        (np.unique(rows["item_id"])[[1, 3]], np.array([0, 0], np.int32)),
    )
    placed = tuple(ChunkSide(heavy=v, heavy_blocks=b) for v, b in routes)
    direct = pa.Table.from_batches([c for p in parts for c in chunk_ratings(iter([p]), sides=placed)])
    hashed = pa.Table.from_batches([c for p in parts for c in chunk_ratings(iter([p]))])
    counts = pa.Table.from_batches(list(chunk_counts(iter(hashed.to_batches()))))

    def where(table: pa.Table, side: int, block: int | None = None) -> pa.Table:
        mask = pc.equal(table["side"], side)
        return table.filter(mask if block is None else pc.and_(mask, pc.equal(table["block"], block)))

    for side, own in ((0, "user"), (1, "item")):
        got = {}
        for value, n in zip(*(where(counts, side)[c].to_pylist() for c in ("value", "ratings")), strict=True):
            got[value] = got.get(value, 0) + n
        values, expected = np.unique(rows[f"{own}_id"], return_counts=True)
        assert got == dict(zip(values.tolist(), expected.tolist(), strict=True))
        mine = where(hashed, side)
        # As Spark hands cells in (large_binary); the output is one schema, whatever passes through.
        large = pa.schema([pa.field(f.name, pa.large_binary()) if f.type == pa.binary() else f for f in mine.schema])
        given = mine.cast(large).to_batches()
        out = list(reroute_chunks(iter(given), routes[side]))
        assert len({b.schema for b in out}) == 1 and len(out) > len(given)  # passed through, and split
        moved = pa.Table.from_batches(out)
        assert moved.num_rows > mine.num_rows  # some chunks held a placed entity and were split
        for b in range(3 if side == 0 else 2):
            a, c = where(direct, side, b), where(moved, side, b)
            assert a.num_rows > 0 and c.num_rows > 0
            want, have = pack_chunks(a), pack_chunks(c, routes[1 - side])
            assert want.column_names == have.column_names
            for name in want.column_names:
                assert want.column(name).equals(have.column(name)), (side, b, name)
            # Each chunk's sizes, cut or moved: its ratings and the most that one own entity has;
            # a block's ratings add up the same either way.
            for table in (a, c):
                for r in range(table.num_rows):
                    own_idx = cell(table, "own", r, np.int32)
                    per_entity = np.bincount(own_idx, minlength=len(cell(table, "ids", r, np.int64)))
                    assert table["ratings"][r].as_py() == len(own_idx) > 0
                    assert table["most"][r].as_py() == per_entity.max()
            assert pc.sum(a["ratings"]).as_py() == pc.sum(c["ratings"]).as_py()


def test_binary_cells_from_the_arrays_buffers_equal_cells_of_their_bytes(monkeypatch):
    """codec.binary_column and arrow_rows encode what Python bytes through pa.array did, cell
    for cell: nulls, bytes, a strided view, an empty array, a matrix and a one-cell column
    that views its array; Spark's large_binary is honoured; past the offsets' reach, a refusal."""
    from cfspark.blocks import codec

    rng = np.random.default_rng(3)
    strided = np.arange(10, dtype=np.int32)[::3]
    values = [rng.normal(size=5), None, strided, b"xyz", np.empty(0), rng.normal(size=(4, 3))]
    as_bytes = [v if v is None or isinstance(v, bytes) else np.ascontiguousarray(v).tobytes() for v in values]
    column = codec.binary_column(values)
    column.validate(full=True)
    assert column.equals(pa.array(as_bytes, pa.binary())) and column.null_count == 1
    np.testing.assert_array_equal(cell(pa.table({"c": column}), "c", 2, np.int32), [0, 3, 6, 9])
    big = rng.normal(size=1000)
    one = codec.binary_column([big])
    assert np.frombuffer(one.buffers()[2], np.float64).ctypes.data == big.ctypes.data  # no copy
    schema = pa.schema([("n", pa.int32()), ("c", pa.binary()), ("w", pa.large_binary())])
    rows = [{"n": j, "c": v, "w": v} for j, v in enumerate(values)]
    expected = pa.Table.from_pylist([{"n": j, "c": b, "w": b} for j, b in enumerate(as_bytes)], schema=schema)
    assert codec.arrow_rows(rows, schema).equals(expected)
    monkeypatch.setattr(codec, "MAX_BINARY_BYTES", 40)
    with pytest.raises(ValueError, match="do not fit one binary column"):
        codec.binary_column([np.zeros(4), np.zeros(2)])
    # Rows whose cells pass a column's limit together come in chunks that each fit, as
    # from_pylist chunks them: the same table, two 16-byte cells of c to a batch of at most 40.
    wide = [{"n": j, "c": np.full(2, float(j)), "w": None if j % 2 else np.arange(1)} for j in range(7)]
    chunked = codec.arrow_rows(wide, schema)
    assert chunked.num_rows == 7 and [b.num_rows for b in chunked.to_batches()] == [2, 2, 2, 1]
    as_bytes = [{k: v.tobytes() if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in wide]
    assert chunked.equals(pa.Table.from_pylist(as_bytes, schema=schema))
    assert codec.arrow_rows([], schema).num_rows == 0
