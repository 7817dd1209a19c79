"""Tile plan for cluster (variable-block) sparse attention over cluster-sorted sequences.

The sorted query sequence is cut into fixed tiles of ``block_q`` rows and the sorted key sequence into
tiles of ``block_k`` rows, ignoring cluster boundaries. Query tile ``t`` must visit key tile ``s`` when
some query cluster overlapping ``t`` selects some key cluster overlapping ``s``. Because clusters are
contiguous, the clusters overlapping a tile form a label interval ``[lo, hi]``, so both unions reduce to
prefix sums:

* ``row_union[t, j] = any(map[lo_t..hi_t, j])`` — a prefix sum over query clusters;
* ``active[t, s] = any(row_union[t, klo_s..khi_s])`` — a prefix sum over key clusters.

A visited tile pair is *full* when every (query cluster, key cluster) pair that has rows in it is
selected and the key tile has no padding; the kernel skips the element mask there. Otherwise the kernel
masks exactly, element by element, with ``map[q_label[r], k_label[c]]``. Padded rows get the sentinel
labels ``Cq`` / ``Ck`` whose map row / column is all False. Everything is ``jnp`` (jittable, no host
sync); sizes of the plan are static.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from .block_mask import block_mask_to_indices
from .reference import cluster_labels


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClusterTilePlan:
    """What the cluster kernel reads, per (batch, head).

    Fields:
      q_labels: int32 ``[B, H, nqt·block_q]`` query-cluster id of each sorted (padded) query row; ``Cq``
        on padding.
      k_labels: int32 ``[B, H, nkt·block_k]`` key-cluster id of each sorted (padded) key row; ``Ck`` on
        padding.
      cluster_map: int8 ``[B, H, Cq+1, Ck+1]`` the map with empty clusters and the sentinel row/column
        cleared.
      kv_tile_indices: int32 ``[B, H, nqt, nkt]`` ascending key tiles visited by each query tile.
      kv_tile_counts: int32 ``[B, H, nqt]`` valid entries of ``kv_tile_indices``.
      kv_tile_full: int8 ``[B, H, nqt, nkt]`` 1 where the listed tile pair needs no element mask.
    """

    q_labels: Int[Array, "B H Nq"]
    k_labels: Int[Array, "B H Nk"]
    cluster_map: Int[Array, "B H Cq1 Ck1"]
    kv_tile_indices: Int[Array, "B H nqt nkt"]
    kv_tile_counts: Int[Array, "B H nqt"]
    kv_tile_full: Int[Array, "B H nqt nkt"]
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_k: int = dataclasses.field(metadata=dict(static=True))

    def computed_tile_pairs(self) -> Int[Array, ""]:
        """Number of (query tile, key tile) products the kernel computes (for effective FLOP counts)."""
        return jnp.sum(self.kv_tile_counts)


def _prefix(x: Array, axis: int) -> Array:
    """Exclusive-inclusive prefix sum with a leading zero: ``out[i] = sum(x[:i])`` along ``axis``."""
    c = jnp.cumsum(x, axis=axis, dtype=jnp.int32)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    return jnp.pad(c, pad)


def _tile_label_range(labels: Int[Array, "G n"], n: int, block: int) -> tuple[Array, Array]:
    """First and last cluster label inside each tile of ``block`` rows over the first ``n`` rows."""
    num_tiles = -(-n // block)
    first = jnp.arange(num_tiles) * block
    last = jnp.minimum(first + block, n) - 1
    return labels[:, first], labels[:, last]  # [G, tiles] each


def _plan_one(q_sizes, k_sizes, cmap, *, num_q: int, num_k: int, block_q: int, block_k: int):
    """Plan for G = B·H flattened groups: q_sizes ``[G, Cq]``, k_sizes ``[G, Ck]``, cmap ``[G, Cq, Ck]``."""
    g, cq = q_sizes.shape
    ck = k_sizes.shape[1]
    nqt, nkt = -(-num_q // block_q), -(-num_k // block_k)
    q_lab = cluster_labels(q_sizes, nqt * block_q)  # [G, Nq_pad]; rows past num_q get label Cq
    k_lab = cluster_labels(k_sizes, nkt * block_k)  # [G, Nk_pad]
    q_nonempty = q_sizes > 0  # [G, Cq]
    k_nonempty = k_sizes > 0  # [G, Ck]
    live = cmap & q_nonempty[:, :, None] & k_nonempty[:, None, :]  # [G, Cq, Ck]

    lo, hi = _tile_label_range(q_lab, num_q, block_q)  # [G, nqt]
    klo, khi = _tile_label_range(k_lab, num_k, block_k)  # [G, nkt]

    # Union of the selected key clusters over the query clusters of each query tile.
    p_rows = _prefix(live.astype(jnp.int32), axis=1)  # [G, Cq+1, Ck]
    take_rows = lambda idx: jnp.take_along_axis(p_rows, idx[:, :, None], axis=1)  # [G, nqt, Ck]
    row_union = (take_rows(hi + 1) - take_rows(lo)) > 0  # [G, nqt, Ck]
    p_cols = _prefix(row_union.astype(jnp.int32), axis=2)  # [G, nqt, Ck+1]
    take_cols = lambda idx: jnp.take_along_axis(
        p_cols, jnp.broadcast_to(idx[:, None, :], (g, nqt, nkt)), axis=2
    )
    active = (take_cols(khi + 1) - take_cols(klo)) > 0  # [G, nqt, nkt]

    # Full tile pairs: selected pairs == present pairs inside [lo, hi] x [klo, khi], and no key padding.
    sat = _prefix(_prefix(live.astype(jnp.int32), axis=1), axis=2)  # [G, Cq+1, Ck+1]
    nq_present = _prefix(q_nonempty.astype(jnp.int32), axis=1)  # [G, Cq+1]
    nk_present = _prefix(k_nonempty.astype(jnp.int32), axis=1)  # [G, Ck+1]
    rows_q = (
        jnp.broadcast_to(lo[:, :, None], (g, nqt, nkt)),
        jnp.broadcast_to(hi[:, :, None] + 1, (g, nqt, nkt)),
    )
    cols_k = (
        jnp.broadcast_to(klo[:, None, :], (g, nqt, nkt)),
        jnp.broadcast_to(khi[:, None, :] + 1, (g, nqt, nkt)),
    )
    flat = sat.reshape(g, -1)  # [G, (Cq+1)·(Ck+1)]
    corner = lambda r, c: jnp.take_along_axis(flat, (r * (ck + 1) + c).reshape(g, -1), axis=1).reshape(
        g, nqt, nkt
    )
    selected = (
        corner(rows_q[1], cols_k[1])
        - corner(rows_q[0], cols_k[1])
        - corner(rows_q[1], cols_k[0])
        + corner(rows_q[0], cols_k[0])
    )  # [G, nqt, nkt]
    present_q = jnp.take_along_axis(nq_present, hi + 1, axis=1) - jnp.take_along_axis(nq_present, lo, axis=1)
    present_k = jnp.take_along_axis(nk_present, khi + 1, axis=1) - jnp.take_along_axis(
        nk_present, klo, axis=1
    )
    no_pad = (jnp.arange(nkt) + 1) * block_k <= num_k  # [nkt]
    full = active & (selected == present_q[:, :, None] * present_k[:, None, :]) & no_pad[None, None, :]

    idx, cnt = block_mask_to_indices(active)  # [G, nqt, nkt], [G, nqt]
    full_list = jnp.take_along_axis(full, idx, axis=2)  # [G, nqt, nkt]
    map_ext = jnp.pad(live, ((0, 0), (0, 1), (0, 1)))  # sentinel row/column stay False
    return q_lab, k_lab, map_ext.astype(jnp.int8), idx, cnt, full_list.astype(jnp.int8)


def cluster_tile_plan(
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    num_q: int,
    num_k: int,
    block_q: int,
    block_k: int,
) -> ClusterTilePlan:
    """Build the :class:`ClusterTilePlan` for fixed ``block_q`` × ``block_k`` tiles (on device)."""
    b, h = q_cluster_sizes.shape[:2]
    flat = lambda x: x.reshape(b * h, *x.shape[2:])
    outs = _plan_one(
        flat(q_cluster_sizes.astype(jnp.int32)),
        flat(k_cluster_sizes.astype(jnp.int32)),
        flat(cluster_map.astype(jnp.bool_)),
        num_q=num_q,
        num_k=num_k,
        block_q=block_q,
        block_k=block_k,
    )
    q_lab, k_lab, cmap, idx, cnt, full = (x.reshape(b, h, *x.shape[1:]) for x in outs)
    return ClusterTilePlan(q_lab, k_lab, cmap, idx, cnt, full, block_q, block_k)
