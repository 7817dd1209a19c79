"""Batched Lloyd k-means (squared L2) for SVG2's semantic clustering, traceable end to end.

Each iteration is an assignment (the fused Pallas distance + argmin kernel,
:func:`svg_jax.pallas_kernels.kmeans_assign`) followed by an update (a segment sum of the members of
each cluster, divided by its size). Everything runs under ``jax.jit``: the optional early exit on ``tol``
is a ``lax.while_loop`` with a static iteration cap, so no host synchronisation is needed.
"""

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from svg_jax.pallas_kernels import KMeansAssignConfig, kmeans_assign

log = logging.getLogger(__name__)


class KMeansResult(NamedTuple):
    """Outcome of :func:`kmeans` (a pytree).

    ``labels`` and ``sizes`` come from the last assignment; ``centroids`` are the means of those clusters
    (a cluster that ended empty keeps its previous centroid), so ``sizes == bincount(labels)``.
    """

    labels: Int[Array, "G N"]  # cluster of each row, in [0, K)
    centroids: Float[Array, "G K D"]  # float32
    sizes: Int[Array, "G K"]  # rows per cluster; zero for empty clusters
    num_iters_run: Int[Array, ""]  # Lloyd iterations actually run (<= num_iters)


def _check(x, num_clusters, num_iters, key, init_centroids, tol) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3 [G, N, D]; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array; got dtype {x.dtype}")
    g, n, d = x.shape
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
    if init_centroids is not None and init_centroids.shape != (g, num_clusters, d):
        raise ValueError(
            f"init_centroids must have shape [G, K, D] = {(g, num_clusters, d)}; got {init_centroids.shape}"
        )
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be None or a float >= 0 (max centroid L2 shift); got {tol!r}")


def random_init(x: Float[Array, "G N D"], num_clusters: int, key: PRNGKeyArray) -> Float[Array, "G K D"]:
    """Cold start: ``num_clusters`` distinct random rows of each group (float32)."""
    g, n, _ = x.shape
    keys = jax.random.split(key, g)
    idx = jax.vmap(lambda kk: jax.random.choice(kk, n, (num_clusters,), replace=False))(keys)  # [G, K]
    return jnp.take_along_axis(x, idx[:, :, None], axis=1).astype(jnp.float32)


def update_centroids(
    x: Float[Array, "G N D"], labels: Int[Array, "G N"], centroids: Float[Array, "G K D"]
) -> tuple[Float[Array, "G K D"], Int[Array, "G K"]]:
    """Lloyd update: mean of each cluster's rows (float32 sums); empty clusters keep their centroid."""
    g, n, d = x.shape
    k = centroids.shape[1]
    seg = (labels + k * jnp.arange(g, dtype=jnp.int32)[:, None]).reshape(g * n)  # [G·N] global cluster ids
    sums = jax.ops.segment_sum(x.reshape(g * n, d).astype(jnp.float32), seg, num_segments=g * k)  # [G·K, D]
    sizes = jax.ops.segment_sum(jnp.ones((g * n,), jnp.int32), seg, num_segments=g * k)  # [G·K]
    sums = sums.reshape(g, k, d)  # [G, K, D]
    sizes = sizes.reshape(g, k)  # [G, K]
    means = sums / jnp.maximum(sizes, 1)[:, :, None].astype(jnp.float32)
    return jnp.where(sizes[:, :, None] > 0, means, centroids), sizes


def kmeans(
    x: Float[Array, "G N D"],
    num_clusters: int,
    *,
    num_iters: int,
    key: PRNGKeyArray | None = None,
    init_centroids: Float[Array, "G K D"] | None = None,
    tol: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
    assign_config: KMeansAssignConfig | None = None,
) -> KMeansResult:
    """Batched Lloyd k-means over ``G`` independent groups of ``N`` points.

    Cold start from ``num_clusters`` distinct random rows per group (``key``), or warm start from
    ``init_centroids``; pass exactly one. Runs at most ``num_iters`` iterations (static); with ``tol``
    it stops after the first iteration whose largest centroid move (L2, over all groups) is ``<= tol``
    (flash-kmeans' rule). ``num_iters=0`` only assigns rows to the initial centroids.

    ``implementation``/``interpret``/``assign_config`` select and tune the assignment kernel
    (see :func:`svg_jax.pallas_kernels.kmeans_assign`); they never change the result.
    """
    _check(x, num_clusters, num_iters, key, init_centroids, tol)
    log.debug("kmeans: G=%d N=%d D=%d K=%d iters<=%d tol=%s", *x.shape, num_clusters, num_iters, tol)
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

    g, n, _ = x.shape
    init = (
        jnp.int32(0),
        jnp.float32(jnp.inf),
        c0,
        jnp.zeros((g, n), jnp.int32),
        jnp.zeros((g, num_clusters), jnp.int32),
    )
    iters, _, centroids, labels, sizes = jax.lax.while_loop(cond, body, init)
    return KMeansResult(labels, centroids, sizes, iters)
