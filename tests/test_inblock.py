"""InBlock packing in numpy: the OutBlock of one side lines up with the cols of the other."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cfspark.blocks.codec import cell
from cfspark.blocks.inblock import _sort_order, chunk_ratings, pack_arrays, pack_chunks


def test_messages_assembled_in_src_order_reproduce_every_rating():
    rng = np.random.default_rng(0)
    n_ub, n_ib = 3, 2
    users_per_block, items_per_block = [4, 3, 5], [6, 4]
    pairs = set()
    for ub, nu in enumerate(users_per_block):
        for u in range(nu):
            for ib, ni in enumerate(items_per_block):
                for i in range(ni):
                    if rng.random() < 0.4 or (i == u % ni and ib == u % n_ib) or (u == i % nu and ub == i % n_ub):
                        pairs.add((ub, u, ib, i))
    pairs = np.array(sorted(pairs))
    y = rng.normal(size=len(pairs))
    rng.shuffle(order := np.arange(len(pairs)))  # packing must not depend on input order
    pairs, y = pairs[order], y[order]

    user_blocks = {}
    for ub in range(n_ub):
        sel = pairs[:, 0] == ub
        user_blocks[ub] = pack_arrays(pairs[sel, 1], pairs[sel, 2], pairs[sel, 3], y[sel], pairs[sel, 1] * 10 + ub)
    item_blocks = {}
    for ib in range(n_ib):
        sel = pairs[:, 2] == ib
        item_blocks[ib] = pack_arrays(pairs[sel, 3], pairs[sel, 0], pairs[sel, 1], y[sel], pairs[sel, 3])

    # Give every entity a distinct "vector" (its global id) and route vectors from items to users.
    item_vec = {ib: np.array([100 * ib + i for i in range(n)], float) for ib, n in enumerate(items_per_block)}
    user_vec = {ub: np.array([1000 * ub + u for u in range(n)], float) for ub, n in enumerate(users_per_block)}
    for ub, blk in user_blocks.items():
        msgs = {}
        for ib, ob in item_blocks.items():
            hit = np.flatnonzero(ob["out_dest"] == ub)
            if len(hit):
                j = hit[0]
                msgs[ib] = item_vec[ib][ob["out_idx"][ob["out_ptr"][j] : ob["out_ptr"][j + 1]]]
        np.testing.assert_array_equal(blk["src"], sorted(msgs))
        assembled = np.concatenate([msgs[s] for s in blk["src"]])
        np.testing.assert_array_equal(np.diff(blk["src_ptr"]), [len(msgs[s]) for s in blk["src"]])
        rows = np.repeat(np.arange(blk["n"]), np.diff(blk["row_ptr"]))
        got = sorted(zip((1000 * ub + rows).tolist(), assembled[blk["cols"]].tolist(), blk["y"].tolist(), strict=True))
        sel = pairs[:, 0] == ub
        want = sorted(
            zip(
                (1000 * ub + pairs[sel, 1]).tolist(),
                (100 * pairs[sel, 2] + pairs[sel, 3]).tolist(),
                y[sel].tolist(),
                strict=True,
            )
        )
        assert got == want
        # col_local names the item behind each assembled row.
        np.testing.assert_array_equal(assembled % 100, blk["col_local"])
        np.testing.assert_array_equal(blk["keys"], np.arange(blk["n"]) * 10 + ub)
    for ib, blk in item_blocks.items():
        msgs = []
        for ub in blk["src"]:
            ob = user_blocks[ub]
            j = np.flatnonzero(ob["out_dest"] == ib)[0]
            msgs.append(user_vec[ub][ob["out_idx"][ob["out_ptr"][j] : ob["out_ptr"][j + 1]]])
        assembled = np.concatenate(msgs)
        rows = np.repeat(np.arange(blk["n"]), np.diff(blk["row_ptr"]))
        got = sorted(zip((100 * ib + rows).tolist(), assembled[blk["cols"]].tolist(), strict=True))
        sel = pairs[:, 2] == ib
        assert got == sorted(
            zip((100 * ib + pairs[sel, 3]).tolist(), (1000 * pairs[sel, 0] + pairs[sel, 1]).tolist(), strict=True)
        )


@pytest.mark.parametrize("high", [50, 2**40])
def test_sort_order_equals_lexsort(high):
    # Narrow keys are packed into one int64 and argsorted; wide ones fall back to lexsort.
    rng = np.random.default_rng(int(np.log2(high)))
    keys = [rng.integers(0, h, 5_000) for h in (high, 7, high)]
    np.testing.assert_array_equal(_sort_order(*keys), np.lexsort(keys[::-1]))


def test_chunked_packing_equals_packing_all_rows_at_once():
    # Two partitions cut both sides' chunks; merging a block's chunks packs it as a whole would.
    rng = np.random.default_rng(3)
    i = rng.permutation(400)
    rows = {  # every block of either side holds all its locals, as the index guarantees
        "user_block": (i % 3).astype(np.int32),
        "user_local": ((i // 3) % 20).astype(np.int32),
        "item_block": (i % 2).astype(np.int32),
        "item_local": ((i // 2) % 15).astype(np.int32),
        "y": rng.normal(size=400),
    }
    rows["user_key"] = rows["user_local"] * 1000 + rows["user_block"].astype(np.int64)
    rows["item_key"] = rows["item_local"] * 1000 + rows["item_block"].astype(np.int64)
    batch = pa.RecordBatch.from_pydict({**rows, "offset": pa.nulls(400, pa.float64())})
    assert list(chunk_ratings(iter([]))) == []
    chunks = pa.Table.from_batches([*chunk_ratings(iter([batch.slice(0, 150)])), *chunk_ratings(iter([batch[150:]]))])
    for side, own, other, blocks, n in ((0, "user", "item", 3, 20), (1, "item", "user", 2, 15)):
        for b in range(blocks):
            mine = chunks.filter(pc.and_(pc.equal(chunks["side"], side), pc.equal(chunks["block"], b)))
            assert mine.num_rows == 2  # one chunk from each partition
            packed = pack_chunks(mine)
            sel = rows[f"{own}_block"] == b
            direct = pack_arrays(
                *(rows[c][sel] for c in (f"{own}_local", f"{other}_block", f"{other}_local", "y", f"{own}_key"))
            )
            assert packed.column("n")[0].as_py() == direct.pop("n") == n
            assert packed.column("offset")[0].as_py() is None and direct.pop("offset") is None
            for name, expected in direct.items():
                np.testing.assert_array_equal(cell(packed, name, 0, expected.dtype), expected, err_msg=name)
