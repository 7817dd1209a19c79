"""Chunk plan for cluster (variable-block) sparse attention over cluster-sorted sequences.

Queries are cut into fixed tiles of ``block_q`` rows that ignore cluster boundaries. The query clusters
overlapping tile ``t`` form a label interval ``[lo, hi]`` (clusters are contiguous), so the key clusters the
tile needs are the union of their selections — a prefix sum over query clusters. Consecutive selected key
clusters are contiguous rows too, so the union is a few *runs* of key rows; each run is walked in chunks of
``block_k`` rows starting at the run's first row (not at a multiple of ``block_k``), and a chunk's rows
past the run end are masked. So, unlike fixed key tiles, no unselected key cluster is ever computed; the
waste is the tail of each run's last chunk.

A chunk is *uniform* when every query cluster of the tile selects every key cluster its rows lie in: it
needs only the run-end mask. Otherwise (a tile spanning query clusters with different selections there)
the kernel also masks element by element with ``map[q_label[r], k_label[c]]``. Uniformity is decided per
chunk, not per run: on the Wan 720p SVG2 plan, most chunks of runs that are mixed somewhere are not.
Padded query rows get the sentinel label ``Cq`` and padded key rows ``Ck``; their map row / column is all
False. Everything is ``jnp`` (jittable, no host sync) with static sizes.

``row_align`` > 1 starts each run's first chunk at the multiple of ``row_align`` at or below the run's
first row (the Mosaic kernel's TMA copies into 8-row tiles need that); the ``lead`` rows before the run
are masked like the rows past its end. A chunk's code packs ``uniform + 2·valid + LEAD_UNIT·lead +
SPAN_UNIT·span``: columns ``lead <= c < valid`` belong to the run, and its rows ``0..valid-1`` lie in key
clusters ``chunk_kfirst .. chunk_kfirst + span`` (``span`` saturates at ``MAX_SPAN``).

Each run is described at its first key cluster (its *head*): a reverse running minimum of the run end rows
gives its end row, one running sum both its first chunk slot and the mixed clusters before it (whether a
chunk is uniform is a difference of those counts), and chunk slot ``c`` of a tile belongs to the last head
whose first chunk is at or before ``c``, so no list of runs is ever compacted. The chunk lists have a
static width. Their bound (:func:`max_chunks`) allows one run for every other key cluster, so the lists are
far wider than a sparse layout needs, and building them costs time in proportion to the width. So a plan
may be built narrower (``width``). It then runs only when every tile fits, and is otherwise rebuilt at full
width (:func:`with_complete_plan`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

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
      one_cluster_tiles: (static) every query tile lies in one query cluster, so no chunk is mixed and
        the Mosaic kernel may mask only run edges (:func:`~.tile_aligned.align_plan` sets it; set on any
        other plan, that mask would leave mixed chunks unmasked).
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
    row_align: int = dataclasses.field(metadata=dict(static=True))
    num_q: int = dataclasses.field(metadata=dict(static=True))  # query rows (before tile padding)
    num_k: int = dataclasses.field(metadata=dict(static=True))  # key rows (before the block_k padding)
    one_cluster_tiles: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def computed_rows(self) -> Int[Array, ""]:
        """Key rows × query tiles the kernel computes (``block_k`` per chunk), for effective FLOP counts."""
        return jnp.sum(self.chunk_counts) * self.block_k

    @property
    def width(self) -> int:
        """Slots of the chunk lists (static)."""
        return self.chunk_starts.shape[-1]

    @property
    def full_width(self) -> int:
        """The static bound on chunks per tile (:func:`max_chunks`): a plan this wide always fits."""
        return max_chunks(self.num_k, self.cluster_map.shape[-1] - 1, self.block_k, self.row_align)

    def fits(self) -> Bool[Array, ""]:
        """Whether every tile's chunks fit the lists (always true at :attr:`full_width`)."""
        return jnp.all(self.chunk_counts <= self.width)

    def k_cluster_sizes(self) -> Int[Array, "B H Ck"]:
        """The key cluster sizes the plan was built from."""
        return jnp.diff(self.k_bounds[..., : self.cluster_map.shape[-1]], axis=-1)

    def retiled(self, q_cluster_sizes, cluster_map, *, num_q: int) -> "ClusterTilePlan":
        """A plan of the same keys, tiles and list width for other query clusters (``num_q`` rows):
        e.g. :func:`~.tile_aligned.align_query_clusters`'s layout."""
        return cluster_tile_plan(
            q_cluster_sizes,
            self.k_cluster_sizes(),
            cluster_map,
            num_q=num_q,
            num_k=self.num_k,
            block_q=self.block_q,
            block_k=self.block_k,
            row_align=self.row_align,
            width=self.width,
        )

    def widened(self) -> "ClusterTilePlan":
        """The same plan at :attr:`full_width`, rebuilt from this plan's cluster bounds and map."""
        cq, ck = self.cluster_map.shape[-2] - 1, self.cluster_map.shape[-1] - 1
        wide = cluster_tile_plan(
            jnp.diff(self.q_bounds[..., : cq + 1], axis=-1),
            self.k_cluster_sizes(),
            self.cluster_map[..., :cq, :ck] != 0,
            num_q=self.num_q,
            num_k=self.num_k,
            block_q=self.block_q,
            block_k=self.block_k,
            row_align=self.row_align,
        )
        return dataclasses.replace(wide, one_cluster_tiles=self.one_cluster_tiles)


