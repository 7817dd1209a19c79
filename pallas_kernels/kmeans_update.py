"""Per-cluster row sums for the k-means (Lloyd) update, from rows sorted by cluster: no atomics.

The update needs ``Σ x[n]`` over the rows of each cluster. A scatter-add (``segment_sum``) does it with
float32 atomics, which serialise on popular clusters and re-read the ``[G·K, D]`` sums through L2 for
every row. Here the caller first sorts each group's rows by label (one flat radix sort, see
:func:`svg_jax.kmeans.sort_by_cluster`), so cluster ``c`` is the contiguous run
``order[bounds[c]:bounds[c+1]]`` of row ids. One Pallas program owns a few clusters of one group; for
each it walks that run ``block_rows`` at a time, gathers the rows through ``order`` (reading ``x`` in
place, token-major or not), adds them into a ``[block_rows, D]`` float32 accumulator and writes the
column sums once. Every sum is written by exactly one program, so ``x`` is read once and nothing
contends. The loop's trip count is the cluster's size (a traced bound); the ragged last chunk re-reads
the cluster's last row (clamped, so never out of bounds) and zeroes it, which keeps the sums exact.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int

from . import checks
from .common import pad_axis, padded_head_dim, resolve_implementation


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterSumsConfig:
    """Launch knobs of the cluster-sum kernel; they change speed and the f32 summation order only."""

    clusters_per_program: int = 2
    block_rows: int = 32
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if not isinstance(self.clusters_per_program, int) or self.clusters_per_program < 1:
            raise ValueError(f"{self.clusters_per_program=} must be an int >= 1")
        checks.check_block_size("block_rows", self.block_rows)
        checks.check_triton_launch(self.num_warps, self.num_stages)


def cluster_sums_reference(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    order: Int[Array, "*groups N"],
    bounds: Int[Array, "*groups K1"],
) -> Float[Array, "*groups K1-1 D"]:
    """Oracle: a float32 ``segment_sum`` of the sorted rows, sorted position ``p`` in cluster ``c`` iff
    ``bounds[c] <= p < bounds[c+1]``."""
    groups, n, d = order.shape[:-1], x.shape[1], x.shape[-1]
    k = bounds.shape[-1] - 1
    g = order.size // n
    xg = x if x.ndim == 3 else jnp.swapaxes(x, 1, 2).reshape(g, n, d)  # [G, N, D]
    rows = jnp.take_along_axis(xg, order.reshape(g, n, 1), axis=1).astype(jnp.float32)  # [G, N, D] sorted
    bg = bounds.reshape(g, k + 1)
    pos = jnp.arange(n, dtype=bg.dtype)
    seg = jax.vmap(lambda b: jnp.searchsorted(b, pos, side="right") - 1)(bg)  # [G, N] cluster of position
    # Positions before bounds[0] (-1) or from bounds[K] (K) belong to no cluster: id G·K is dropped.
    seg = jnp.where((seg >= 0) & (seg < k), seg + k * jnp.arange(g, dtype=seg.dtype)[:, None], g * k)
    sums = jax.ops.segment_sum(rows.reshape(g * n, d), seg.reshape(-1), num_segments=g * k)
    return sums.reshape(*groups, k, d)


def _kernel(
    order_ref,
    bounds_ref,
    x_ref,
    o_ref,
    *,
    clusters_per_program: int,
    block_rows: int,
    num_rows: int,
    num_clusters: int,
):
    k0 = pl.program_id(0) * clusters_per_program
    last = num_rows - 1
    iota = jax.lax.broadcasted_iota(jnp.int32, (block_rows,), 0)

    def cluster(j, carry):
        c = k0 + j  # padded clusters (c >= K) read bounds[K] twice: empty
        start = bounds_ref[jnp.minimum(c, num_clusters)]
        end = bounds_ref[jnp.minimum(c + 1, num_clusters)]

        def chunk(t, acc):
            pos = start + t * block_rows + iota  # [br] sorted positions
            idx = jnp.clip(jnp.minimum(pos, end - 1), 0, last)  # the tail re-reads the last row ...
            rows = jnp.clip(order_ref[idx], 0, last)  # [br] row ids, clamped against bad input
            xr = x_ref[rows, :].astype(jnp.float32)  # [br, Dp] row gather
            return acc + jnp.where((pos < end)[:, None], xr, 0.0)  # ... and drops it

        trips = (jnp.maximum(end - start, 0) + block_rows - 1) // block_rows
        acc = jax.lax.fori_loop(0, trips, chunk, jnp.zeros((block_rows, x_ref.shape[-1]), jnp.float32))
        o_ref[j, :] = jnp.sum(acc, axis=0)
        return carry

    jax.lax.fori_loop(0, clusters_per_program, cluster, 0)


def _call(x, order, bounds, *, config: ClusterSumsConfig, interpret: bool):
    """Launch on x ``[G, N, Dp]`` or token-major ``[B, N, H, Dp]`` (group ``g = b·H + h``), order ``[G, N]``
    and bounds ``[G, K+1]``. Returns ``[G, Kp, Dp]`` float32 sums, ``Kp`` a multiple of the program's
    cluster count (the padded clusters are zero)."""
    n, dp = x.shape[1], x.shape[-1]
    g, k = order.shape[0], bounds.shape[1] - 1
    bk = config.clusters_per_program
    kp = pl.cdiv(k, bk) * bk
    if x.ndim == 3:
        x_spec = pl.BlockSpec((None, n, dp), lambda ci, gi: (gi, 0, 0))
    else:  # one group's rows are strided H·Dp apart: read in place, no transpose
        heads = x.shape[2]
        x_spec = pl.BlockSpec((None, n, None, dp), lambda ci, gi: (gi // heads, 0, gi % heads, 0))
    kernel = functools.partial(
        _kernel, clusters_per_program=bk, block_rows=config.block_rows, num_rows=n, num_clusters=k
    )
    return pl.pallas_call(
        kernel,
        grid=(kp // bk, g),
        in_specs=[
            pl.BlockSpec((None, n), lambda ci, gi: (gi, 0)),
            pl.BlockSpec((None, k + 1), lambda ci, gi: (gi, 0)),
            x_spec,
        ],
        out_specs=pl.BlockSpec((None, bk, dp), lambda ci, gi: (gi, ci, 0)),
        out_shape=jax.ShapeDtypeStruct((g, kp, dp), jnp.float32),
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="kmeans_cluster_sums",
    )(order, bounds, x)


def _check_inputs(x, order, bounds) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"x must have rank 3 [G, N, D] or rank 4 [B, N, H, D] (token-major); got shape {x.shape}"
        )
    if x.dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16; got {x.dtype}")
    groups, n = ((x.shape[0],) if x.ndim == 3 else (x.shape[0], x.shape[2])), x.shape[1]
    names, bnames = ("[G, N]", "[G, K+1]") if x.ndim == 3 else ("[B, H, N]", "[B, H, K+1]")
    if n == 0:
        raise ValueError(f"x needs at least one row per group; got shape {x.shape}")
    checks.check_int_array(f"order {names} (each group's row ids sorted by label)", order, (*groups, n))
    if bounds.ndim != len(groups) + 1 or bounds.shape[-1] < 2:
        raise ValueError(
            f"bounds must be {bnames} with K >= 1 (first sorted position of each cluster, then N) "
            f"for x of shape {x.shape}; got {bounds.shape}"
        )
    checks.check_int_array("bounds", bounds, (*groups, bounds.shape[-1]))
    checks.check_value_range("order", order, 0, n, f"row ids into N={n}")
    checks.check_value_range("bounds", bounds, 0, n + 1, f"sorted positions in [0, N={n}]")
    if checks.is_concrete(bounds) and bool(jnp.any(jnp.diff(bounds, axis=-1) < 0)):
        raise ValueError("bounds must be non-decreasing along the last axis (clusters in label order)")


def cluster_sums(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    order: Int[Array, "*groups N"],
    bounds: Int[Array, "*groups K1"],
    *,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: ClusterSumsConfig | None = None,
) -> Float[Array, "*groups K1-1 D"]:
    """Float32 sum of each cluster's rows, given each group's rows sorted by cluster.

    ``x`` is ``[G, N, D]`` or token-major ``[B, N, H, D]`` (one group per ``(b, h)``, read in place);
    ``order`` holds each group's row ids sorted by label and ``bounds[..., c]`` the first sorted position
    of cluster ``c`` (``bounds[..., K] = N``), so the sizes are ``diff(bounds)`` and an empty cluster
    sums to zero. Values are checked on concrete inputs; under ``jit`` the kernel clamps every index.

    ``implementation``: ``"xla"`` (:func:`cluster_sums_reference`), ``"pallas_triton"`` (runs on CPU
    with ``interpret=True``) or ``"auto"`` (Triton on GPU, XLA on CPU); there is no Mosaic kernel.
    ``interpret`` defaults to True off-GPU; ``config`` tunes the Triton launch.
    """
    _check_inputs(x, order, bounds)
    impl = resolve_implementation(implementation)
    if impl == "pallas_mosaic":
        raise NotImplementedError("cluster_sums has no Mosaic GPU kernel; use implementation='pallas_triton'")
    if impl == "xla":
        return cluster_sums_reference(x, order, bounds)
    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    groups, n, d = order.shape[:-1], x.shape[1], x.shape[-1]
    k = bounds.shape[-1] - 1
    g = order.size // n
    xp = pad_axis(x, x.ndim - 1, padded_head_dim(d))  # a copy only when D is not a power of two >= 16
    sums = _call(
        xp,
        order.reshape(g, n).astype(jnp.int32),
        bounds.reshape(g, k + 1).astype(jnp.int32),
        config=config or ClusterSumsConfig(),
        interpret=interpret,
    )  # [G, Kp, Dp]
    return sums[:, :k, :d].reshape(*groups, k, d)
