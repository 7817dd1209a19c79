"""Query clusters padded to whole query tiles, so that no tile straddles two query clusters.

The chunk plan (:mod:`.cluster_plan`) cuts the cluster-sorted queries into fixed tiles that ignore cluster
boundaries. A tile spanning two query clusters computes the *union* of their key selections and masks
element by element wherever they differ. When neighbouring clusters select alike (the seriated layouts
SVG2 builds on structured attention) that costs little. When they do not (diffuse heads; the maps of
random weights) a tile computes about twice the pairs its rows need, most of them through the mask.

Aligning moves each query cluster to start at a multiple of ``block_q`` in a longer buffer: cluster ``c``
gets ``ceil(size_c / block_q)`` tiles of its own, whose rows past the cluster are padding (copies of a real
token; their outputs are never read). Every chunk is then uniform. The rows past the last cluster form one
*slack* cluster that selects nothing (its tiles have no chunks), so the buffer has a static length
(:func:`aligned_rows`) and the plan builder needs no change: an aligned layout is just other cluster sizes.
The price is the padding rows, on average half a tile per query cluster.

:func:`aligned_cost` and :func:`fixed_cost` estimate the Mosaic kernel's work under either tiling, so a
caller can pick one per call. The padding is not always the smaller cost: on the seriated maps SVG2
builds from structured tokens the fixed tiles compute 1.02× the selected pairs and the aligned ones 1.27×
(27.4 against 33.7 ms at Wan 720p, H100); on random maps at density 0.13 the fixed tiles compute 1.94×,
most of it masked, the aligned ones 1.74× (89.9 against 75.9 ms; ``benchmarks/query_tiles.py``).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .cluster_plan import ClusterTilePlan
from .cluster_sparse_attn_mosaic import needs_mask
from .reference import cluster_labels


def aligned_rows(num_q: int, num_clusters: int, block_q: int) -> int:
    """Static length of an aligned query buffer: every cluster may waste ``block_q - 1`` rows, plus whole
    tiles for the slack cluster."""
    return -(-(num_q + num_clusters * (block_q - 1)) // block_q) * block_q


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AlignedQueries:
    """An aligned query layout (see the module docstring).

    Fields:
      sizes: int32 ``[B, H, Cq+1]`` each query cluster's size rounded up to whole tiles, then the slack
        cluster (the rest of the ``rows``).
      cluster_map: bool ``[B, H, Cq+1, Ck]`` the map with an all-False slack row.
      dst: int32 ``[B, H, N]`` the aligned row of each cluster-sorted query row.
      tile_rows: int32 ``[B, H, rows / block_q]`` the real (not padding) rows of each tile: ``block_q``
        inside a cluster, what is left in its last tile, 0 in the slack cluster's.
    """

    sizes: Int[Array, "B H Cq1"]
    cluster_map: Bool[Array, "B H Cq1 Ck"]
    dst: Int[Array, "B H N"]
    tile_rows: Int[Array, "B H nqt"]
    rows: int = dataclasses.field(metadata=dict(static=True))

    def source(self, src: Int[Array, "B H N"]) -> Int[Array, "B H rows"]:
        """The source token of each aligned row, given ``src`` for the sorted rows: padding rows take
        token 0 (finite; their outputs are dropped)."""
        b, h, _ = src.shape
        bi, hi = jnp.arange(b)[:, None, None], jnp.arange(h)[None, :, None]
        return jnp.zeros((b, h, self.rows), src.dtype).at[bi, hi, self.dst].set(src, unique_indices=True)

    def restore(self, sorted_row: Int[Array, "B H N"]) -> Int[Array, "B H N"]:
        """The aligned row of each token, given each token's sorted row (an inverse permutation)."""
        return jnp.take_along_axis(self.dst, sorted_row, axis=-1)


