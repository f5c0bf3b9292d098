"""Loss and gradient of one block of ratings with the other side held fixed.

A block owns parameters P (n × p) for n users (or items). Every rating r of the
block pairs own row rows[r] with row cols[r] of O, the other side's vectors as they
arrived in this half-step, so the score is z_r = P[rows[r]] · O[cols[r]] + offset_r.

Users store P = [W | b | 1] and items store P = [X | 1 | c]: one dot product then gives
w·x + b + c from either side, and the same kernel serves both half-steps.

A rating may carry a weight a_r ≥ 0 (1 when none is given): the data term is
Σ_r a_r·loss(z_r, y_r), so its gradient is a_r·dloss/dz and its Hessian a_r·d²loss/dz². A
sampled negative with a_r < 1 then counts as a fraction of an observed label, and a count
of plays as several (data/weights.py and data/exposure.py give ratings their weights).

The L2 penalty is ½ Σ_r Σ_col weight[r, col]·P[r, col]², with
  weight = λ·reg_mask + λ_b·bias_mask, or, when count_scaled,
  weight = (λ·n_r·FACTOR_PRIOR[loss]·reg_mask + λ_b·bias_mask)·CURVATURE[loss], n_r being the row's rating count
  (the sum of its ratings' weights, when they have weights: the amount of data the row has).
Count scaling is ALS-WR's (and Spark ALS's regParam): with the data term summed over a
row's n_r ratings, a penalty that grows with n_r keeps the best λ the same whether an
entity has 10 ratings or 10,000, so one default transfers across data sizes. The biases'
λ_b is never scaled: against ½Σe², a bias then solves b = Σe / (n_r + λ_b), so λ_b is a
prior count of pseudo-ratings that shrinks entities with few ratings the most. CURVATURE
puts both in units of the loss's own curvature per rating: a BCE rating weighs at most 1/4
of an MSE one in the Hessian, so the same λ must weigh 1/4 as much to mean the same prior.
FACTOR_PRIOR then makes the factors' prior 3 × stronger for BCE, as measured (losses.py).

Every pass over the ratings goes tile by tile (see Tile): a tile's ratings are gathered as
a (rows × length × (p+1)) array, so that the per-row sums of the Newton step are batched
matrix products (BLAS) rather than one numpy call per feature pair.

One module of about 440 lines: the block problem, its tiling and its losses are one data
structure, which every optimiser step (newton.py, optimizers.py) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cfspark.kernels.losses import CURVATURE, FACTOR_PRIOR, per_rating, pointwise

# Ratings per tile, padding included. A tile's gathered vectors and the products made from
# them stay in the CPU's cache. Measured on 3 M ratings with p = 12 (lognormal counts, 20
# rows of 5k-50k): a newton_step takes the same time (within 5 %) for tiles of 2k to 16k
# ratings, 10 % more at 1k, and 15 % more when rows above 256 ratings go one run per tile.
TILE = 4096

# The largest (p+1)²·length of one row's run in one matrix product, f·(f+1)·length multiply-
# adds with f ≤ p free columns: runs of at most 4096 ratings for rank 10, 1890 for rank 20. OpenBLAS (as
# numpy ships it) multiplies products up to about 10^6 multiply-adds in its small-matrix
# kernel, on one thread; above, its general kernel is slower (measured: 1.5-2.5x on one
# thread, 3-10x on two threads whose cores Spark's other tasks are using; Spark sets
# OMP_NUM_THREADS, which OpenBLAS follows, to the executor's cores).
SMALL_GEMM = 1_000_000


@dataclass(frozen=True)
class Tile:
    """count runs of length ratings each, at positions lo .. lo + count·length of the tiling.

    A light row is padded up to its tile's length with ratings of the zero vector, and is
    one run of exactly one tile, whose rows are order[slot : slot + count] of the Tiling.
    A heavy row (longer than the tiling's run) is cut into runs of equal length, padded by
    less than one rating per run; its tiles (piece) hold only its runs, order[slot]'s.
    """

    lo: int
    count: int
    length: int
    slot: int
    piece: bool

    @property
    def hi(self) -> int:
        return self.lo + self.count * self.length


@dataclass(frozen=True)
class Tiling:
    """The ratings in tile order, and the own rows in the order their tiles visit them."""

    index: np.ndarray  # intp (positions,): the rating at each position, nnz for padding
    order: np.ndarray  # intp (n,): light rows by tile, then heavy rows, then rows without ratings
    tiles: tuple[Tile, ...]
    tile: int = TILE  # what it was made with (of's arguments): a problem borrows it only if they match
    run: int = TILE

    @property
    def nbytes(self) -> int:
        """What a cache that keeps it holds: its two index arrays."""
        return self.index.nbytes + self.order.nbytes

    @classmethod
    def of(cls, row_ptr: np.ndarray, *, tile: int = TILE, run: int = TILE) -> Tiling:
        """Tiles of at most tile positions (or one run), whose runs are at most run long."""
        counts = np.diff(row_ptr)
        nnz = int(row_ptr[-1]) if len(row_ptr) else 0
        padded = padded_length(counts)
        light = np.flatnonzero((counts > 0) & (padded <= run))
        heavy = np.flatnonzero(padded > run)
        runs = -(-counts[heavy] // run)
        lengths = np.r_[padded[light], -(-counts[heavy] // runs)]
        per_row = np.r_[np.ones(len(light), np.int64), runs]  # runs of each row
        by_length = np.argsort(lengths[: len(light)], kind="stable")  # then by row
        rows = np.r_[light[by_length], heavy]
        lengths = np.r_[lengths[by_length], lengths[len(light) :]]
        sizes = per_row * lengths
        starts = np.cumsum(sizes) - sizes
        within = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)  # position within the row
        index = np.where(within < np.repeat(counts[rows], sizes), np.repeat(row_ptr[rows], sizes) + within, nnz)
        tiles = []
        if len(light):  # a run of light rows of one length: tiles of per rows
            bounds = np.flatnonzero(np.r_[True, lengths[1 : len(light)] != lengths[: len(light) - 1], True])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                length = int(lengths[a])
                per = max(1, tile // length)
                tiles += [Tile(int(starts[s]), min(per, b - s), length, s, False) for s in range(a, b, per)]
        for slot in range(len(light), len(rows)):
            length, count = int(lengths[slot]), int(per_row[slot])
            per = max(1, tile // length)
            for first in range(0, count, per):
                tiles.append(Tile(int(starts[slot]) + first * length, min(per, count - first), length, slot, True))
        order = np.r_[rows, np.flatnonzero(counts == 0)]
        return cls(index.astype(np.intp), order.astype(np.intp), tuple(tiles), tile, run)

    def owners(self, tile: Tile) -> np.ndarray:
        """The own row of each run of the tile (count,)."""
        if tile.piece:
            return np.full(tile.count, self.order[tile.slot])
        return self.order[tile.slot : tile.slot + tile.count]

    def add(self, out: np.ndarray, tile: Tile, values: np.ndarray) -> None:
        """out[row] += values[run] for each run of the tile; a heavy row's runs add up."""
        if tile.piece:
            out[self.order[tile.slot]] += values.sum(axis=0)
        else:
            out[self.order[tile.slot : tile.slot + tile.count]] += values


def padded_length(counts: np.ndarray) -> np.ndarray:
    """Each count rounded up to a multiple of 2^(⌊log2 count⌋ − 3): 8 lengths per octave, so
    padding adds less than 1/8 of a row's ratings, and rows of up to 8 ratings none."""
    counts = np.asarray(counts, dtype=np.int64)
    octave = np.frexp(np.maximum(counts, 1).astype(np.float64))[1] - 1  # ⌊log2 count⌋, exactly
    step = np.left_shift(1, np.maximum(octave - 3, 0))
    return -(-counts // step) * step


# The fields of a Tile as the columns of TiledRatings.arrays()' "tiles".
_TILE_FIELDS = ("lo", "count", "length", "slot", "piece")


@dataclass(frozen=True)
class TiledRatings:
    """What a problem derives from its ratings alone, and all that like= reads of it: each
    rating's own row, the tiling, the ratings' cols, y, offset and weight in tile order, and
    which positions are ratings (None until a pass needed it). pad, the other side's row that
    padding gathers (its row count m), is the tiled cols' fill.

    Nothing reads these arrays but to gather from them, so they may be read-only views of a
    file: arrays() and from_arrays() are that file's contents (blocks/cache.py shares them
    among the workers of an executor)."""

    rows: np.ndarray
    tiling: Tiling
    tiled: dict[str, np.ndarray | None]
    valid: np.ndarray | None
    pad: int

    @property
    def nbytes(self) -> int:
        derived = [self.rows, self.tiling.index, self.tiling.order, *self.tiled.values(), self.valid]
        return sum(a.nbytes for a in derived if a is not None)

    def fits(self, *, nnz: int, n: int, m: int, run: int, offset: bool, weight: bool) -> bool:
        """Whether these are of ratings like a call's: nnz ratings of n rows against m rows of
        the other side, tiled in runs of at most run ratings, with offsets and weights or not."""
        return (
            len(self.rows) == nnz
            and len(self.tiling.order) == n
            and self.pad == m
            and (self.tiling.tile, self.tiling.run) == (TILE, run)
            and (self.tiled["offset"] is not None) == offset
            and (self.tiled["weight"] is not None) == weight
        )

    def arrays(self) -> dict[str, np.ndarray | None]:
        """Flat arrays, None where there is none; from_arrays reads them back."""
        t = self.tiling
        shape = [len(self.rows), len(t.order), len(t.index), self.pad, t.tile, t.run]
        tiles = np.array([[getattr(x, f) for f in _TILE_FIELDS] for x in t.tiles], np.int64).reshape(-1)
        return {"shape": np.array(shape, np.int64), "rows": self.rows, "index": t.index, "order": t.order,
                "tiles": tiles, "valid": self.valid} | {f"tiled_{k}": v for k, v in self.tiled.items()}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray | None]) -> TiledRatings | None:
        """TiledRatings of arrays() (no copy), or None where they do not fit together: a
        missing array, a wrong dtype or length, a tile out of bounds."""
        try:
            nnz, n, positions, pad, tile, run = (int(v) for v in arrays["shape"])
            tiles = arrays["tiles"].reshape(-1, len(_TILE_FIELDS))
            lengths = {"rows": nnz, "order": n, "index": positions, "valid": positions, "tiled_cols": positions,
                       "tiled_y": positions, "tiled_offset": positions, "tiled_weight": positions}  # fmt: skip
            for name, length in lengths.items():
                a = arrays[name]
                if a is None and name in ("valid", "tiled_offset", "tiled_weight"):
                    continue
                wanted = np.intp if name in ("rows", "order", "index", "tiled_cols") else np.float64
                if a.dtype != wanted or a.shape != (length,):
                    return None
            if tiles.dtype != np.int64:
                return None
        except (KeyError, AttributeError, ValueError, TypeError):
            return None
        lo, count, length, slot, piece = tiles.T
        ends = np.where(piece == 1, slot + 1, slot + count)
        if len(tiles) and not (lo.min() >= 0 and count.min() >= 1 and length.min() >= 1 and slot.min() >= 0
                               and (lo + count * length).max() <= positions and ends.max() <= n):  # fmt: skip
            return None
        tiling = Tiling(arrays["index"], arrays["order"],
                        tuple(Tile(*(int(v) for v in row[:4]), bool(row[4])) for row in tiles), tile, run)  # fmt: skip
        tiled = {k: arrays[f"tiled_{k}"] for k in ("cols", "y", "offset", "weight")}
        return cls(arrays["rows"], tiling, tiled, arrays["valid"], pad)


