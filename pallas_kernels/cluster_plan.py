"""Chunk plan for cluster (variable-block) sparse attention over cluster-sorted sequences.

Queries are cut into fixed tiles of ``block_q`` rows that ignore cluster boundaries. The query clusters
overlapping tile ``t`` form a label interval ``[lo, hi]`` (clusters are contiguous), so the key clusters the
tile needs are the union of their selections — a prefix sum over query clusters. Consecutive selected key
clusters are contiguous rows too, so the union is a few *runs* of key rows; each run is walked in chunks of
``block_k`` rows starting at the run's first row (not at a multiple of ``block_k``), and a chunk's rows
past the run end are masked. So, unlike fixed key tiles, no unselected key cluster is ever computed; the
waste is the tail of each run's last chunk.

A run is *uniform* when every query cluster of the tile selects every key cluster of the run: its chunks
need only the run-end mask. Otherwise (a tile spanning query clusters with different selections) the
kernel also masks element by element with ``map[q_label[r], k_label[c]]``. Padded query rows get the
sentinel label ``Cq`` and padded key rows ``Ck``; their map row / column is all False. Everything is
``jnp`` (jittable, no host sync) with static sizes.

``row_align`` > 1 starts each run's first chunk at the multiple of ``row_align`` at or below the run's
first row (the Mosaic kernel's TMA copies into 8-row tiles need that); the ``lead`` rows before the run
are masked like the rows past its end. A chunk's code packs ``uniform + 2·valid + LEAD_UNIT·lead +
SPAN_UNIT·span``: columns ``lead <= c < valid`` belong to the run, and its rows ``0..valid-1`` lie in key
clusters ``chunk_kfirst .. chunk_kfirst + span`` (``span`` saturates at ``MAX_SPAN``).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from .reference import cluster_labels


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClusterTilePlan:
    """What the cluster kernel reads, per (batch, head).

    Fields:
      q_labels: int32 ``[B, H, nqt·block_q]`` query-cluster id of each sorted (padded) query row; ``Cq`` on
        padding.
      k_labels: int32 ``[B, H, Mk]`` key-cluster id of each sorted key row, ``Ck`` on the ``block_k`` (or
        more) padding rows after the last key, so that a chunk starting at any key row stays in bounds.
      cluster_map: int8 ``[B, H, Cq+1, Ck+1]`` the map with empty clusters and the sentinel row/column
        cleared.
      chunk_starts: int32 ``[B, H, nqt, C]`` first key row of each chunk a query tile visits, in order.
      chunk_codes: int32 ``[B, H, nqt, C]`` ``uniform + 2·valid + LEAD_UNIT·lead + SPAN_UNIT·span`` of
        each chunk (:func:`decode_chunk`).
      chunk_kfirst: int32 ``[B, H, nqt, C]`` key cluster of each chunk's first row.
      chunk_counts: int32 ``[B, H, nqt]`` valid entries of the chunk lists.
      q_bounds: int32 ``[B, H, Cq+2]`` first row of each query cluster, then ``N`` (where the sentinel
        cluster starts) and the padded length ``nqt·block_q``.
      k_bounds: int32 ``[B, H, Ck+2]`` the same for key clusters: ``M`` then ``Mk``.
    """

    q_labels: Int[Array, "B H Nq"]
    k_labels: Int[Array, "B H Mk"]
    cluster_map: Int[Array, "B H Cq1 Ck1"]
    chunk_starts: Int[Array, "B H nqt C"]
    chunk_codes: Int[Array, "B H nqt C"]
    chunk_counts: Int[Array, "B H nqt"]
    chunk_kfirst: Int[Array, "B H nqt C"]
    q_bounds: Int[Array, "B H Cq2"]
    k_bounds: Int[Array, "B H Ck2"]
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_k: int = dataclasses.field(metadata=dict(static=True))
    row_align: int = dataclasses.field(default=1, metadata=dict(static=True))

    def computed_rows(self) -> Int[Array, ""]:
        """Key rows × query tiles the kernel computes (``block_k`` per chunk), for effective FLOP counts."""
        return jnp.sum(self.chunk_counts) * self.block_k


LEAD_UNIT = 1 << 10  # chunk code = uniform + 2·valid + LEAD_UNIT·lead + SPAN_UNIT·span (valid <= 256 < 512)
SPAN_UNIT = 1 << 20  # lead < block_k <= 256 < 1024
MAX_SPAN = 255


def decode_chunk(code):
    """``(lead, valid, uniform)`` of a chunk code: columns ``lead <= c < valid`` are the run's rows."""
    return (code // LEAD_UNIT) % (SPAN_UNIT // LEAD_UNIT), (code % LEAD_UNIT) // 2, code % 2


def decode_span(code):
    """Key clusters a chunk's rows ``0..valid-1`` span past its first one (saturating at ``MAX_SPAN``)."""
    return code // SPAN_UNIT


def max_chunks(num_k: int, num_k_clusters: int, block_k: int, row_align: int = 1) -> int:
    """Static bound on chunks per query tile: ``ceil((M + runs·(align-1))/bk)`` plus one partial chunk
    per run (at most ``(Ck+1)//2`` runs)."""
    runs = (num_k_clusters + 1) // 2
    return -(-(num_k + runs * (row_align - 1)) // block_k) + runs


def _prefix(x: Array, axis: int) -> Array:
    """``out[i] = sum(x[:i])`` along ``axis`` (length + 1)."""
    c = jnp.cumsum(x, axis=axis, dtype=jnp.int32)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    return jnp.pad(c, pad)


def _compact(flags: Bool[Array, "G T C"], width: int) -> Int[Array, "G T W"]:
    """Ascending positions of the set flags of each row, in ``width`` slots (unused slots: 0)."""
    g, t, c = flags.shape
    rank = jnp.cumsum(flags, axis=-1, dtype=jnp.int32) - 1
    target = jnp.where(flags, rank, width)  # unset -> dropped
    gi = jnp.arange(g)[:, None, None]
    ti = jnp.arange(t)[None, :, None]
    pos = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), flags.shape)
    return jnp.zeros((g, t, width), jnp.int32).at[gi, ti, target].set(pos, mode="drop")