def align_query_clusters(
    q_cluster_sizes: Int[Array, "B H Cq"], cluster_map: Bool[Array, "B H Cq Ck"], *, num_q: int, block_q: int
) -> AlignedQueries:
    """Pad each query cluster (sizes summing to ``num_q``) to whole ``block_q`` tiles inside a buffer of
    :func:`aligned_rows` rows."""
    if block_q < 1:
        raise ValueError(f"block_q must be >= 1; got {block_q}")
    cq = q_cluster_sizes.shape[-1]
    rows = aligned_rows(num_q, cq, block_q)
    sizes = q_cluster_sizes.astype(jnp.int32)
    padded = -(-sizes // block_q) * block_q
    slack = rows - jnp.sum(padded, axis=-1, keepdims=True)
    added = padded - sizes
    shift = jnp.cumsum(added, axis=-1, dtype=jnp.int32) - added  # [B, H, Cq] rows added before cluster c
    labels = cluster_labels(sizes, num_q)  # [B, H, num_q]
    dst = jnp.arange(num_q, dtype=jnp.int32) + jnp.take_along_axis(shift, labels, axis=-1)
    cmap = jnp.pad(cluster_map.astype(jnp.bool_), ((0, 0), (0, 0), (0, 1), (0, 0)))
    tiles = padded // block_q
    tile_cluster = cluster_labels(tiles, rows // block_q)  # [B, H, nqt]; Cq in the slack cluster
    at = lambda x: jnp.take_along_axis(jnp.pad(x, ((0, 0), (0, 0), (0, 1))), tile_cluster, axis=-1)
    first = jnp.cumsum(tiles, axis=-1, dtype=jnp.int32) - tiles  # [B, H, Cq] first tile of each cluster
    local = jnp.arange(rows // block_q, dtype=jnp.int32) - at(first)  # tile index inside its cluster
    tile_rows = jnp.clip(at(sizes) - local * block_q, 0, block_q)
    return AlignedQueries(jnp.concatenate([padded, slack], axis=-1), cmap, dst, tile_rows, rows)


def align_plan(
    plan: ClusterTilePlan,
    q_cluster_sizes: Int[Array, "B H Cq"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    num_q: int,
) -> tuple[AlignedQueries, ClusterTilePlan]:
    """The aligned layout of these query clusters at ``plan``'s ``block_q``, and the plan of the same keys,
    blocks and list width over it (:meth:`~.cluster_plan.ClusterTilePlan.retiled`), marked
    ``one_cluster_tiles``: the Mosaic kernel may then mask only run edges (no key labels, map words or mask
    branches; ``edge_only`` of :func:`~.cluster_sparse_attn_mosaic.cluster_sparse_attention_mosaic`)."""
    al = align_query_clusters(q_cluster_sizes, cluster_map, num_q=num_q, block_q=plan.block_q)
    return al, retile_aligned(plan, al)


def retile_aligned(plan: ClusterTilePlan, al: AlignedQueries) -> ClusterTilePlan:
    """:func:`align_plan`'s plan for a layout the caller already has (built at ``plan``'s ``block_q``)."""
    tiles = plan.retiled(al.sizes, al.cluster_map, num_q=al.rows)
    return dataclasses.replace(tiles, one_cluster_tiles=True)


def fixed_cost(plan: ClusterTilePlan, masked_weight: float) -> Float[Array, "B H"]:
    """Work of a plan in unmasked-chunk units: each chunk 1, each chunk that takes a mask (a run's edge
    chunk or a mixed one: :func:`~.cluster_sparse_attn_mosaic.needs_mask`) ``masked_weight`` more. A
    narrow plan lists only its first ``width`` chunks per tile; their masked share stands for the rest."""
    masked = jnp.sum(needs_mask(plan), axis=(-2, -1), dtype=jnp.float32)
    chunks = jnp.sum(plan.chunk_counts, axis=-1).astype(jnp.float32)
    seen = jnp.sum(jnp.minimum(plan.chunk_counts, plan.width), axis=-1).astype(jnp.float32)
    return chunks * (1.0 + masked_weight * masked / jnp.maximum(seen, 1.0))


def aligned_cost(
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    block_q: int,
    block_k: int,
    masked_weight: float,
) -> Float[Array, "B H"]:
    """Estimated work of the aligned plan in :func:`fixed_cost`'s units, without building it. Per query
    cluster and tile: its selected key rows over ``block_k`` plus half a chunk per run of consecutive
    selected key clusters (each run's partial last chunk), and as masked chunks two per run (its edges) or
    all of them if fewer. Empty key clusters are not skipped, so runs that would bridge one count twice."""
    sel = cluster_map & (k_cluster_sizes > 0)[..., None, :]
    rows = jnp.sum(jnp.where(sel, k_cluster_sizes[..., None, :], 0), axis=-1).astype(jnp.float32)
    runs = jnp.sum(sel & ~jnp.pad(sel, ((0, 0), (0, 0), (0, 0), (1, 0)))[..., :-1], axis=-1)
    chunks = rows / block_k + 0.5 * runs
    masked = jnp.minimum(2.0 * runs, chunks)
    tiles = -(-q_cluster_sizes // block_q)
    return jnp.sum(tiles * (chunks + masked_weight * masked), axis=-1)
