"""Batched Lloyd k-means (squared L2) for SVG2's semantic clustering, traceable end to end.

Each iteration is an assignment (the fused Pallas distance + argmin kernel,
:func:`svg_jax.pallas_kernels.kmeans_assign`) followed by an update (a segment sum of the members of
each cluster, divided by its size). Everything runs under ``jax.jit``: the optional early exit on ``tol``
is a ``lax.while_loop`` with a static iteration cap, so no host synchronisation is needed.

Points come as ``[G, N, D]`` (groups outermost) or token-major ``[B, N, H, D]``, the attention layout,
with one group per ``(b, h)``: then centroids are ``[B, H, K, D]`` and labels ``[B, H, N]``, and neither
the assignment nor the update transposes the points.
"""

import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from svg_jax.pallas_kernels import KMeansAssignConfig, kmeans_assign
from svg_jax.pallas_kernels.kmeans import group_shape

log = logging.getLogger(__name__)


class KMeansResult(NamedTuple):
    """Outcome of :func:`kmeans` (a pytree).

    ``labels`` and ``sizes`` come from the last assignment; ``centroids`` are the means of those clusters
    (a cluster that ended empty keeps its previous centroid), so ``sizes == bincount(labels)``.
    """

    labels: Int[Array, "*groups N"]  # cluster of each row, in [0, K)
    centroids: Float[Array, "*groups K D"]  # float32
    sizes: Int[Array, "*groups K"]  # rows per cluster; zero for empty clusters
    num_iters_run: Int[Array, ""]  # Lloyd iterations actually run (<= num_iters)


def _check(x, num_clusters, num_iters, key, init_centroids, tol) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"x must have rank 3 [G, N, D] or rank 4 [B, N, H, D] (token-major); got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array; got dtype {x.dtype}")
    n, d = x.shape[1], x.shape[-1]
    if not isinstance(num_clusters, int) or not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be an int in [1, N={n}] (rows per group); got {num_clusters!r}")
    if not isinstance(num_iters, int) or num_iters < 0:
        raise ValueError(f"num_iters must be a non-negative int (a static cap); got {num_iters!r}")
    if (key is None) == (init_centroids is None):
        raise ValueError(
            "pass exactly one of key (cold start from random data points) and init_centroids (warm start); "
            f"got key={'set' if key is not None else None}, "
            f"init_centroids={'set' if init_centroids is not None else None}"
        )
    want = (*group_shape(x), num_clusters, d)
    if init_centroids is not None and init_centroids.shape != want:
        names = "[G, K, D]" if x.ndim == 3 else "[B, H, K, D]"
        raise ValueError(f"init_centroids must have shape {names} = {want}; got {init_centroids.shape}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be None or a float >= 0 (max centroid L2 shift); got {tol!r}")


