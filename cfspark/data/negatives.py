"""Sampled negatives for positive-only data: K unobserved items per positive, as 0-labels.

For each user the draws are a pure function of (user, seed): a numpy generator seeded
from a hash of the user id, so retries and partitioning cannot change them. Items are
drawn without replacement, never from the items that user already has a label for, in
proportion to their number of positives (popularity), to its square root (sqrt), or
uniformly (sampling_weights).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cfspark.core.schema import ITEM, RATING, USER

_USER_KEY = "_user_key"


def draw_negatives(labelled: np.ndarray, n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to n distinct item codes not in labelled, drawn with probability ∝ weights.

    When fewer than n unlabelled items have weight, all of them are taken and the rest
    are drawn uniformly from the unlabelled items without weight.
    """
    if n <= 0:
        return np.empty(0, np.int64)
    w = weights.astype(np.float64).copy()
    w[labelled] = 0.0
    weighted = np.flatnonzero(w > 0)
    if n >= len(weighted):
        unweighted = np.setdiff1d(np.flatnonzero(w == 0), labelled)
        extra = rng.choice(unweighted, size=min(n - len(weighted), len(unweighted)), replace=False)
        return np.sort(np.concatenate([weighted, extra]).astype(np.int64))
    if n * 4 >= len(weighted):  # small pool: exact draw without replacement
        return np.sort(rng.choice(len(w), size=n, replace=False, p=w / w.sum()))
    chosen: list[np.ndarray] = []
    have = np.empty(0, np.int64)
    cdf = np.cumsum(w)
    while len(have) < n:  # rejection: excluded items have zero weight, so only repeats are dropped
        draws = np.searchsorted(cdf, rng.random(2 * (n - len(have)) + 8) * cdf[-1], side="right")
        chosen.append(draws)
        have = np.unique(np.concatenate(chosen))
    # Keep the first n distinct draws in draw order, so the sample is a prefix of one stream.
    stream = np.concatenate(chosen)
    _, first = np.unique(stream, return_index=True)
    return np.sort(stream[np.sort(first)[:n]])


def sampling_weights(positives: np.ndarray, sampling: str) -> np.ndarray:
    """Each item's relative chance of being drawn, from its number of positives: the count
    itself (popularity), its square root (sqrt: popular items drawn more, not in proportion),
    or 1 (uniform)."""
    if sampling == "popularity":
        return positives.astype(np.float64)
    if sampling == "sqrt":
        return np.sqrt(positives.astype(np.float64))
    if sampling == "uniform":
        return np.ones(len(positives))
    raise ValueError(f"unknown sampling {sampling!r}; expected popularity, sqrt or uniform")


def add_negatives(
    ratings: DataFrame, *, per_positive: int, sampling: str, seed: int, only_new: bool = False
) -> DataFrame:
    """ratings (user, item, rating ∈ {0, 1}) plus sampled (user, item, 0.0) rows;
    with only_new, the sampled rows alone."""
    popularity = ratings.groupBy(ITEM).agg(F.sum(RATING).alias("weight")).orderBy(ITEM)
    items = popularity.collect()  # one row per item: the sampling distribution is needed whole
    item_ids = [r[0] for r in items]
    weights = np.array([r[1] for r in items], dtype=np.float64)
    weights = sampling_weights(weights, sampling)
    item_type = dict(ratings.dtypes)[ITEM]
    user_type = dict(ratings.dtypes)[USER]
    code_of = {item: code for code, item in enumerate(item_ids)}
    id_array = pa.array(item_ids)

    def sample(table: pa.Table) -> pa.Table:
        user_key = table.column(_USER_KEY)[0].as_py()
        labelled = np.array([code_of[i] for i in table.column(ITEM).to_pylist()], dtype=np.int64)
        positives = int(np.sum(table.column(RATING).to_numpy() == 1.0))
        rng = np.random.default_rng([seed, user_key & 0xFFFFFFFFFFFFFFFF])
        codes = draw_negatives(labelled, per_positive * positives, weights, rng)
        return pa.table(
            {
                USER: pa.array([table.column(USER)[0].as_py()] * len(codes), table.schema.field(USER).type),
                ITEM: id_array.take(pa.array(codes, pa.int64())).cast(table.schema.field(ITEM).type),
                RATING: pa.array(np.zeros(len(codes))),
            }
        )

    keyed = ratings.withColumn(_USER_KEY, F.xxhash64(F.col(USER), F.lit(seed)))
    negatives = keyed.groupBy(USER).applyInArrow(sample, f"{USER} {user_type}, {ITEM} {item_type}, {RATING} double")
    return negatives if only_new else ratings.unionByName(negatives)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs pass as independent uniforms."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_uniforms(
    seed: int, iteration: int, user_keys: np.ndarray, draw: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """U[0, 1) for each (user key, draw index), a pure function of (seed, iteration, user, draw).
    With rows, draw j belongs to user_keys[rows[j]]: each user's part of the hash is then mixed
    once per user rather than once per draw (the same values)."""
    with np.errstate(over="ignore"):
        state = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(iteration))
        x = _mix(state ^ _mix(np.asarray(user_keys).astype(np.uint64) + _GOLDEN))
        if rows is not None:
            x = x[rows]
        x = _mix(x + np.asarray(draw).astype(np.uint64) * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


# inverse_cdf walks forward from its guide table at most this many steps, then searches.
GUIDE_STEPS = 32


def guide_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cdf, guide) of weights for inverse_cdf: the running sum, and the first item of each of
    len(weights) equal slices of [0, total), a hair low, so that the guide is never past the
    item it leads to."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    n = len(cdf)
    return cdf, np.searchsorted(cdf, np.arange(n) * (cdf[-1] / n) * (1.0 - 1e-12), side="right")


