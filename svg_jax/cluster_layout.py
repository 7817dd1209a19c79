"""Cluster layout: the order in which SVG2 lays its query and key clusters out along the sorted sequence.

k-means labels are arbitrary, so in label order a query cluster's selected key clusters are scattered:
the chunk plan then walks many short runs of key rows, each ending in a partly masked chunk, and a
query tile spanning two query clusters visits the union of two unrelated selections. Which order the
clusters take changes nothing in the attention (every token still sees exactly its selected keys); it
only changes how many chunks the kernel walks. :func:`seriate` picks an order in which the selected
pairs form contiguous blocks, by the barycentre heuristic of bipartite-graph drawing: a key cluster sits
at the mean position of the query clusters selecting it, a query cluster at the mean position of the key
clusters it selects, alternately, starting from label order. On block-structured maps (semantic
clusters) one or two sweeps make each block contiguous; on the Wan 720p preset with Gaussian-mixture
tokens it halves the computed tile density (0.235 → 0.125 against 0.123 selected).
"""

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from svg_jax.pallas_kernels import cluster_labels

# Key clusters nobody selects go last (their rows are never visited; where they sit does not matter).
_UNSELECTED = jnp.float32(3e38)


def inverse_permutation(perm: Int[Array, "*G N"]) -> Int[Array, "*G N"]:
    """``inv[perm[s]] = s`` along the last axis (a scatter: no second sort); for a cluster order, the
    position of each cluster."""
    iota = jnp.broadcast_to(jnp.arange(perm.shape[-1], dtype=perm.dtype), perm.shape)
    return jnp.put_along_axis(jnp.zeros_like(perm), perm, iota, axis=-1, inplace=False)


def _barycentre_order(pos_sum: Array, count: Array) -> Int[Array, "*G C"]:
    """Clusters sorted by the mean position of their partners (``pos_sum`` over ``count`` partners)."""
    bary = jnp.where(count > 0, pos_sum / jnp.maximum(count, 1.0), _UNSELECTED)
    return jnp.argsort(bary, axis=-1, stable=True).astype(jnp.int32)


def seriate(
    cluster_map: Bool[Array, "*G Cq Ck"],
    sweeps: int,
    q_sizes: Int[Array, "*G Cq"] | None = None,
    k_sizes: Int[Array, "*G Ck"] | None = None,
) -> tuple[Int[Array, "*G Cq"], Int[Array, "*G Ck"]]:
    """Orders of the query and key clusters (old cluster id at each new position) in which each query
    cluster's selected key clusters tend to be contiguous and neighbouring query clusters select alike.

    ``sweeps`` barycentre sweeps (key order, then query order, per sweep); ``0`` keeps label order.
    Ties keep label order, so the result is deterministic. With the cluster sizes given, empty clusters go
    last, like unselected ones: they have no rows, but between two clusters they would split what the
    kernel sees as one run or one tile's cluster range (chunks spanning more key clusters and tiles more
    query clusters than its packed-bit mask takes).
    """
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"sweeps must be an int >= 0; got {sweeps!r}")
    *lead, cq, ck = cluster_map.shape
    if q_sizes is not None:
        cluster_map = cluster_map & (q_sizes > 0)[..., :, None]
    if k_sizes is not None:
        cluster_map = cluster_map & (k_sizes > 0)[..., None, :]
    q_order = jnp.broadcast_to(jnp.arange(cq, dtype=jnp.int32), (*lead, cq))
    k_order = jnp.broadcast_to(jnp.arange(ck, dtype=jnp.int32), (*lead, ck))
    if sweeps == 0:
        return q_order, k_order
    a = cluster_map.astype(jnp.float32)
    k_count, q_count = jnp.sum(a, axis=-2), jnp.sum(a, axis=-1)  # [*G, Ck], [*G, Cq]
    q_pos = q_order.astype(jnp.float32)  # label order: each cluster at its own index
    for _ in range(sweeps):
        k_order = _barycentre_order(jnp.einsum("...qk,...q->...k", a, q_pos), k_count)
        k_pos = inverse_permutation(k_order).astype(jnp.float32)
        q_order = _barycentre_order(jnp.einsum("...qk,...k->...q", a, k_pos), q_count)
        q_pos = inverse_permutation(q_order).astype(jnp.float32)
    return q_order, k_order


def relabel(labels: Int[Array, "*G N"], order: Int[Array, "*G C"]) -> Int[Array, "*G N"]:
    """Each token's cluster position under ``order`` (``order[p]`` is the old id at position ``p``)."""
    return jnp.take_along_axis(inverse_permutation(order), labels, axis=-1)


def reorder(x: Array, order: Int[Array, "*G C"]) -> Array:
    """Per-cluster values ``x`` ``[*G, C]`` (sizes, orders) permuted into ``order`` (``order[p]`` is the old
    cluster at position ``p``); a map takes :func:`reorder_map`."""
    if x.shape != order.shape:
        raise ValueError(
            f"x must have the shape of order {order.shape} (one value per cluster; for a [*G, Cq, Ck] map "
            f"use reorder_map); got {x.shape}"
        )
    return jnp.take_along_axis(x, order, axis=-1)


def reorder_map(cluster_map: Array, q_order: Int[Array, "*G Cq"], k_order: Int[Array, "*G Ck"]) -> Array:
    """A ``[*G, Cq, Ck]`` map with both cluster axes permuted: ``out[i, j] = cluster_map[q_order[i],
    k_order[j]]``, as one gather (each entry read once, no intermediate map and no transposes)."""
    *lead, cq, ck = cluster_map.shape
    flat = cluster_map.reshape(*lead, cq * ck)
    idx = q_order[..., :, None] * ck + k_order[..., None, :]  # [*G, Cq, Ck] flat source of each entry
    return jnp.take_along_axis(flat, idx.reshape(*lead, cq * ck), axis=-1).reshape(cluster_map.shape)


def regroup(
    order: Int[Array, "*G N"], sizes: Int[Array, "*G C"], layout: Int[Array, "*G C"]
) -> Int[Array, "*G N"]:
    """``argsort(relabel(labels, layout), stable=True)`` from ``order = argsort(labels, stable=True)``
    and the cluster ``sizes``, without a sort: the rows of each cluster move as one block, in the clusters'
    new order, keeping their order inside the block."""
    new_sizes = reorder(sizes, layout)
    start = lambda s: jnp.cumsum(s, axis=-1, dtype=jnp.int32) - s  # first sorted slot of each cluster
    position = cluster_labels(new_sizes, order.shape[-1])  # [*G, N] new position of each slot's cluster
    old_first = jnp.take_along_axis(start(sizes), layout, axis=-1)  # [*G, C] by new position
    slot = jnp.arange(order.shape[-1], dtype=jnp.int32)
    offset = slot - jnp.take_along_axis(start(new_sizes), position, axis=-1)  # rank inside the cluster
    return jnp.take_along_axis(order, jnp.take_along_axis(old_first, position, axis=-1) + offset, axis=-1)
