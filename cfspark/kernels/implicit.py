"""The all-items half-step for positive-only data: every unobserved item a weighted 0.

Implicit ALS's model (Hu, Koren and Volinsky, "Collaborative Filtering for Implicit Feedback
Datasets", ICDM 2008) in cfspark's parameter layout: for every own row r (a user, say) and
every item i of the other side, the score is z_ri = P_r · O_i (P = [W | b | 1] against
O = [X | 1 | c], so biases included), and the data term is

    ½ Σ_r Σ_i c_ri (z_ri − y_ri)²,   y_ri = 1, c_ri = confidence if (r, i) is observed, else y = 0, c = 1.

Summing over every item would cost rows × items. As implicit ALS does, it splits into a sum
over all items with weight 1 and target 0, which is the same p × p Gramian G = Σ_i O_i O_iᵀ
for every row (computed once per half-step), and per-row corrections over the observed
items only:

    H_r = G_FF + Σ_obs (c − 1) O_F O_Fᵀ + diag(λ_r)
    g_r = G_F· P_r + Σ_obs ((c − 1) z − c) O_F + λ_r ∘ P_r

(F the free columns; the constant 1 never moves). The sub-problem is quadratic, so one
Newton step from any P lands on its minimiser. The corrections are batched matrix products
over the same tiles as every other step (kernels/block.py): the tile's "y" holds c and its
rating weight holds c − 1, so padding (weight 0, target 0) adds nothing.

The penalty is count-scaled as Spark ALS's implicit mode scales it: λ·n_r, n_r being the
row's number of observed items, so that regParam means what it means there; biases get λ_b.
"""

from __future__ import annotations

import numpy as np

from cfspark.kernels.block import BlockProblem, TiledRatings, Tiling


def gram(other: np.ndarray) -> np.ndarray:
    """Σ_i O_i O_iᵀ (p × p) over every row of the other side, in float64."""
    o = np.asarray(other, dtype=np.float64)
    return o.T @ o


def implicit_problem(
    row_ptr: np.ndarray,
    cols: np.ndarray,
    confidence: np.ndarray,
    other: np.ndarray,
    tiling: Tiling | None = None,
    like: TiledRatings | None = None,
) -> BlockProblem:
    """The block's observed pairs as tiles: y = c and rating weight c − 1 (see the module);
    tiling, one made before for an equal row_ptr, is used instead of a new one; like, the
    lender() of a problem built before on the same pairs and confidences, lends their
    tile-ordered copies as well."""
    confidence = np.asarray(confidence, dtype=np.float64)
    p = other.shape[1]
    return BlockProblem.build(
        row_ptr=row_ptr, cols=cols, other=other, y=confidence, loss="mse", reg=0.0, reg_mask=np.zeros(p),
        rating_weight=confidence - 1.0, tiling=tiling, like=like,
    )  # fmt: skip


def reg_weights(
    row_ptr: np.ndarray, reg_mask: np.ndarray, bias_mask: np.ndarray, *, reg: float, bias_reg: float, count_scaled: bool
) -> np.ndarray:
    """The L2 weight of each entry of P (n × p): λ·n_r (or λ) on the factors, λ_b on the bias."""
    counts = np.diff(np.asarray(row_ptr)).astype(np.float64)
    scale = counts if count_scaled else np.ones_like(counts)
    return (reg * scale)[:, None] * np.asarray(reg_mask)[None, :] + bias_reg * np.asarray(bias_mask)[None, :]


def corrections(problem: BlockProblem, params: np.ndarray) -> np.ndarray:
    """Per own row [Σ_obs (c − 1) O Oᵀ | Σ_obs ((c − 1) z − c) O] (n × p × (p + 1)), over all p columns."""
    n, p = params.shape
    ext = problem.extended(params)
    sums = np.zeros((n, p, p + 1))
    for tile in problem.tiling.tiles:
        o, z = problem.gather(tile, ext)
        c, a = problem.tiled("y", tile), problem.tiled("weight", tile)
        weighted = o * a[..., None]
        weighted[..., p] = a * z - c
        products = np.matmul(o[..., :p].transpose(0, 2, 1), weighted)
        if tile.piece:
            sums[problem.tiling.order[tile.slot]] += products.sum(axis=0)
        else:
            sums[problem.tiling.owners(tile)] = products
    return sums