def inverse_cdf(weights: np.ndarray, u: np.ndarray, table: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """For each u in [0, 1), the item i with cdf[i−1] ≤ u·total < cdf[i] (cdf the running sum
    of weights), as np.searchsorted(cdf, u·total, side="right") gives it, capped at the last
    item. A guide table (guide_table; table, if made before for these weights) starts each
    search a step or two before its item, so a draw costs a few gathers instead of a binary
    search over every item (measured below in docs/benchmarks.md)."""
    cdf, guide = guide_table(weights) if table is None else table
    n = len(cdf)
    target = u * cdf[-1]
    idx = np.minimum(guide[np.minimum((u * n).astype(np.int64), n - 1)], n - 1)
    todo = np.flatnonzero((cdf[idx] <= target) & (idx < n - 1))
    for _ in range(GUIDE_STEPS):
        if not len(todo):
            break
        idx[todo] += 1
        todo = todo[(cdf[idx[todo]] <= target[todo]) & (idx[todo] < n - 1)]
    if len(todo):  # a long run of small or zero weights: search the rest
        idx[todo] = np.minimum(np.searchsorted(cdf, target[todo], side="right"), n - 1)
    return idx


def fresh_negatives(
    row_ptr: np.ndarray,
    labelled: np.ndarray,
    user_keys: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    *,
    seed: int,
    iteration: int,
    replace: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr, items) of one iteration's sampled negatives for a block of users, in CSR.

    Row r of the block has labelled items labelled[row_ptr[r]:row_ptr[r+1]] (codes into
    weights, the block's own item list) and the init/hash key user_keys[r]; it draws counts[r]
    items with probability ∝ weights, each draw a hashed uniform of (seed, iteration, user
    key, draw index), so a user's draws do not depend on the block it sits in, and another
    iteration draws afresh. Draws that hit a labelled item of the user, or repeat one, are
    dropped: a row gets at most counts[r] distinct items, never one it has a label for.
    Vectorised over the whole block: no loop over rows. Without replace, a row gets
    min(counts[r], its drawable items) distinct items instead (smallest_keys).
    """
    if not replace:
        return smallest_keys(row_ptr, labelled, user_keys, counts, weights, seed=seed, iteration=iteration)
    counts = np.asarray(counts, dtype=np.int64)
    n_items = len(weights)
    rows = np.repeat(np.arange(len(counts)), counts)
    draw = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    u = hashed_uniforms(seed, iteration, np.asarray(user_keys), draw, rows)
    items = inverse_cdf(weights, u)
    # Sorted pair keys, deduplicated and without the labelled pairs, by sorting and binary search:
    # np.unique and np.isin hash unsorted int64 keys, which took seconds a half-step on 2.6M draws.
    keys = np.sort(rows * n_items + items)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    keys = keys[_unlabelled(keys, row_ptr, labelled, n_items)]  # sorted by row, then item
    return _csr(keys, n_items, len(counts))


def _unlabelled(pairs: np.ndarray, row_ptr: np.ndarray, labelled: np.ndarray, n_items: int) -> np.ndarray:
    """The mask of pair keys (row·n_items + item) that are not a labelled pair of their row,
    by a sort and a binary search: np.isin hashes unsorted int64 keys, which is slower."""
    labelled_rows = np.repeat(np.arange(len(row_ptr) - 1), np.diff(row_ptr))
    taken = np.sort(labelled_rows * n_items + np.asarray(labelled, dtype=np.int64))
    if not len(taken) or not len(pairs):
        return np.ones(len(pairs), dtype=bool)
    return taken[np.minimum(np.searchsorted(taken, pairs), len(taken) - 1)] != pairs


def _csr(pairs: np.ndarray, n_items: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr, items) of pair keys sorted by row, then item."""
    rows, items = pairs // n_items, pairs % n_items
    return np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))].astype(np.int64), items.astype(np.int64)