@dataclass(frozen=True)
class BlockProblem:
    """The fixed part of a block's sub-problem for one half-step.

    other holds [O | 0] with a row of zeros below, ((m+1) × (p+1)), in the working dtype:
    padding gathers the zero row, and the zero column leaves the scores alone while the
    Newton step writes dloss/dz into it, so one matrix product gives Hessian and gradient.
    float32 halves the bytes each gather moves and speeds up the products (a Newton step
    measured 10 % faster at rank 10, 25 % at rank 20, on 3 M ratings); a row's products are
    summed in float32 within one run (at most TILE ratings) and in float64 across runs, and
    every loss and score is computed in float64 from the (float32-rounded) vectors.
    """

    rows: np.ndarray  # int, own row of each rating, sorted ascending
    cols: np.ndarray  # int, row of O for each rating
    other: np.ndarray  # float64 or float32 ((m+1) × (p+1)), [O | 0] over a row of zeros
    y: np.ndarray  # float64 (nnz,), target of each rating
    offset: np.ndarray | None  # float64 (nnz,) added to every score, or None
    loss: str
    reg: float
    reg_mask: np.ndarray  # float64 (p,), 1 where λ applies
    tiling: Tiling
    weights: np.ndarray  # the L2 weight of each entry of P: (p,) or, count-scaled, (n × p)
    rating_weight: np.ndarray | None = None  # float64 (nnz,), a_r of each rating, or None for all 1
    # The last params row_data_loss scored and their losses: a Newton step scores its result to
    # accept it, and the half-step reports that result's loss next (one pass over the ratings
    # fewer). Matched by identity: no kernel changes params in place.
    _last: list = field(default_factory=list, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        *,
        row_ptr: np.ndarray,
        cols: np.ndarray,
        other: np.ndarray,
        y: np.ndarray,
        loss: str,
        reg: float,
        reg_mask: np.ndarray,
        offset: np.ndarray | None = None,
        bias_reg: float = 0.0,
        bias_mask: np.ndarray | None = None,
        count_scaled: bool = False,
        dtype: type | np.dtype = np.float64,
        rating_weight: np.ndarray | None = None,
        like: TiledRatings | None = None,
        tiling: Tiling | None = None,
    ) -> BlockProblem:
        """dtype (float64 or float32) is the working precision of the gathers and of the
        Newton step's per-tile products; params and their solve stay float64.
        rating_weight (nnz,), each rating's weight a_r, or None when every a_r is 1.
        like, the lender() of a problem built before on the same ratings (row_ptr, cols, y, offset
        and weights), lends their tiling and tile-ordered copies, which only the ratings decide: a
        loop over one set of CSR arrays (train/one_task.py) then tiles them once, not every
        half-step. One that does not fit this call (TiledRatings.fits: another count of ratings,
        rows or other-side rows, another run length) is not used: the problem tiles afresh.
        tiling, a Tiling made before of a row_ptr equal to this one, is used instead of a new one."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float64, np.float32):
            raise ValueError(f"dtype must be float64 or float32, not {dtype}")
        counts = np.diff(row_ptr)
        other = np.asarray(other)
        run = max(1, min(TILE, SMALL_GEMM // (other.shape[1] + 1) ** 2))
        if like is not None and not like.fits(nnz=len(y), n=len(counts), m=len(other), run=run,
                                              offset=offset is not None, weight=rating_weight is not None):  # fmt: skip
            like = None
        rows = np.repeat(np.arange(len(counts)), counts) if like is None else like.rows
        weights = reg * np.asarray(reg_mask, dtype=np.float64)
        if count_scaled:
            amount = counts if rating_weight is None else np.bincount(rows, rating_weight, minlength=len(counts))
            weights = (FACTOR_PRIOR[loss] * amount.astype(np.float64))[:, None] * weights[None, :]
        if bias_mask is not None and bias_reg:
            weights = weights + bias_reg * np.asarray(bias_mask, dtype=np.float64)
        if count_scaled:
            weights = weights * CURVATURE[loss]
        padded = np.zeros((len(other) + 1, other.shape[1] + 1), dtype=dtype)
        padded[:-1, :-1] = other
        problem = cls(
            rows=rows,
            cols=np.asarray(cols),
            other=padded,
            y=y,
            offset=offset,
            loss=loss,
            reg=reg,
            reg_mask=reg_mask,
            tiling=like.tiling
            if like is not None
            else tiling
            if tiling is not None
            else Tiling.of(np.asarray(row_ptr), run=run),
            weights=weights,
            rating_weight=None if rating_weight is None else np.asarray(rating_weight, dtype=np.float64),
        )
        if like is not None:  # cached properties of the same ratings
            problem.__dict__["_tiled"] = like.tiled
            if like.valid is not None:
                problem.__dict__["_valid"] = like.valid
        return problem

    def lender(self) -> TiledRatings:
        """What like= reads of this problem and nothing else: its ratings' tiling and
        tile-ordered copies, without the other side's vectors, the L2 weights or the last
        scores, which the next half-step makes anew. A caller that keeps something for like=
        (a worker's block cache counts its nbytes against its budget) keeps this."""
        return TiledRatings(self.rows, self.tiling, self._tiled, self.__dict__.get("_valid"), len(self.other) - 1)

    @property
    def other_t(self) -> np.ndarray:
        """O transposed (p × m), as the block received it (rounded to the working dtype)."""
        return self.other[:-1, :-1].T

    @cached_property
    def _tiled(self) -> dict[str, np.ndarray | None]:
        """cols, y, offset and rating weight in tile order; padding gets row m of other (zeros),
        0, 0 and weight 0."""
        index, nnz = self.tiling.index, len(self.y)
        clipped, pads = np.minimum(index, max(nnz - 1, 0)), np.flatnonzero(index == nnz)

        def tiled(values, fill, dtype):
            out = np.asarray(values, dtype=dtype).take(clipped) if nnz else np.zeros(len(index), dtype)
            out[pads] = fill
            return out

        return {
            "cols": tiled(self.cols, len(self.other) - 1, np.intp),
            "y": tiled(self.y, 0.0, np.float64),
            "offset": None if self.offset is None else tiled(self.offset, 0.0, np.float64),
            "weight": None if self.rating_weight is None else tiled(self.rating_weight, 0.0, np.float64),
        }

    @cached_property
    def _valid(self) -> np.ndarray:
        """1.0 for a rating, 0.0 for padding, in tile order."""
        return (self.tiling.index < len(self.y)).astype(np.float64)

    def tiled(self, name: str, tile: Tile) -> np.ndarray | None:
        """y, offset, weight or valid (1.0 for a rating, 0.0 for padding) of one tile
        (count × length). weight is None when the ratings carry no weights."""
        values = self._valid if name == "valid" else self._tiled[name]
        return None if values is None else values[tile.lo : tile.hi].reshape(tile.count, tile.length)

    def amount(self, tile: Tile) -> np.ndarray:
        """What each position of the tile counts for in the data term: its rating's weight,
        or 1.0 for a rating and 0.0 for padding when the ratings carry no weights."""
        weight = self.tiled("weight", tile)
        return self.tiled("valid", tile) if weight is None else weight

    def extended(self, params: np.ndarray, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """[P | 0] (n × (p+1)): params against the gathered [O | slot]."""
        out = np.zeros((len(params), params.shape[1] + 1), dtype=dtype)
        out[:, :-1] = params
        return out

    def gather(
        self, tile: Tile, params_ext: np.ndarray, other: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(the tile's [O | 0] rows (count × length × (p+1)), z (count × length)).

        z is computed in params_ext's dtype; padding scores its offset, 0. other, by default
        self.other, may be the same rows with columns reordered as params_ext's are.
        """
        other = self.other if other is None else other
        o = other.take(self._tiled["cols"][tile.lo : tile.hi], axis=0).reshape(tile.count, tile.length, -1)
        exact = o if o.dtype == params_ext.dtype else o.astype(params_ext.dtype)
        z = np.matmul(exact, params_ext[self.tiling.owners(tile)][:, :, None])[..., 0]
        offset = self.tiled("offset", tile)
        if offset is not None:
            z += offset
        return o, z

    def scores(self, params: np.ndarray) -> np.ndarray:
        """z for every rating of the block."""
        ext = self.extended(params)
        out = np.zeros(len(self.y) + 1)  # padding lands in the last slot
        for tile in self.tiling.tiles:
            out[self.tiling.index[tile.lo : tile.hi]] = self.gather(tile, ext)[1].ravel()
        return out[:-1]

    def reg_loss(self, params: np.ndarray) -> float:
        return float(np.sum(self.row_reg_loss(params)))

    def row_reg_loss(self, params: np.ndarray) -> np.ndarray:
        """½ Σ_col weight·P² of each row (n,)."""
        return 0.5 * np.sum(params * params * self.weights, axis=-1)

    def row_data_loss(self, params: np.ndarray) -> np.ndarray:
        """Σ loss(z, y) over each own row's ratings (n,), zero for rows without ratings."""
        if self._last and self._last[0] is params:
            return self._last[1].copy()
        ext = self.extended(params)
        out = np.zeros(len(params))
        for tile in self.tiling.tiles:
            _, z = self.gather(tile, ext)
            values = per_rating(self.loss, z, self.tiled("y", tile))
            if self.loss != "mse" or self.rating_weight is not None:
                values *= self.amount(tile)  # padding scores 0 against 0: no MSE, but a BCE of log 2
            self.tiling.add(out, tile, values.sum(axis=1))
        self._last[:] = [params, out.copy()]
        return out

    def data_loss(self, params: np.ndarray) -> float:
        return float(self.row_data_loss(params).sum())

    def loss_and_grad(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """J_block(P) = Σ a·loss(z, y) + λ/2 Σ‖P·mask‖², and dJ/dP."""
        ext = self.extended(params)
        grad = np.zeros_like(ext)
        data = 0.0
        for tile in self.tiling.tiles:
            o, z = self.gather(tile, ext)
            values, dz = pointwise(self.loss, z, self.tiled("y", tile))
            amount = self.amount(tile)
            data += float(np.sum(values * amount))
            self.tiling.add(grad, tile, np.matmul((dz * amount)[:, None, :], o)[:, 0, :])
        return data + self.reg_loss(params), grad[:, :-1] + self.weights * params
