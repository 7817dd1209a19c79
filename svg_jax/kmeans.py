"""Batched Lloyd k-means (squared L2) for SVG2's semantic clustering, traceable end to end.

Each iteration is an assignment (the fused Pallas distance + argmin kernel,
:func:`svg_jax.pallas_kernels.kmeans_assign`) followed by an update: the sum of the members of each
cluster, divided by its size. On GPU the update sorts each group's rows by label (one flat radix sort)
and sums each cluster's contiguous run with :func:`svg_jax.pallas_kernels.cluster_sums`, one writer per
sum; the XLA oracle is a float32 ``segment_sum``, i.e. a scatter-add with atomics. Everything runs under
``jax.jit``: the optional early exit on ``tol`` is a ``lax.while_loop`` with a static iteration cap, so
no host synchronisation is needed.

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

from svg_jax.pallas_kernels import KMeansAssignConfig, cluster_sums, kmeans_assign
from svg_jax.pallas_kernels.common import resolve_implementation
from svg_jax.pallas_kernels.kmeans import group_shape

log = logging.getLogger(__name__)

SORT16_KEYS = 2**16  # up to this many keys (groups·clusters) sort as uint16: labels lie in [0, clusters)


class KMeansResult(NamedTuple):
    """Outcome of :func:`kmeans` (a pytree).

    ``labels`` and ``sizes`` come from the last assignment; ``centroids`` are the means of those clusters
    (a cluster that ended empty keeps its previous centroid), so ``sizes == bincount(labels)``. ``order``
    is the stable argsort of ``labels`` (each cluster's rows, cluster after cluster): the sort-based
    update computes it anyway, so callers that sort tokens by cluster need not sort again.
    """

    labels: Int[Array, "*groups N"]  # cluster of each row, in [0, K)
    centroids: Float[Array, "*groups K D"]  # float32
    sizes: Int[Array, "*groups K"]  # rows per cluster; zero for empty clusters
    num_iters_run: Int[Array, ""]  # Lloyd iterations actually run (<= num_iters)
    order: Int[Array, "*groups N"]  # argsort(labels, stable=True) per group


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


def sort_by_cluster(
    labels: Int[Array, "*G N"], num_clusters: int
) -> tuple[Int[Array, "*G N"], Int[Array, "*G N"]]:
    """``(order, sorted_labels)``: each group's rows stably sorted by label, in one flat sort over all groups.

    Group ``g``'s keys are offset by ``g·num_clusters``, so a single stable 1-D sort of every group's rows
    (a device-wide radix sort on GPU) lays the groups out one after another; subtracting each group's
    start gives the per-group order. The sorted keys come out of the same sort, so the sorted labels cost
    no gather. Identical to the batched argsort, which sorts each group apart. The keys are 16-bit when
    ``groups·num_clusters`` fits (``SORT16_KEYS``: 40 heads × 1000 clusters do), which halves the radix
    sort's passes, else 32-bit.
    """
    *lead, n = labels.shape
    g = math.prod(lead)
    if g * num_clusters >= 2**31:
        raise ValueError(
            f"cluster_order needs groups·num_clusters < 2**31 for int32 keys; got {g}·{num_clusters}"
        )
    key_dtype = jnp.uint16 if g * num_clusters <= SORT16_KEYS else jnp.int32
    base = jnp.arange(g, dtype=jnp.int32)[:, None]
    keys = (labels.reshape(g, n).astype(jnp.int32) + num_clusters * base).reshape(-1)  # [G·N]
    iota = jnp.arange(g * n, dtype=jnp.int32)
    sorted_keys, order = jax.lax.sort((keys.astype(key_dtype), iota), num_keys=1, is_stable=True)
    order = order.reshape(g, n) - n * base
    sorted_labels = sorted_keys.astype(jnp.int32).reshape(g, n) - num_clusters * base
    return order.reshape(labels.shape), sorted_labels.reshape(labels.shape)


def cluster_order(labels: Int[Array, "*G N"], num_clusters: int) -> Int[Array, "*G N"]:
    """``argsort(labels, axis=-1, stable=True)``, one flat sort over all groups (:func:`sort_by_cluster`)."""
    return sort_by_cluster(labels, num_clusters)[0]


def cluster_bounds(sorted_labels: Int[Array, "*G N"], num_clusters: int) -> Int[Array, "*G K1"]:
    """First sorted position of each cluster, then ``N``: ``bounds[..., c] = #{rows with label < c}``.

    ``sorted_labels`` are each group's labels in ascending order (:func:`sort_by_cluster`). ``K+1`` binary
    searches per group (unrolled: one fused kernel, log2 N steps) give the sizes as ``diff(bounds)``
    without a histogram, which would be another scatter-add.
    """
    *lead, n = sorted_labels.shape
    g = math.prod(lead)
    rows = sorted_labels.reshape(g, n).astype(jnp.int32)  # [G, N]
    first = jnp.arange(num_clusters + 1, dtype=jnp.int32)
    search = lambda row: jnp.searchsorted(row, first, side="left", method="scan_unrolled")
    return jax.vmap(search)(rows).astype(jnp.int32).reshape(*lead, num_clusters + 1)


def update_centroids(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    labels: Int[Array, "*groups N"],
    centroids: Float[Array, "*groups K D"],
    *,
    implementation: str = "auto",
    interpret: bool | None = None,
) -> tuple[Float[Array, "*groups K D"], Int[Array, "*groups K"]]:
    """Lloyd update: mean of each cluster's rows (float32 sums); empty clusters keep their centroid.

    ``"xla"``: one segment sum over the rows of ``x`` in memory order (token-major ``x`` is not
    transposed: each row's segment id is its group's offset plus its label). ``"pallas_triton"``: sort
    the rows by label (:func:`sort_by_cluster`), find each cluster's run (:func:`cluster_bounds`) and sum
    the runs with :func:`svg_jax.pallas_kernels.cluster_sums` (``interpret`` as there); the sums agree
    up to float32 summation order. ``"auto"`` is Triton on GPU and XLA on CPU; ``"pallas_mosaic"`` (the
    assignment kernel's choice) maps to Triton, as there is no Mosaic update kernel."""
    new_c, sizes, _ = _update(x, labels, centroids, implementation=implementation, interpret=interpret)
    return new_c, sizes


def _update_implementation(implementation: str) -> str:
    """The update's path: ``"pallas_mosaic"`` (the assignment kernel's choice) sums with Triton."""
    return resolve_implementation("pallas_triton" if implementation == "pallas_mosaic" else implementation)


def _update(x, labels, centroids, *, implementation, interpret):
    """:func:`update_centroids` plus the rows' stable order by label where the update sorted (else None)."""
    groups, d = group_shape(x), x.shape[-1]
    k = centroids.shape[-2]
    impl = _update_implementation(implementation)
    order = None
    if impl == "xla":
        g = math.prod(groups)
        seg = labels.reshape(g, -1) + k * jnp.arange(g, dtype=jnp.int32)[:, None]  # [G, N] global ids
        if x.ndim == 4:  # rows are ordered (b, n, h): lay the ids out the same way
            b, n, h, _ = x.shape
            seg = jnp.swapaxes(seg.reshape(b, h, n), 1, 2)  # [B, N, H]
        rows, seg = x.reshape(-1, d).astype(jnp.float32), seg.reshape(-1)
        sums = jax.ops.segment_sum(rows, seg, num_segments=g * k).reshape(*groups, k, d)
        sizes = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=g * k).reshape(*groups, k)
    else:
        order, sorted_labels = sort_by_cluster(labels, k)  # [*groups, N]
        bounds = cluster_bounds(sorted_labels, k)  # [*groups, K+1]
        sums = cluster_sums(x, order, bounds, implementation=impl, interpret=interpret)  # [*groups, K, D]
        sizes = jnp.diff(bounds, axis=-1)  # [*groups, K]
    means = sums / jnp.maximum(sizes, 1)[..., None].astype(jnp.float32)
    return jnp.where(sizes[..., None] > 0, means, centroids), sizes, order


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

    ``implementation``/``interpret`` select the assignment kernel
    (:func:`svg_jax.pallas_kernels.kmeans_assign`, tuned by ``assign_config``) and the update
    (:func:`update_centroids`; ``"pallas_mosaic"`` updates with Triton). They change the centroids only
    by float32 summation order, so labels agree except at near-ties.
    """
    _check(x, num_clusters, num_iters, key, init_centroids, tol)
    log.debug("kmeans: x=%s K=%d iters<=%d tol=%s", x.shape, num_clusters, num_iters, tol)
    c0 = random_init(x, num_clusters, key) if init_centroids is None else init_centroids.astype(jnp.float32)

    opts = dict(implementation=implementation, interpret=interpret)

    def assign(c):
        labels, _ = kmeans_assign(x, c, config=assign_config, **opts)
        return labels

    def result(labels, centroids, sizes, iters, order):
        order = cluster_order(labels, num_clusters) if order is None else order  # the XLA update: sort now
        return KMeansResult(labels, centroids, sizes, iters, order)

    if num_iters == 0:
        labels = assign(c0)
        _, sizes, order = _update(x, labels, c0, **opts)
        return result(labels, c0, sizes, jnp.int32(0), order)

    def cond(carry):
        i, shift = carry[0], carry[1]
        go = i < num_iters
        if tol is not None:
            go &= (i == 0) | (shift > tol)
        return go

    sorts = _update_implementation(implementation) != "xla"  # the update returns the order

    def body(carry):
        i, _, c, _, _, *order = carry
        labels = assign(c)
        new_c, sizes, order = _update(x, labels, c, **opts)
        shift = jnp.sqrt(jnp.max(jnp.sum((new_c - c) ** 2, axis=-1)))
        return i + 1, shift, new_c, labels, sizes, *([order] if sorts else [])

    groups, n = group_shape(x), x.shape[1]
    zeros = jnp.zeros((*groups, n), jnp.int32)
    init = (
        jnp.int32(0),
        jnp.float32(jnp.inf),
        c0,
        zeros,
        jnp.zeros((*groups, num_clusters), jnp.int32),
        *([zeros] if sorts else []),
    )
    iters, _, centroids, labels, sizes, *order = jax.lax.while_loop(cond, body, init)
    return result(labels, centroids, sizes, iters, order[0] if sorts else None)