# smallest_keys' keys are computed for this many (row, item) pairs at a time.
KEY_CHUNK = 1 << 22
# A row that wants at most this share of its drawable items is sampled by drawing with
# replacement (OVERSAMPLE times what it wants, plus a few) and keeping its first distinct draws.
LIGHT_SHARE, OVERSAMPLE = 0.5, 2
# The light rows' (row, item, draw) keys are packed into an int64 when they take fewer bits than this.
PACKED_BITS = 63
# The light rows are sampled a run of rows at a time, about this many draws each: the arrays of a
# run stay in the CPU's cache (a half-step of 51M draws, 1M labels: 2.5 × faster than one run; flat from 2^16 to 2^18).
DRAW_CHUNK = 1 << 17


def smallest_keys(
    row_ptr: np.ndarray,
    labelled: np.ndarray,
    user_keys: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    *,
    seed: int,
    iteration: int,
) -> tuple[np.ndarray, np.ndarray]:
    """fresh_negatives without replacement: (row_ptr, items), row r taking min(counts[r], its
    drawable items) distinct items of positive weight that it has no label for, each step of
    the sample ∝ weights among the items not yet taken (successive sampling).

    Two ways give that sample, both pure functions of (seed, iteration, user key): a row that
    wants few of its items draws with replacement and keeps its first distinct draws in draw
    order (repeats and labelled items skipped); the others, and a light row whose draws ran
    short, take the items of smallest key −log(u)/w, u a hashed uniform of the item
    (Efraimidis–Spirakis), which costs a key for every item of the block's list."""
    counts = np.asarray(counts, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    labelled = np.asarray(labelled, dtype=np.int64)
    user_keys = np.asarray(user_keys)
    n = len(counts)
    labelled_rows = np.repeat(np.arange(n), np.diff(row_ptr))
    drawable_labels = np.bincount(labelled_rows[weights[labelled] > 0], minlength=n).astype(np.int64)
    available = int((weights > 0).sum()) - drawable_labels
    want = np.minimum(counts, available).clip(0)
    light = want <= LIGHT_SHARE * available
    light_parts, short = _light_rows(row_ptr, labelled, user_keys, want, light, weights, seed, iteration)
    heavy = np.flatnonzero((~light | short) & (want > 0))
    heavy_part = _exponential_keys(row_ptr, labelled, user_keys, want, heavy, weights, seed, iteration)
    return _merged_rows([*light_parts, heavy_part], n)


def _merged_rows(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_ptr, items) of parts of (rows, items), each sorted by row, then item, no row in two
    parts: every part but the first moves its rows' runs to where they start in the whole, and
    the first fills the rest in order, with no sort and no division."""
    counts = [np.bincount(rows, minlength=n) for rows, _ in parts]
    out_ptr = np.r_[0, np.cumsum(np.sum(counts, axis=0))].astype(np.int64)
    out = np.empty(int(out_ptr[-1]), np.int64)
    rest = np.ones(len(out), bool)
    for (rows, items), count in zip(parts[1:], counts[1:], strict=True):
        at = out_ptr[rows] + np.arange(len(rows)) - (np.cumsum(count) - count)[rows]
        out[at] = items
        rest[at] = False
    out[rest] = parts[0][1]
    return out_ptr, out


def _light_rows(row_ptr, labelled, user_keys, want, light, weights, seed, iteration):
    """The light rows' samples as _first_distinct gives them with OVERSAMPLE·want + 8 draws each,
    in two rounds: first each row's first_round_draws, a prefix of those draws that holds want
    distinct unlabelled items in expectation, and then the whole for the rows it left short.
    The first want distinct items of a prefix are those of the whole, so the sample is the
    same; the first round saves the draws a sparse row does not need. ([(rows, items)] sorted
    by row, then item, with no row in two, and the mask of the light rows still short.)"""
    full = np.where(light & (want > 0), OVERSAMPLE * want + 8, 0)
    first = first_round_draws(row_ptr, labelled, want, full, weights)
    table = guide_table(weights)  # every run draws from the same weights
    got_rows, got_items, short = _in_runs(row_ptr, labelled, user_keys, want, first, weights, seed, iteration, table)
    again = short & (first < full)
    more_rows, more_items, still = _in_runs(
        row_ptr, labelled, user_keys, want, np.where(again, full, 0), weights, seed, iteration, table
    )  # fmt: skip
    return [(got_rows, got_items), (more_rows, more_items)], (short & ~again) | still


# first_round_draws: the expected distinct count is met with this margin, so that few rows need
# the second round.
FIRST_ROUND_MARGIN = 1.1


def first_round_draws(row_ptr, labelled, want, full, weights) -> np.ndarray:
    """Draws with replacement ∝ weights that give each row want distinct items it has no label
    for, in expectation, times FIRST_ROUND_MARGIN, plus 8; at most full (0 where full is 0).

    After m draws the expected number of distinct items is D(m) = Σ_i 1 − e^(−m·p_i), p the
    weights' shares; a row loses to its labelled items the share q_r of the draws that land
    on them, so it needs D(m) ≥ want / (1 − q_r). D is computed on a geometric grid of m and
    inverted by interpolation, for every row at once."""
    shares = np.asarray(weights, np.float64) / max(float(np.sum(weights)), 1e-300)
    drawable = shares[shares > 0]
    top = int(full.max(initial=0))
    if top == 0 or not len(drawable):
        return full
    grid = np.unique(np.geomspace(1, top, 48).astype(np.int64))
    distinct = np.array([np.sum(-np.expm1(-m * drawable)) for m in grid])
    rows = np.repeat(np.arange(len(want)), np.diff(row_ptr))
    taken = np.bincount(rows, weights=shares[labelled], minlength=len(want))
    need = want / np.maximum(1.0 - taken, 1e-12)
    draws = np.ceil(FIRST_ROUND_MARGIN * np.interp(need, distinct, grid)).astype(np.int64) + 8
    draws[need >= distinct[-1]] = top  # more than the grid's draws give: the whole
    return np.minimum(draws, full)


def _in_runs(row_ptr, labelled, user_keys, want, draws, weights, seed, iteration, table):
    """_first_distinct of the rows with draws > 0, over runs of consecutive rows of about
    DRAW_CHUNK draws each (a row of more draws is a run of its own): the same (rows, items),
    sorted by row, then item, and mask of the rows that ran short."""
    run = (np.cumsum(draws) - draws) // DRAW_CHUNK  # the run of each row, by its first draw
    bounds = np.r_[0, np.flatnonzero(run[1:] != run[:-1]) + 1, len(want)]
    rows, items, short = [np.empty(0, np.int64)], [np.empty(0, np.int64)], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if not draws[lo:hi].any():
            short.append(np.zeros(hi - lo, bool))
            continue
        got_rows, got_items, run_short = _first_distinct(
            row_ptr[lo : hi + 1] - row_ptr[lo], labelled[row_ptr[lo] : row_ptr[hi]], user_keys[lo:hi], want[lo:hi],
            draws[lo:hi], weights, seed, iteration, table,
        )  # fmt: skip
        rows.append(got_rows + lo)
        items.append(got_items)
        short.append(run_short)
    return np.concatenate(rows), np.concatenate(items), np.concatenate(short)


def _first_distinct(row_ptr, labelled, user_keys, want, m, weights, seed, iteration, table=None):
    """Each row draws m items with replacement ∝ weights (draws 0 to m − 1) and keeps its first
    want distinct unlabelled ones, in draw order. (rows, items) of the rows that got enough,
    sorted by row, then item, and a mask of the rows with draws that did not. table: guide_table(weights)."""
    n, n_items = len(want), len(weights)
    begins = np.cumsum(m) - m
    rows = np.repeat(np.arange(n), m)
    draw = np.arange(len(rows)) - np.repeat(begins, m)
    u = hashed_uniforms(seed, iteration, user_keys, draw, rows)
    items = inverse_cdf(weights, u, table)
    # (row, item, draw) packed into one int64 in bit fields, sorted by a plain sort: a pair's
    # first draw then leads its run. np.unique's index needs a stable argsort, about 9 × the
    # sort's time on millions of draws; shifts and masks are cheaper than // and %.
    draw_bits, item_bits = int(m.max(initial=1)).bit_length(), max(n_items - 1, 1).bit_length()
    if n.bit_length() + item_bits + draw_bits < PACKED_BITS:
        key = np.sort((rows << (item_bits + draw_bits)) | (items << draw_bits) | draw)
        pair = key >> draw_bits
        first = np.r_[True, pair[1:] != pair[:-1]] if len(key) else np.ones(0, bool)
        key, pair = key[first], pair[first]
        unlabelled = _unlabelled(pair, row_ptr, labelled, 1 << item_bits)  # pairs packed as row·2^item_bits + item
        key, pair = key[unlabelled], pair[unlabelled]
        got_rows = key >> (item_bits + draw_bits)
        position = begins[got_rows] + (key & ((1 << draw_bits) - 1))  # the draw's place in draw order
        got_items = pair & ((1 << item_bits) - 1)
    else:  # too many bits for one int64: each pair's first draw by np.unique
        pair = rows * n_items + items
        order, position = np.unique(pair, return_index=True)  # by row, then item, and each pair's first draw
        unlabelled = _unlabelled(order, row_ptr, labelled, n_items)
        position = position[unlabelled]
        got_rows, got_items = rows[position], items[position]
    # A candidate's rank in its row's draw order, from a mark at its draw's place: the candidates
    # stay sorted by row, then item, and need no second sort into draw order.
    marked = np.zeros(len(rows) + 1, np.int64)
    marked[position + 1] = 1
    before = np.cumsum(marked)  # before[p]: the candidates at draw places below p
    rank = before[position] - before[begins[got_rows]]
    keep = rank < want[got_rows]
    got = np.bincount(got_rows[keep], minlength=n)
    short = (m > 0) & (got < want)
    keep &= ~short[got_rows]
    return got_rows[keep], got_items[keep], short


def _exponential_keys(row_ptr, labelled, user_keys, want, chosen_rows, weights, seed, iteration):
    """(rows, items): each of chosen_rows takes the want items of smallest key −log(u)/w over the
    drawable items it has no label for, in chunks of at most KEY_CHUNK keys."""
    drawable = np.flatnonzero(weights > 0)
    if not len(drawable) or not len(chosen_rows):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    inverse_w = 1.0 / weights[drawable]
    position = np.full(len(weights), -1, np.int64)
    position[drawable] = np.arange(len(drawable))
    step = max(1, KEY_CHUNK // len(drawable))
    taken_rows, taken_items = [], []
    for lo in range(0, len(chosen_rows), step):
        part = chosen_rows[lo : lo + step]
        # A (rows × items) grid of hashed uniforms by broadcasting, each row's part of the hash
        # mixed once: the values of hashed_uniforms over the repeated rows and tiled items.
        u = hashed_uniforms(seed, iteration, user_keys[part][:, None], drawable[None, :])
        keys = -np.log1p(-u)
        keys *= inverse_w  # Exp(1) / w
        # The part's labelled items, gathered from its CSR spans without a loop over rows.
        lengths = row_ptr[part + 1] - row_ptr[part]
        row_of = np.repeat(np.arange(len(part)), lengths)
        mine = np.repeat(row_ptr[part] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        at = position[labelled[mine]]
        keys[row_of[at >= 0], at[at >= 0]] = np.inf  # never a labelled item
        # A row's want smallest keys are those up to its want-th smallest (a sort of the values;
        # an argsort and its inverse took 3 × as long). The keys are continuous: a tie at the
        # threshold (two items of one weight with one 53-bit uniform) would take both, so such a
        # row, if any, is ranked by argsort instead.
        need = want[part]
        threshold = np.sort(keys, axis=1)[np.arange(len(part)), need - 1]
        taken = keys <= threshold[:, None]
        tied = np.flatnonzero(taken.sum(axis=1) != need)
        if len(tied):
            order = np.argsort(keys[tied], axis=1, kind="stable")
            taken[tied] = False
            taken[tied[:, None], order[:, : need[tied].max()]] = np.arange(need[tied].max())[None, :] < need[tied, None]
        r, c = np.nonzero(taken)
        taken_rows.append(part[r])
        taken_items.append(drawable[c])
    return np.concatenate(taken_rows), np.concatenate(taken_items)
