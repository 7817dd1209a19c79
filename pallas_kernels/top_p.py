"""Top-p selection per row (SVG2's cluster-pair map) without a sort: a threshold search in registers.

SVG2 keeps, for each query cluster, the most probable key clusters until their mass first exceeds
``top_p``: sort the row descending (ties by lower index) and keep every entry whose *preceding* mass is
``<= top_p``, plus the ``min_clusters`` first entries regardless. :func:`top_p_mask_reference` does
exactly that with an argsort, a cumulative sum and a scatter (three passes over ``[rows, C]`` plus a
sort, ~0.8 ms at the Wan 720p shape on an H200).

The kernel finds the same prefix without sorting. With non-negative entries, the mass strictly above a
value, ``S(t) = Σ_{p_j > t} p_j``, falls as ``t`` rises, and an entry is kept iff ``S(p_i)`` plus its equal
predecessors is ``<= top_p``. So the kept entries are those above the smallest value ``t*`` with
``S(t*) <= top_p``, plus the first few (by index) of the entries equal to ``t*``. One Pallas program
holds ``block_rows`` rows in registers and bisects ``t*`` over the float32 bit patterns (which order
non-negative floats like their values): 31 rounds of compare-and-sum, then an exclusive count of the tied
entries. The ``min_clusters`` floor is the same search on counts (the ``min_clusters``-th largest), and
the ``min_weight`` floor the same search on ``weights`` (keep the most probable entries until their
weights first reach ``min_weight``: SVG2 with cluster sizes as weights keeps a share of the key tokens).

Rounding: both sum the same entries but in a different order (the reference's running sum, the kernel's
reduction tree), so an entry whose preceding mass lies within float32 rounding of ``top_p`` may be kept
by one and not the other. Everywhere else the masks are equal. Weights that are integers (cluster
sizes) sum exactly in float32 below 2²⁴, so the ``min_weight`` floor has no such boundary. Entries must be
non-negative (they are probabilities); the result for a row holding a NaN is unspecified.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Bool, Float

from . import checks
from .common import resolve_implementation

_INF_BITS = 0x7F800000  # float32 +inf: every finite non-negative float's bits are below it
_SEARCH_ROUNDS = 31  # bisection over [-2, +inf bits]: the interval is below 2**31


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopPConfig:
    """Launch knobs of the top-p kernel; they change speed (and the sum order: see the module doc)."""

    block_rows: int = 1  # H200, Wan 720p rows (1000 wide): 1 row × 1 warp 0.16 ms, 4 × 4 0.18 ms
    num_warps: int = 1

    def __post_init__(self):
        rows = self.block_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1 or rows & (rows - 1):
            raise ValueError(f"block_rows must be a power of two >= 1 (rows per program); got {rows!r}")
        checks.check_triton_launch(self.num_warps, 1)


def top_p_mask_reference(
    probs: Float[Array, "*G C"],
    *,
    top_p: float,
    min_clusters: int = 0,
    weights: Float[Array, "*G C"] | None = None,
    min_weight: float = 0.0,
) -> Bool[Array, "*G C"]:
    """Oracle: sort each row descending (stable: ties by lower index) and keep every entry whose
    preceding cumulative mass is ``<= top_p``, whose rank is below ``min_clusters``, or whose preceding
    cumulative weight (``weights`` broadcast to ``probs``) is ``< min_weight``."""
    c = probs.shape[-1]
    order = jnp.argsort(-probs, axis=-1, stable=True)

    def exclusive(x):  # the running sum before each entry
        csum = jnp.cumsum(x, axis=-1)
        return jnp.concatenate([jnp.zeros_like(csum[..., :1]), csum[..., :-1]], axis=-1)

    keep_sorted = (exclusive(jnp.take_along_axis(probs, order, axis=-1)) <= top_p) | (
        jnp.arange(c) < min_clusters
    )
    if weights is not None and min_weight > 0:
        w = jnp.broadcast_to(weights.astype(jnp.float32), probs.shape)
        keep_sorted = keep_sorted | (exclusive(jnp.take_along_axis(w, order, axis=-1)) < min_weight)
    return jnp.put_along_axis(jnp.zeros(probs.shape, jnp.bool_), order, keep_sorted, axis=-1, inplace=False)


def _bisect(preds, lo, hi):
    """Per predicate, the smallest ``t`` in ``(lo, hi]`` where it holds, per row (``[R]`` int32): each
    predicate must be false at ``lo``, true at ``hi`` and monotone in between. The searches share one
    loop, so their reductions overlap."""

    def step(_, bounds):
        out = []
        for pred, (lo, hi) in zip(preds, bounds, strict=True):
            mid = lo + (hi - lo) // 2
            ok = pred(mid)
            out.append((jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)))
        return tuple(out)

    bounds = jax.lax.fori_loop(0, _SEARCH_ROUNDS, step, tuple((lo, hi) for _ in preds))
    return [hi for _, hi in bounds]


def _first_ties(eq, allowed, weight=None):
    """``eq`` entries kept when the first ``allowed(before)`` of them (by column) are: ``before`` is the
    exclusive count of ``eq`` entries to the left, or with ``weight``, the exclusive sum of their weights."""
    eq_w = eq.astype(jnp.int32) if weight is None else jnp.where(eq, weight, 0.0)
    return eq & allowed(jnp.cumsum(eq_w, axis=1) - eq_w)


def _make_kernel(
    *,
    block_rows: int,
    cols: int,
    top_p: float,
    min_clusters: int,
    min_weight: float,
    rows_per_weight: int,
    num_rows: int,
    num_cols: int,
):
    """The kernel for ``block_rows`` rows per program, each padded from ``num_cols`` to ``cols`` (a power
    of two): reads ``[num_rows, num_cols]`` float32 probabilities in place (clamped indices), with
    ``min_weight > 0`` also the float32 weights (one row per ``rows_per_weight`` rows of probabilities),
    and writes an int8 ``[block_rows, cols]`` block of the padded mask."""

    def kernel(p_ref, *refs):
        *w_ref, o_ref = refs
        row = pl.program_id(0) * block_rows + jax.lax.broadcasted_iota(jnp.int32, (block_rows, 1), 0)
        col = jax.lax.broadcasted_iota(jnp.int32, (1, cols), 1)
        row_in, col_in = jnp.minimum(row, num_rows - 1), jnp.minimum(col, num_cols - 1)  # no mask needed
        valid = (col < num_cols) & (row < num_rows)  # [br, cols]
        p = jnp.where(valid, p_ref[row_in, col_in], 0.0)  # [br, cols] float32
        # Sort keys: the bits of a non-negative float order like its value; -0 is +0; padding is below.
        key = jnp.where(valid, jax.lax.bitcast_convert_type(jnp.where(p > 0, p, 0.0), jnp.int32), -2)
        lo = jnp.full((block_rows,), -2, jnp.int32)
        hi = jnp.full((block_rows,), _INF_BITS, jnp.int32)
        sum_above = lambda x, t: jnp.sum(jnp.where(key > t[:, None], x, 0.0), axis=1)  # [br]
        count_ge = lambda t: jnp.sum((key >= t[:, None]).astype(jnp.int32), axis=1)
        # t*: the smallest key whose mass above is <= top_p (-1 when the whole row's mass is); t_m: the
        # min_clusters-th largest key, the largest t with count_ge(t) >= m, found as the smallest t with
        # count_ge(t + 1) < m; t_w: the smallest key whose weight above is < min_weight.
        preds = [lambda t: sum_above(p, t) <= top_p]
        if min_clusters > 0:
            preds.append(lambda t: count_ge(t + 1) < min_clusters)
        if min_weight > 0:
            (w_ref,) = w_ref
            w = jnp.where(valid, w_ref[row_in // rows_per_weight, col_in], 0.0)  # [br, cols] float32
            preds.append(lambda t: sum_above(w, t) < min_weight)
        t_p, *floors = _bisect(preds, lo, hi)
        before_tie = sum_above(p, t_p)[:, None]  # [br, 1] mass preceding the first entry equal to t*
        value = jax.lax.bitcast_convert_type(jnp.maximum(t_p, 0), jnp.float32)[:, None]
        keep = (key > t_p[:, None]) | _first_ties(
            key == t_p[:, None], lambda r: before_tie + r.astype(jnp.float32) * value <= top_p
        )
        if min_clusters > 0:  # the floor: every key above t_m, then the first ties at t_m by index
            t_m = floors.pop(0)
            above = jnp.sum((key > t_m[:, None]).astype(jnp.int32), axis=1)[:, None]
            tied = _first_ties(key == t_m[:, None], lambda r: r < min_clusters - above)
            keep = keep | (key > t_m[:, None]) | tied
        if min_weight > 0:  # every key above t_w, then ties at t_w while the weight before them is short
            (t_w,) = floors
            above = sum_above(w, t_w)[:, None]
            tied = _first_ties(key == t_w[:, None], lambda before: above + before < min_weight, w)
            keep = keep | (key > t_w[:, None]) | tied
        o_ref[...] = (keep & valid).astype(jnp.int8)

    return kernel


def _check(probs, top_p, min_clusters, weights, min_weight) -> None:
    if probs.ndim < 1 or probs.shape[-1] == 0:
        raise ValueError(f"probs must have shape [..., C] with C >= 1; got {probs.shape}")
    if probs.dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"probs must be float32, bfloat16 or float16; got {probs.dtype}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p:
        raise ValueError(f"top_p must be a float > 0 (mass to keep per row); got {top_p!r}")
    if isinstance(min_clusters, bool) or not isinstance(min_clusters, int) or min_clusters < 0:
        raise ValueError(f"min_clusters must be an int >= 0; got {min_clusters!r}")
    if isinstance(min_weight, bool) or not isinstance(min_weight, (int, float)) or not min_weight >= 0:
        raise ValueError(f"min_weight must be a float >= 0 (weight to keep per row); got {min_weight!r}")
    if min_weight > 0 and weights is None:
        raise ValueError("min_weight > 0 needs weights (one per entry of probs, e.g. the cluster sizes)")
    if weights is not None:
        try:
            broadcast = jnp.broadcast_shapes(weights.shape, probs.shape) == probs.shape
        except ValueError:
            broadcast = False
        if not broadcast or weights.ndim > probs.ndim:
            raise ValueError(
                f"weights must broadcast to probs' shape {probs.shape} (e.g. [..., 1, C] for one row of "
                f"weights per group of rows); got {weights.shape}"
            )
        if not (jnp.issubdtype(weights.dtype, jnp.floating) or jnp.issubdtype(weights.dtype, jnp.integer)):
            raise ValueError(f"weights must be a float or int array; got {weights.dtype}")
    if checks.is_concrete(probs) and probs.size and bool(jnp.any(probs < 0)):
        raise ValueError("probs must be non-negative (probabilities); found negative entries")
    if weights is not None and checks.is_concrete(weights) and weights.size and bool(jnp.any(weights < 0)):
        raise ValueError("weights must be non-negative (e.g. cluster sizes); found negative entries")


def _weight_rows(weights: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, int]:
    """``weights`` (broadcastable to ``shape``) as float32 ``[rows, C]`` and how many rows of ``shape``
    share each: a ``[..., 1, C]`` array stays one row per group (no copy per row)."""
    c = shape[-1]
    w = weights.astype(jnp.float32).reshape((1,) * (len(shape) - weights.ndim) + weights.shape)
    if len(shape) >= 2 and w.shape[-2] == 1:
        return jnp.broadcast_to(w, (*shape[:-2], 1, c)).reshape(-1, c), shape[-2]
    return jnp.broadcast_to(w, shape).reshape(-1, c), 1


def top_p_mask(
    probs: Float[Array, "*G C"],
    *,
    top_p: float,
    min_clusters: int = 0,
    weights: Float[Array, "*G C"] | None = None,
    min_weight: float = 0.0,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: TopPConfig | None = None,
) -> Bool[Array, "*G C"]:
    """Per row of ``probs`` (non-negative, float32 math), the entries kept by top-p selection: the most
    probable until their mass first exceeds ``top_p`` (the crossing entry included, ties by lower index),
    the ``min_clusters`` most probable regardless, and the most probable until their ``weights`` (non-
    negative, broadcast to ``probs``; ``[..., 1, C]`` shares one row per group) first reach ``min_weight``
    (the crossing entry included). Rows need not sum to 1.

    ``implementation``: ``"xla"`` (:func:`top_p_mask_reference`, a sort), ``"pallas_triton"`` (the
    threshold search; runs on CPU with ``interpret=True``) or ``"auto"`` (Triton on a GPU, XLA on a
    CPU); there is no Mosaic kernel. The two agree except where a preceding mass is within float32
    rounding of ``top_p`` (module doc). ``config`` tunes the Triton launch.
    """
    _check(probs, top_p, min_clusters, weights, min_weight)
    c = probs.shape[-1]
    probs = probs.astype(jnp.float32)
    min_weight = float(min_weight)  # > 0 only with weights (checked)
    if min_clusters >= c:
        return jnp.ones(probs.shape, jnp.bool_)
    impl = resolve_implementation(implementation)
    if impl == "pallas_mosaic":
        raise NotImplementedError("top_p_mask has no Mosaic GPU kernel; use implementation='pallas_triton'")
    if impl == "xla":
        return top_p_mask_reference(
            probs, top_p=top_p, min_clusters=min_clusters, weights=weights, min_weight=min_weight
        )
    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    config = config or TopPConfig()
    rows = probs.size // c
    if rows == 0:
        return jnp.zeros(probs.shape, jnp.bool_)
    operands = [probs.reshape(rows, c)]
    rows_per_weight = 1
    if min_weight > 0:
        w, rows_per_weight = _weight_rows(weights, probs.shape)
        operands.append(w)
    cols, grid = max(16, pl.next_power_of_2(c)), pl.cdiv(rows, config.block_rows)
    kernel = _make_kernel(
        block_rows=config.block_rows,
        cols=cols,
        top_p=float(top_p),
        min_clusters=min_clusters,
        min_weight=min_weight,
        rows_per_weight=rows_per_weight,
        num_rows=rows,
        num_cols=c,
    )
    mask = pl.pallas_call(
        kernel,
        grid=(grid,),
        out_specs=pl.BlockSpec((config.block_rows, cols), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((grid * config.block_rows, cols), jnp.int8),
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=1),
        interpret=interpret,
        name="top_p_mask",
    )(*operands)
    return mask[:rows, :c].reshape(probs.shape) != 0