def random_init(
    x: Float[Array, "*lead N D"], num_clusters: int, key: PRNGKeyArray
) -> Float[Array, "*groups K D"]:
    """Cold start: ``num_clusters`` distinct random rows of each group (float32)."""
    groups, n = group_shape(x), x.shape[1]
    g = math.prod(groups)
    keys = jax.random.split(key, g)
    idx = jax.vmap(lambda kk: jax.random.choice(kk, n, (num_clusters,), replace=False))(keys)  # [G, K]
    if x.ndim == 3:
        rows = jnp.take_along_axis(x, idx[:, :, None], axis=1)  # [G, K, D]
    else:
        gi = jnp.arange(g)[:, None]
        rows = x[gi // x.shape[2], idx, gi % x.shape[2]]  # [G, K, D]
    return rows.reshape(*groups, num_clusters, x.shape[-1]).astype(jnp.float32)


def update_centroids(
    x: Float[Array, "*lead N D"], labels: Int[Array, "*groups N"], centroids: Float[Array, "*groups K D"]
) -> tuple[Float[Array, "*groups K D"], Int[Array, "*groups K"]]:
    """Lloyd update: mean of each cluster's rows (float32 sums); empty clusters keep their centroid.

    One segment sum over the rows of ``x`` in memory order (token-major ``x`` is not transposed: each
    row's segment id is its group's offset plus its label)."""
    groups, d = group_shape(x), x.shape[-1]
    k = centroids.shape[-2]
    g = math.prod(groups)
    seg = labels.reshape(g, -1) + k * jnp.arange(g, dtype=jnp.int32)[:, None]  # [G, N] global cluster ids
    if x.ndim == 4:  # rows are ordered (b, n, h): lay the ids out the same way
        b, n, h, _ = x.shape
        seg = jnp.swapaxes(seg.reshape(b, h, n), 1, 2)  # [B, N, H]
    rows, seg = x.reshape(-1, d).astype(jnp.float32), seg.reshape(-1)
    sums = jax.ops.segment_sum(rows, seg, num_segments=g * k).reshape(*groups, k, d)
    sizes = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=g * k).reshape(*groups, k)
    means = sums / jnp.maximum(sizes, 1)[..., None].astype(jnp.float32)
    return jnp.where(sizes[..., None] > 0, means, centroids), sizes


def kmeans(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    num_clusters: int,
    *,
    num_iters: int,
    key: PRNGKeyArray | None = None,
    init_centroids: Float[Array, "*groups K D"] | None = None,
    tol: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
    assign_config: KMeansAssignConfig | None = None,
) -> KMeansResult:
    """Batched Lloyd k-means over independent groups of ``N`` points: ``[G, N, D]``, or token-major
    ``[B, N, H, D]`` with one group per ``(b, h)`` (then ``init_centroids`` and the result's centroids are
    ``[B, H, K, D]``, its labels ``[B, H, N]``).

    Cold start from ``num_clusters`` distinct random rows per group (``key``), or warm start from
    ``init_centroids``; pass exactly one. Runs at most ``num_iters`` iterations (static); with ``tol``
    it stops after the first iteration whose largest centroid move (L2, over all groups) is ``<= tol``
    (flash-kmeans' rule). ``num_iters=0`` only assigns rows to the initial centroids.

    ``implementation``/``interpret``/``assign_config`` select and tune the assignment kernel
    (see :func:`svg_jax.pallas_kernels.kmeans_assign`); they never change the result.
    """
    _check(x, num_clusters, num_iters, key, init_centroids, tol)
    log.debug("kmeans: x=%s K=%d iters<=%d tol=%s", x.shape, num_clusters, num_iters, tol)
    c0 = random_init(x, num_clusters, key) if init_centroids is None else init_centroids.astype(jnp.float32)

    def assign(c):
        labels, _ = kmeans_assign(
            x, c, implementation=implementation, interpret=interpret, config=assign_config
        )
        return labels

    if num_iters == 0:
        labels = assign(c0)
        _, sizes = update_centroids(x, labels, c0)
        return KMeansResult(labels, c0, sizes, jnp.int32(0))

    def cond(carry):
        i, shift = carry[0], carry[1]
        go = i < num_iters
        if tol is not None:
            go &= (i == 0) | (shift > tol)
        return go

    def body(carry):
        i, _, c, _, _ = carry
        labels = assign(c)
        new_c, sizes = update_centroids(x, labels, c)
        shift = jnp.sqrt(jnp.max(jnp.sum((new_c - c) ** 2, axis=-1)))
        return i + 1, shift, new_c, labels, sizes

    groups, n = group_shape(x), x.shape[1]
    init = (
        jnp.int32(0),
        jnp.float32(jnp.inf),
        c0,
        jnp.zeros((*groups, n), jnp.int32),
        jnp.zeros((*groups, num_clusters), jnp.int32),
    )
    iters, _, centroids, labels, sizes = jax.lax.while_loop(cond, body, init)
    return KMeansResult(labels, centroids, sizes, iters)