def with_complete_plan(plan: ClusterTilePlan, run: Callable[[ClusterTilePlan], Any]) -> Any:
    """``run(plan)`` when the plan's lists hold every chunk, else ``run(plan.widened())``: a narrow plan is
    never run truncated. Both branches are compiled (``lax.cond``); only one runs."""
    if plan.width >= plan.full_width:
        return run(plan)
    return jax.lax.cond(plan.fits(), run, lambda p: run(p.widened()), plan)


def default_width(num_k: int, num_k_clusters: int, block_k: int, row_align: int) -> int | None:
    """The narrow list width :func:`cluster_plan_for` builds first: a quarter of the static bound, in
    multiples of 64, when the bound is 1024 chunks or more (None: the full bound). Building the lists
    costs time in proportion to their width (about 1.6 of the 2.8 ms of the Wan 720p plan at full width,
    H200), while a tile of the sparse layouts SVG2 produces needs a fraction of the bound; a plan that
    does not fit is rebuilt at full width (:func:`with_complete_plan`)."""
    bound = max_chunks(num_k, num_k_clusters, block_k, row_align)
    if bound < 1024:
        return None
    return -(-bound // 256) * 64


LEAD_UNIT = 1 << 10  # chunk code = uniform + 2·valid + LEAD_UNIT·lead + SPAN_UNIT·span (valid <= 256 < 512)
SPAN_UNIT = 1 << 20  # lead < block_k <= 256 < 1024
MAX_SPAN = 255
PACKED_SCAN_BITS = 31  # chunk ends and mixed counts share one int32 running sum when both fit this many bits


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


def key_runs(sel: Bool[Array, "G X Ck"], k_sizes: Int[Array, "G Ck"], *, num_k: int):
    """Runs of consecutive selected key clusters (empty clusters have no rows and are skipped over), for
    ``sel`` rows of any kind (a query tile's union, a query cluster's selection). Each run is described at
    its first cluster (a *head*), so no list of runs is ever compacted: ``(heads [G, X, Ck], k_start
    [G, Ck], run_end [G, X, Ck])``, ``run_end`` being the end row of the run a head starts (meaningful at
    heads)."""
    prev, nxt = _neighbours(k_sizes > 0)  # [G, Ck]
    padded = jnp.pad(sel, ((0, 0), (0, 0), (1, 1)))
    sel_at = lambda idx: jnp.take_along_axis(padded, jnp.broadcast_to(idx[:, None, :] + 1, sel.shape), axis=2)
    heads = sel & ~sel_at(prev)
    ends = sel & ~sel_at(nxt)
    k_end = jnp.cumsum(k_sizes, axis=-1, dtype=jnp.int32)
    # The nearest run end at or after a head is its own run's end (runs do not interleave), and the end
    # rows grow with the cluster, so one reverse running minimum of the end rows gives each head its run's.
    run_end = jax.lax.cummin(jnp.where(ends, k_end[:, None, :], jnp.int32(num_k + 1)), axis=2, reverse=True)
    return heads, k_end - k_sizes, run_end


def _plan(
    q_sizes, k_sizes, cmap, *, num_q: int, num_k: int, block_q: int, block_k: int, row_align: int, width: int
):
    """Plan for G = B·H groups: q_sizes ``[G, Cq]``, k_sizes ``[G, Ck]``, cmap ``[G, Cq, Ck]``."""
    g = q_sizes.shape[0]
    ck = k_sizes.shape[1]
    nqt = -(-num_q // block_q)
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

    heads, k_start, run_end_row = key_runs(union, k_sizes, num_k=num_k)  # [G, nqt, Ck], [G, Ck], [G, nqt, Ck]
    idx = jnp.arange(ck, dtype=jnp.int32)
    row_lead = k_start % row_align  # [G, Ck] the first chunk starts `lead` rows before the run
    row_start = k_start - row_lead
    n_chunks = jnp.where(heads, -(-(run_end_row - row_start[:, None, :]) // block_k), 0)  # [G, nqt, Ck]
    # One running sum gives both the chunk ends and the mixed clusters before each cluster: the chunks in
    # the high bits, the mixed count (at most Ck) in the low ones, when both fit 31 bits.
    low = max(ck, 1).bit_length()
    if max_chunks(num_k, ck, block_k, row_align) < 1 << max(PACKED_SCAN_BITS - low, 0):
        both = jnp.cumsum((n_chunks << low) + mixed, axis=-1, dtype=jnp.int32)
        chunk_end, mixed_upto = both >> low, both & ((1 << low) - 1)
        mixed_before = jnp.pad(mixed_upto, ((0, 0), (0, 0), (1, 0)))  # [G, nqt, Ck+1]
    else:
        chunk_end = jnp.cumsum(n_chunks, axis=-1, dtype=jnp.int32)
        mixed_before = _prefix(mixed, axis=2)
    chunk_begin = chunk_end - n_chunks
    counts = chunk_end[..., -1]  # [G, nqt]

    # Expand heads into chunks of block_k rows: chunk slot c belongs to the last head whose first chunk
    # is at or before c (heads' first chunks are distinct and ascending).
    gi, ti = jnp.arange(g)[:, None, None], jnp.arange(nqt)[None, :, None]
    slot = jnp.where(heads, chunk_begin, width)  # non-heads -> dropped
    marks = jnp.zeros((g, nqt, width), jnp.int32).at[gi, ti, slot].set(idx + 1, mode="drop")
    first_chunk = marks > 0  # a run's first chunk
    owner = jnp.maximum(jax.lax.cummax(marks, axis=2) - 1, 0)  # [G, nqt, C] head cluster of each chunk
    of = lambda table: jnp.take_along_axis(table, owner, axis=2)  # a [G, nqt, Ck] table at each owner
    # A [G, X] table at an index array of any shape per group.
    per_group = lambda table, at: jnp.take_along_axis(table, at.reshape(g, -1), axis=1).reshape(at.shape)
    chunk = jnp.arange(width, dtype=jnp.int32)[None, None, :]
    # Chunk c of a run starts (c − its first chunk)·block_k rows after the run's aligned start.
    starts_row = of(row_start[:, None, :] - block_k * chunk_begin) + block_k * chunk
    valid = jnp.clip(of(run_end_row) - starts_row, 0, block_k)
    lead = jnp.where(first_chunk, per_group(row_lead, owner), 0)
    in_list = chunk < counts[:, :, None]
    starts_row = jnp.where(in_list, starts_row, 0).astype(jnp.int32)
    label_at = lambda rows: per_group(k_lab, rows)
    kfirst = label_at(starts_row)
    klast = label_at(starts_row + jnp.maximum(valid, 1) - 1)
    span = jnp.minimum(klast - kfirst, MAX_SPAN)
    # A chunk of a mixed run is uniform when none of its own key clusters is mixed (the clusters of its
    # lead rows, before the run, are not selected, so not mixed either).
    mixed_in = lambda k: jnp.take_along_axis(mixed_before, jnp.minimum(k, ck), axis=2)
    uniform_chunk = mixed_in(klast + 1) == mixed_in(kfirst)
    code = 2 * valid + uniform_chunk.astype(jnp.int32) + LEAD_UNIT * lead
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
    width: int | None = None,
) -> ClusterTilePlan:
    """Build the :class:`ClusterTilePlan` for ``block_q``-row query tiles and ``block_k``-row key chunks
    whose runs start at multiples of ``row_align``.

    ``width``: slots per chunk list; None is the static bound :func:`max_chunks`, which always fits. A
    narrower plan is cheaper to build but fits only when no tile needs more chunks (``plan.fits()``;
    ``chunk_counts`` always holds the true counts); the kernels run it through
    :func:`with_complete_plan`, which rebuilds it at full width when it does not fit."""
    if row_align < 1 or row_align > block_k:
        raise ValueError(f"row_align must be in [1, block_k={block_k}]; got {row_align}")
    full = max_chunks(num_k, k_cluster_sizes.shape[-1], block_k, row_align)
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be None or an int >= 1 (chunk slots per query tile); got {width!r}")
    width = full if width is None else min(width, full)
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
        width=width,
    )
    tables = (x.reshape(b, h, *x.shape[1:]) for x in outs)
    return ClusterTilePlan(*tables, block_q, block_k, row_align, num_q, num_k)