def all_pairs_loss(problem: BlockProblem, g: np.ndarray, params: np.ndarray) -> float:
    """½ Σ_r Σ_i c_ri (z_ri − y_ri)² over every row and every item of the other side."""
    everything = 0.5 * float(np.sum((params @ g) * params))  # every pair as a 0 of weight 1
    z = problem.scores(params)
    c = problem.y
    return everything + 0.5 * float(np.sum(c * (z - 1.0) ** 2 - z * z))


def implicit_step(
    row_ptr: np.ndarray,
    cols: np.ndarray,
    confidence: np.ndarray,
    other: np.ndarray,
    params: np.ndarray,
    train_mask: np.ndarray,
    weights: np.ndarray,
    g: np.ndarray | None = None,
    *,
    data_loss: bool = True,
    cache: dict | None = None,
) -> tuple[np.ndarray, float, float]:
    """The rows' exact minimisers over every item of the other side, and the (data, L2) losses there.

    row_ptr/cols/confidence are the block's observed pairs as CSR, cols indexing other (m × p),
    the other side's params; weights (n × p) the L2 weight of each entry of P. g is the other
    side's Gramian over all of its rows; None when other holds all of them (g = gram(other)).
    A block of the blockwise engine receives only the rows its pairs name, and g summed over
    every block of the other side.
    data_loss=False skips the data loss's pass over the pairs (it is NaN then); cache, a dict
    kept by a caller that solves the same pairs again, keeps their tiling between calls, and
    their tile-ordered copies while the confidences stay equal (the search's λ pass, a fit at
    one α). The search's α pass changes them, and only the copies are made again.
    """
    params = np.asarray(params, dtype=np.float64)
    cache = {} if cache is None else cache
    kept = cache.get("confidence")
    same = kept is not None and (kept is confidence or np.array_equal(kept, confidence))
    problem = implicit_problem(row_ptr, cols, confidence, other, cache.get("tiling"), cache["pairs"] if same else None)
    cache["tiling"] = problem.tiling
    g = gram(other) if g is None else np.asarray(g, dtype=np.float64)
    free = _columns(train_mask)
    sums = corrections(problem, params)
    if not same:  # the copies exist once corrections has gathered through them
        cache["confidence"], cache["pairs"] = np.asarray(confidence), problem.lender()
    reg = np.broadcast_to(weights, params.shape)[:, free]
    hess = g[free][:, free][None, :, :] + sums[:, free][:, :, free]
    diagonal = np.arange(hess.shape[1])
    hess[:, diagonal, diagonal] += reg + 1e-10
    grad = params @ g[free].T + sums[:, free, -1] + reg * params[:, free]
    new = params.copy()
    new[:, free] -= np.linalg.solve(hess, grad[..., None])[..., 0]
    data = all_pairs_loss(problem, g, new) if data_loss else float("nan")
    return new, data, 0.5 * float(np.sum(new * new * weights))


def _columns(mask: np.ndarray) -> slice | np.ndarray:
    """The columns where mask is set: a slice when they are one run, as the factor columns
    are, so that selecting them from the rows' p × (p + 1) sums is a view, not a copy (at
    71,000 rows, 18 ms against 126 ms a half-step); else their indices."""
    cols = np.flatnonzero(mask)
    if len(cols) and cols[-1] - cols[0] + 1 == len(cols):
        return slice(int(cols[0]), int(cols[-1]) + 1)
    return cols


def all_items_rows(
    row_ptr: np.ndarray,
    cols: np.ndarray,
    confidence: np.ndarray | None,
    other: np.ndarray,
    params: np.ndarray,
    *,
    train_mask: np.ndarray,
    reg_mask: np.ndarray,
    bias_mask: np.ndarray,
    reg: float,
    bias_reg: float,
    count_scaled: bool,
    g: np.ndarray | None = None,
    data_loss: bool = True,
    cache: dict | None = None,
) -> tuple[np.ndarray, float, float]:
    """implicit_step with the penalty built from λ and λ_b (reg_weights); confidence None is 1 for every pair."""
    if confidence is None:
        confidence = np.ones(len(cols))
    weights = reg_weights(row_ptr, reg_mask, bias_mask, reg=reg, bias_reg=bias_reg, count_scaled=count_scaled)
    return implicit_step(row_ptr, cols, confidence, other, params, train_mask, weights, g, data_loss=data_loss,
                         cache=cache)  # fmt: skip