def _bounds(sizes: Array, total: int, padded: int) -> Array:
    """``[G, C+2]`` first row of each cluster, then ``total`` (the sentinel cluster) and ``padded``."""
    edge = lambda x: jnp.full((sizes.shape[0], 1), x, jnp.int32)
    return jnp.concatenate([_prefix(sizes, 1)[:, :-1], edge(total), edge(padded)], axis=-1)


def _neighbours(nonempty: Bool[Array, "G C"]) -> tuple[Array, Array]:
    """Index of the previous / next non-empty cluster of each cluster (-1 / C when there is none)."""
    c = nonempty.shape[-1]
    idx = jnp.arange(c, dtype=jnp.int32)
    last_seen = jax.lax.cummax(jnp.where(nonempty, idx, -1), axis=1)  # [G, C]
    prev = jnp.pad(last_seen[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    next_seen = jax.lax.cummin(jnp.where(nonempty, idx, c), axis=1, reverse=True)
    nxt = jnp.pad(next_seen[:, 1:], ((0, 0), (0, 1)), constant_values=c)
    return prev, nxt


def _plan(q_sizes, k_sizes, cmap, *, num_q: int, num_k: int, block_q: int, block_k: int, row_align: int):
    """Plan for G = B·H groups: q_sizes ``[G, Cq]``, k_sizes ``[G, Ck]``, cmap ``[G, Cq, Ck]``."""
    g = q_sizes.shape[0]
    ck = k_sizes.shape[1]
    nqt = -(-num_q // block_q)
    width = max_chunks(num_k, ck, block_k, row_align)
    max_runs = (ck + 1) // 2
    q_lab = cluster_labels(q_sizes, nqt * block_q)  # [G, Nq_pad]; rows past num_q get Cq
    k_lab = cluster_labels(k_sizes, num_k + block_k)  # [G, M + bk]; rows past num_k get Ck
    q_nonempty, k_nonempty = q_sizes > 0, k_sizes > 0  # [G, Cq], [G, Ck]
    live = cmap & q_nonempty[:, :, None] & k_nonempty[:, None, :]  # [G, Cq, Ck]

    # Query clusters of each tile: the labels of its first and last real row.
    first = jnp.arange(nqt) * block_q
    lo = q_lab[:, first]  # [G, nqt]
    hi = q_lab[:, jnp.minimum(first + block_q, num_q) - 1]  # [G, nqt]
    present_q = jnp.take_along_axis(_prefix(q_nonempty, 1), hi + 1, 1) - jnp.take_along_axis(
        _prefix(q_nonempty, 1), lo, 1
    )  # [G, nqt] non-empty query clusters in the tile
    p_rows = _prefix(live.astype(jnp.int32), axis=1)  # [G, Cq+1, Ck]
    take = lambda idx: jnp.take_along_axis(p_rows, idx[:, :, None], axis=1)  # [G, nqt, Ck]
    votes = take(hi + 1) - take(lo)  # [G, nqt, Ck] query clusters of the tile selecting key cluster j
    union = votes > 0
    mixed = union & (votes < present_q[:, :, None])  # selected by some, not all, of the tile's clusters

    # Runs of consecutive selected key clusters (empty clusters have no rows and are skipped over).
    prev, nxt = _neighbours(k_nonempty)  # [G, Ck]
    sel_at = lambda idx: jnp.take_along_axis(
        jnp.pad(union, ((0, 0), (0, 0), (1, 1))), jnp.broadcast_to(idx[:, None, :] + 1, union.shape), axis=2
    )
    starts = union & ~sel_at(prev)  # [G, nqt, Ck]
    ends = union & ~sel_at(nxt)
    run_first = _compact(starts, max_runs)  # [G, nqt, R] first key cluster of each run
    run_last = _compact(ends, max_runs)
    num_runs = jnp.sum(starts, axis=-1, dtype=jnp.int32)  # [G, nqt]
    k_end = jnp.cumsum(k_sizes, axis=-1, dtype=jnp.int32)  # [G, Ck]
    k_start = k_end - k_sizes
    at = lambda table, idx: jnp.take_along_axis(table[:, None, :], idx, axis=2)  # [G, nqt, R]
    run_valid = jnp.arange(max_runs)[None, None, :] < num_runs[:, :, None]
    row_first = at(k_start, run_first)
    row_start = row_first - row_first % row_align  # the first chunk starts `lead` rows early
    row_end = jnp.where(run_valid, at(k_end, run_last), row_start)
    p_mixed = _prefix(mixed.astype(jnp.int32), axis=2)  # [G, nqt, Ck+1]
    mixed_in_run = jnp.take_along_axis(p_mixed, run_last + 1, 2) - jnp.take_along_axis(p_mixed, run_first, 2)
    uniform = mixed_in_run == 0  # [G, nqt, R]

    # Expand runs into chunks of block_k rows.
    n_chunks = -(-(row_end - row_start) // block_k)  # [G, nqt, R]; 0 for unused runs
    chunk_end = jnp.cumsum(n_chunks, axis=-1)  # [G, nqt, R]
    counts = chunk_end[..., -1]  # [G, nqt]
    marks = jnp.zeros((g, nqt, width + 1), jnp.int32)
    gi, ti = jnp.arange(g)[:, None, None], jnp.arange(nqt)[None, :, None]
    marks = marks.at[gi, ti, chunk_end[..., :-1]].add(run_valid[..., 1:].astype(jnp.int32), mode="drop")
    run_of = jnp.cumsum(marks[..., :width], axis=-1)  # [G, nqt, C] run index of each chunk
    run_of = jnp.minimum(run_of, max_runs - 1)
    chunk_begin = jnp.take_along_axis(chunk_end - n_chunks, run_of, axis=2)
    within = jnp.arange(width)[None, None, :] - chunk_begin
    starts_row = jnp.take_along_axis(row_start, run_of, axis=2) + within * block_k
    valid = jnp.clip(jnp.take_along_axis(row_end, run_of, axis=2) - starts_row, 0, block_k)
    lead = jnp.where(within == 0, jnp.take_along_axis(row_first - row_start, run_of, axis=2), 0)
    code = 2 * valid + jnp.take_along_axis(uniform, run_of, axis=2).astype(jnp.int32) + LEAD_UNIT * lead
    in_list = jnp.arange(width)[None, None, :] < counts[:, :, None]
    starts_row = jnp.where(in_list, starts_row, 0).astype(jnp.int32)
    label_at = lambda rows: jnp.take_along_axis(k_lab, rows.reshape(g, -1), axis=1).reshape(rows.shape)
    kfirst = label_at(starts_row)
    span = jnp.minimum(label_at(starts_row + jnp.maximum(valid, 1) - 1) - kfirst, MAX_SPAN)
    code = jnp.where(in_list, code + SPAN_UNIT * span, 0).astype(jnp.int32)
    map_ext = jnp.pad(live, ((0, 0), (0, 1), (0, 1))).astype(jnp.int8)  # sentinel row/column stay False
    q_bounds = _bounds(q_sizes, num_q, nqt * block_q)
    k_bounds = _bounds(k_sizes, num_k, num_k + block_k)
    return q_lab, k_lab, map_ext, starts_row, code, counts, kfirst, q_bounds, k_bounds


def cluster_tile_plan(
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    num_q: int,
    num_k: int,
    block_q: int,
    block_k: int,
    row_align: int = 1,
) -> ClusterTilePlan:
    """Build the :class:`ClusterTilePlan` for ``block_q``-row query tiles and ``block_k``-row key chunks
    whose runs start at multiples of ``row_align``."""
    if row_align < 1 or row_align > block_k:
        raise ValueError(f"row_align must be in [1, block_k={block_k}]; got {row_align}")
    b, h = q_cluster_sizes.shape[:2]
    flat = lambda x: x.reshape(b * h, *x.shape[2:])
    outs = _plan(
        flat(q_cluster_sizes.astype(jnp.int32)),
        flat(k_cluster_sizes.astype(jnp.int32)),
        flat(cluster_map.astype(jnp.bool_)),
        num_q=num_q,
        num_k=num_k,
        block_q=block_q,
        block_k=block_k,
        row_align=row_align,
    )
    return ClusterTilePlan(*(x.reshape(b, h, *x.shape[1:]) for x in outs), block_q, block_k, row_align)
