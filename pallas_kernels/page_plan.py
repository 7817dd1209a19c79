"""Key pages: each query cluster's selected key rows listed in pages of a few rows, for query tiles that
each lie in one query cluster (the aligned layouts of :mod:`.tile_aligned`).

The chunk plan (:mod:`.cluster_plan`) walks each run of selected key clusters in ``block_k``-row chunks
that start at the run's first row (rounded down to a multiple of 8), so a run's last chunk computes the
rows past the run's end too. Where runs are short that waste is most of the work: on random maps at
density 0.13 (Wan 720p, 1000 key clusters of 76 rows on average) a run is usually one cluster, and the
aligned plan computes 1.74× the selected pairs (its query padding included).

A *page* is ``page_rows`` (8, 16 or 32; TMA copies into (8, 64)-tiled shared memory start at multiples
of 8 rows) consecutive key rows starting at a multiple of its size. The Mosaic kernel
(:mod:`.paged_sparse_attn_mosaic`) fills each ``block_k``-row key tile from ``block_k / page_rows`` pages,
each from anywhere (one TMA copy per page), so a tile may hold the ends of several runs. Each run of query
cluster ``u`` is covered by the pages from the one holding its first row to the one holding its last, and
each listed page carries ``page_rows`` *valid* bits, its rows inside the run. The tile's columns outside
them take a 0 / -inf bias. The waste is then the rounding of each run to pages: on those random maps
1.36× (8-row pages) or 1.48× (16) the selected pairs, query padding included. Two runs may share a page
(an unselected cluster smaller than a page between them); the page is then listed twice with disjoint
bits, so no row is counted twice.

The lists are per query cluster (every tile of a cluster walks its cluster's list) and have a static width
in pages; like the chunk plan's they may be built narrower than the static bound (:func:`max_pages`), and
a plan that does not fit is rebuilt at full width (:func:`with_complete_pages`). Everything is ``jnp``.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .cluster_plan import key_runs
from .reference import cluster_labels, masked_attention_reference

# Default rows per page. 16-row pages waste more rows than 8-row ones (random maps at Wan 720p d=0.13: 1.48×
# the selected pairs against 1.36×, with the query padding) but take half the TMA copies, and ran faster on
# all three problems of benchmarks/query_tiles.py (H100): 48.7 / 106.6 / 36.2 ms against 49.2 / 111.6 / 43.4.
PAGE_ROWS = 16
PAGE_SIZES = (8, 16, 32)  # rows per page the plans take (valid bits of whole pages fill whole words)
BITS_PER_WORD = 32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagePlan:
    """What the paged kernel reads, per (batch, head).

    Fields:
      pages: int32 ``[B, H, Cu, W]`` page index (first row / ``page_rows``) of each listed page of query
        cluster ``u``, in order; 0 past the list.
      valid: int32 ``[B, H, Cu, W · page_rows / 32]`` the pages' valid bits end to end: bit ``R·p + r`` of
        the list's bit string (word ``// 32``, bit ``% 32``) says whether row ``r`` of page slot ``p`` is a
        selected key row (``R`` = ``page_rows``); 0 past the list. A ``block_k``-row tile
        (``block_k / R`` pages) reads ``block_k / 32`` words, bit ``c % 32`` of word ``c // 32`` for its
        column ``c``.
      counts: int32 ``[B, H, Cu]`` listed pages of each query cluster.
      tile_cluster: int32 ``[B, H, nqt]`` the query cluster of each ``block_q``-row query tile.
      k_sizes, cluster_map: what the lists were built from (``[B, H, Ck]``, bool ``[B, H, Cu, Ck]``), kept
        to rebuild them at full width (:meth:`widened`).
    """

    pages: Int[Array, "B H Cu W"]
    valid: Int[Array, "B H Cu Wv"]
    counts: Int[Array, "B H Cu"]
    tile_cluster: Int[Array, "B H nqt"]
    k_sizes: Int[Array, "B H Ck"]
    cluster_map: Bool[Array, "B H Cu Ck"]
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_k: int = dataclasses.field(metadata=dict(static=True))
    num_k: int = dataclasses.field(metadata=dict(static=True))  # key rows
    page_rows: int = dataclasses.field(default=PAGE_ROWS, metadata=dict(static=True))

    @property
    def width(self) -> int:
        """Page slots per list (static)."""
        return self.pages.shape[-1]

    @property
    def full_width(self) -> int:
        """:func:`max_pages`: a plan this wide always fits."""
        return max_pages(self.num_k, self.k_sizes.shape[-1], self.block_k, self.page_rows)

    @property
    def pages_per_tile(self) -> int:
        return self.block_k // self.page_rows

    def tile_counts(self) -> Int[Array, "B H nqt"]:
        """Key tiles (of ``block_k / 8`` pages) each query tile walks."""
        per_cluster = -(-self.counts // self.pages_per_tile)
        return jnp.take_along_axis(per_cluster, self.tile_cluster, axis=-1)

    def fits(self) -> Bool[Array, ""]:
        """Whether every list holds all its pages (always true at :attr:`full_width`)."""
        return jnp.all(self.counts <= self.width)

    def computed_rows(self) -> Int[Array, ""]:
        """Key rows × query tiles the kernel computes (``block_k`` per tile)."""
        return jnp.sum(self.tile_counts()) * self.block_k

    def widened(self) -> "PagePlan":
        """The same plan at :attr:`full_width`."""
        return dataclasses.replace(
            self,
            **_lists(
                self.k_sizes, self.cluster_map, num_k=self.num_k, block_k=self.block_k, rows=self.page_rows
            ),
        )


def max_pages(num_k: int, num_k_clusters: int, block_k: int, page_rows: int = PAGE_ROWS) -> int:
    """Static bound on listed pages per query cluster, in whole key tiles: every page once, plus one page
    listed twice per run after the first (at most ``(Ck + 1) // 2`` runs)."""
    return _whole_tiles(-(-num_k // page_rows) + (num_k_clusters + 1) // 2, block_k // page_rows)


def _whole_tiles(pages: int, per_tile: int) -> int:
    return -(-pages // per_tile) * per_tile


def default_page_width(
    num_k: int, num_k_clusters: int, block_k: int, page_rows: int = PAGE_ROWS
) -> int | None:
    """The narrow width :func:`page_plan` builds first: half the static bound (None below 1024 pages, where
    the full bound is cheap). Building costs time in proportion to the width; a query cluster of a sparse
    map lists a fraction of the bound, and a plan that does not fit is rebuilt at full width."""
    bound = max_pages(num_k, num_k_clusters, block_k, page_rows)
    if bound < 1024:
        return None
    return _whole_tiles(-(-bound // 2), block_k // page_rows)


def with_complete_pages(plan: PagePlan, run: Callable[[PagePlan], Any]) -> Any:
    """``run(plan)`` when every list holds all its pages, else ``run(plan.widened())`` (``lax.cond``: both
    are compiled, one runs); a narrow plan never runs truncated."""
    if plan.width >= plan.full_width:
        return run(plan)
    return jax.lax.cond(plan.fits(), run, lambda p: run(p.widened()), plan)


def page_plan(
    q_tile_sizes: Int[Array, "B H Cu"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cu Ck"],
    *,
    num_q: int,
    num_k: int,
    block_q: int = 128,
    block_k: int = 64,
    page_rows: int = PAGE_ROWS,
    width: int | None = None,
) -> PagePlan:
    """Page lists of each query cluster's selected key rows.

    ``q_tile_sizes``: query cluster sizes that are whole ``block_q`` tiles, summing to ``num_q`` (an
    aligned layout, :attr:`.tile_aligned.AlignedQueries.sizes`); ``k_cluster_sizes`` sum to ``num_k``
    (cluster-sorted keys); ``cluster_map[u, j]``: query cluster ``u`` attends to key cluster ``j``.
    ``block_k`` (64 or 128): key rows per kernel tile, of ``block_k / page_rows`` pages (``page_rows`` in
    :data:`PAGE_SIZES`: smaller pages waste fewer rows, larger ones take fewer copies). ``width``: page
    slots per list, rounded up to whole tiles (None: :func:`max_pages`, which always fits; see
    :func:`with_complete_pages`)."""
    if page_rows not in PAGE_SIZES:
        raise ValueError(f"page_rows must be one of {PAGE_SIZES}; got {page_rows!r}")
    if block_k % BITS_PER_WORD or block_k < page_rows:
        raise ValueError(
            f"block_k must be a multiple of {BITS_PER_WORD} (32 valid bits a word); got {block_k}"
        )
    if num_q % block_q:
        raise ValueError(f"num_q must be whole tiles of block_q={block_q} (an aligned layout); got {num_q}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be None or an int >= 1 (page slots per query cluster); got {width!r}")
    lists = _lists(k_cluster_sizes, cluster_map, num_k=num_k, block_k=block_k, rows=page_rows, width=width)
    labels = cluster_labels(q_tile_sizes.astype(jnp.int32), num_q)  # [B, H, num_q]
    tile_cluster = labels[..., ::block_q]
    return PagePlan(
        **lists,
        tile_cluster=tile_cluster,
        k_sizes=k_cluster_sizes.astype(jnp.int32),
        cluster_map=cluster_map.astype(jnp.bool_),
        block_q=block_q,
        block_k=block_k,
        num_k=num_k,
        page_rows=page_rows,
    )


def _runs(k_sizes, cmap, *, num_k: int, rows: int):
    """Per ``[G, Cu, Ck]``: the heads of the runs of selected key clusters (:func:`.cluster_plan.key_runs`),
    their end rows, first pages and page counts (0 off heads); and the key clusters' first rows
    ``[G, 1, Ck]``. ``k_sizes [G, Ck]``, ``cmap [G, Cu, Ck]``."""
    sel = cmap & (k_sizes > 0)[:, None, :]
    heads, k_start, run_end = key_runs(sel, k_sizes, num_k=num_k)
    k_start = k_start[:, None, :]
    first_page = k_start // rows
    n_pages = jnp.where(heads, -(-run_end // rows) - first_page, 0)
    return heads, k_start, run_end, first_page, n_pages


def _lists(k_sizes, cmap, *, num_k: int, block_k: int, rows: int, width: int | None = None) -> dict:
    """``pages``, ``valid`` and ``counts`` (see :class:`PagePlan`) for ``[B, H, Ck]`` sizes and a
    ``[B, H, Cu, Ck]`` map, with pages of ``rows`` rows."""
    b, h, cu, ck = cmap.shape
    full = max_pages(num_k, ck, block_k, rows)
    width = full if width is None else min(_whole_tiles(width, block_k // rows), full)
    g = b * h
    sizes = k_sizes.reshape(g, ck).astype(jnp.int32)
    sel = cmap.reshape(g, cu, ck).astype(jnp.bool_)
    heads, k_start, run_end, first_page, n_pages = _runs(sizes, sel, num_k=num_k, rows=rows)
    page_end = jnp.cumsum(n_pages, axis=-1, dtype=jnp.int32)
    page_begin = page_end - n_pages
    counts = page_end[..., -1]  # [G, Cu]

    # Page slot s of a list belongs to the last head whose first slot is at or before s.
    gi, ui = jnp.arange(g)[:, None, None], jnp.arange(cu)[None, :, None]
    idx = jnp.arange(ck, dtype=jnp.int32)
    at = jnp.where(heads, page_begin, width)  # non-heads -> dropped
    marks = jnp.zeros((g, cu, width), jnp.int32).at[gi, ui, at].set(idx + 1, mode="drop")
    owner = jnp.maximum(jax.lax.cummax(marks, axis=2) - 1, 0)  # [G, Cu, W] head cluster of each slot
    of = lambda table: jnp.take_along_axis(jnp.broadcast_to(table, sel.shape), owner, axis=2)
    slot = jnp.arange(width, dtype=jnp.int32)
    page = of(first_page - page_begin) + slot  # the run's pages are consecutive
    row0 = page * rows
    lo = jnp.clip(of(k_start) - row0, 0, rows).astype(jnp.uint32)  # the run's rows: [lo, hi)
    hi = jnp.clip(of(run_end) - row0, 0, rows).astype(jnp.uint32)
    ones = lambda n: jnp.where(n >= 32, jnp.uint32(0xFFFFFFFF), (jnp.uint32(1) << (n % 32)) - 1)
    bits = ones(hi) & ~ones(lo)  # `rows` bits
    listed = slot < counts[..., None]
    page = jnp.where(listed, page, 0)
    bits = jnp.where(listed, bits, 0)
    per_word = BITS_PER_WORD // rows
    words = bits.reshape(g, cu, width // per_word, per_word) << (
        rows * jnp.arange(per_word, dtype=jnp.uint32)
    )
    valid = jax.lax.bitcast_convert_type(jnp.sum(words, axis=-1, dtype=jnp.uint32), jnp.int32)  # OR
    return dict(
        pages=page.astype(jnp.int32).reshape(b, h, cu, width),
        valid=valid.reshape(b, h, cu, width // per_word),
        counts=counts.reshape(b, h, cu),
    )


def paged_cost(
    q_tile_sizes: Int[Array, "B H Cu"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cu Ck"],
    *,
    num_k: int,
    block_q: int = 128,
    block_k: int = 64,
    page_rows: int = PAGE_ROWS,
    tile_weight: float,
    partial_weight: float,
) -> Float[Array, "B H"]:
    """Work of the paged kernel, without building its lists, in the units of
    :func:`.tile_aligned.fixed_cost` (an unmasked chunk of the cluster kernel): per query tile, its
    cluster's key tiles (exact: each run's pages counted as :func:`page_plan` lists them) at
    ``tile_weight`` each, plus ``partial_weight`` per tile with an invalid column, estimated as one per
    run edge that is not on a page boundary, plus the list's last tile if it has empty slots, at most all of
    them (an upper bound)."""
    b, h, cu, ck = cluster_map.shape
    g = b * h
    sizes = k_cluster_sizes.reshape(g, ck).astype(jnp.int32)
    heads, k_start, run_end, _, n_pages = _runs(
        sizes, cluster_map.reshape(g, cu, ck).astype(jnp.bool_), num_k=num_k, rows=page_rows
    )
    per = block_k // page_rows
    pages = jnp.sum(n_pages, axis=-1)  # [G, Cu]
    tiles = -(-pages // per)
    unaligned = lambda row: jnp.sum(heads & (row % page_rows != 0), axis=-1)  # run edges inside a page
    edges = unaligned(k_start) + unaligned(run_end)
    partial = jnp.minimum(tiles, edges + (pages % per != 0))  # an upper bound: a page may hold two edges
    q_tiles = (q_tile_sizes.reshape(g, cu) // block_q).astype(jnp.float32)
    cost = jnp.sum(q_tiles * (tile_weight * tiles + partial_weight * partial), axis=-1)
    return cost.reshape(b, h)


def page_row_hits(plan: PagePlan) -> Int[Array, "B H Cu M"]:
    """How many times each query cluster's listed pages mark each key row valid: 1 on its selected key rows,
    0 elsewhere, if the plan is right (for tests). ``M`` is :attr:`PagePlan.num_k` rounded up to whole
    pages."""
    b, h, cu, w = plan.pages.shape
    r = plan.page_rows
    m = -(-plan.num_k // r) * r
    words = jax.lax.bitcast_convert_type(plan.valid, jnp.uint32)
    row_bits = (words[..., None] >> jnp.arange(BITS_PER_WORD, dtype=jnp.uint32)) & 1  # the bit string
    rows = (plan.pages[..., None] * r + jnp.arange(r)).reshape(b * h * cu, -1)
    add = row_bits.reshape(b * h * cu, -1).astype(jnp.int32)
    hits = jnp.zeros((b * h * cu, m), jnp.int32).at[jnp.arange(b * h * cu)[:, None], rows].add(add)
    return hits.reshape(b, h, cu, m)


def paged_attention_reference(
    q: Float[Array, "B Nq H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    plan: PagePlan,
    *,
    sm_scale: float,
) -> Float[Array, "B Nq H D"]:
    """What the paged kernel computes, in plain XLA (dense-masked, small shapes): each aligned query row
    attends to the key rows its cluster's pages mark valid (:func:`page_row_hits`). A right plan marks each
    selected row once, so this is the cluster oracle; a row a kernel counted twice would differ from it. A
    row with no valid key outputs zeros."""
    m = k.shape[1]
    hits = page_row_hits(plan)[..., :m]  # [B, H, Cu, M]
    hits = jnp.pad(hits, ((0, 0), (0, 0), (0, 0), (0, max(m - hits.shape[-1], 0))))
    row_cluster = jnp.repeat(plan.tile_cluster, plan.block_q, axis=-1)  # [B, H, Nq]
    mask = jnp.take_along_axis(hits, row_cluster[..., None], axis=2) > 0  # [B, H, Nq, M]
    return masked_attention_reference(q, k, v, mask, sm_scale=sm_scale)
