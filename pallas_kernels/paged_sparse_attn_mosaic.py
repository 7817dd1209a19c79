"""Cluster sparse attention over key pages (:mod:`.page_plan`) for Hopper: query tiles that each lie in one
query cluster walk their cluster's selected key rows in ``block_k``-row tiles assembled from pages of 8, 16
or 32 rows (``PagePlan.page_rows``).

The Mosaic engine (:mod:`.mosaic_flash`, ``key_pages``) fills each K/V ring slot with ``block_k /
page_rows`` TMA copies of one page each, from anywhere in the key rows, so a tile may hold the ends of
several runs of selected key clusters: only the rounding of each run to whole pages is computed in vain,
not the rest of a run's last ``block_k`` rows (:mod:`.cluster_sparse_attn_mosaic`'s chunks). The columns
outside the valid rows of their page take a 0 / -inf bias from the tile's ``block_k`` valid bits
(``block_k / 32`` words, loaded one tile ahead). Each list holds its tiles with an invalid column first
(:func:`partial_first`), and the rest run without the mask's code.

The query rows are an aligned layout (:mod:`.tile_aligned`): every 128-row tile lies in one query cluster,
so it needs no per-row mask. A row whose cluster selects nothing outputs zeros.

Measured (H100, Wan 720p B1 H40 N75600, 300 × 1000 clusters, ``benchmarks/query_tiles.py``, kernel alone;
the aligned plan with its edge-only mask for comparison): random maps d=0.13, 8-row pages 49.2 ms and
16-row pages 48.7 against 53.7; d=0.3, 111.6 and 106.6 against 115.4; but on the SVG2 preset's structured
plan 43.4 and 36.2 against 32.8 (and 27.0 with fixed tiles). A key tile of pages costs 9.9 (8 rows) or
8.9 µs (16 rows) per thousand against 8.5 for one copy, and computes 1.36× / 1.48× the selected pairs on
random maps at d=0.13 (the aligned plan 1.74×; most of what is left is the query padding). So it is not in
``query_tiles="auto"``; ``"paged"`` runs it, with 16-row pages (:data:`.page_plan.PAGE_ROWS`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float

from .cluster_sparse_attn_mosaic import DEFAULT_STAGES
from .common import front_order, pad_axis
from .mosaic_flash import COL, TileMask, check_mosaic_inputs, paired_tiles, sparse_flash_mosaic
from .page_plan import BITS_PER_WORD, PagePlan


def check_paged_plan(q: jax.Array, plan: PagePlan) -> None:
    """The plans the paged kernel takes for these queries; raises with the reason."""
    check_mosaic_inputs(q, plan.block_q, plan.block_k)
    nqt = plan.tile_cluster.shape[-1]
    if q.shape[1] != nqt * plan.block_q:
        raise ValueError(
            f"q must have the plan's {nqt} query tiles of {plan.block_q} rows ({nqt * plan.block_q}: the "
            f"aligned layout the plan was built for); got {q.shape[1]} rows"
        )


def tile_words(plan: PagePlan) -> int:
    """Valid-bit words per key tile."""
    return plan.block_k // BITS_PER_WORD


def partial_first(plan: PagePlan) -> tuple[PagePlan, jax.Array]:
    """The plan with each list's key tiles that have an invalid column (a run's rounded end, the list's
    last tile) moved to the front, in order, then the full ones in order; and ``[B, H, Cu]`` how many there
    are. Same tiles, so the same attention up to the order of the online softmax's sums."""
    per, words = plan.pages_per_tile, tile_words(plan)
    b, h, cu, w = plan.pages.shape
    tiles = w // per
    valid = plan.valid.reshape(b, h, cu, tiles, words)
    n_tiles = -(-plan.counts // per)
    partial = (jnp.arange(tiles) < n_tiles[..., None]) & jnp.any(valid != -1, axis=-1)
    src, n_partial = front_order(partial, n_tiles)
    pages = jnp.take_along_axis(plan.pages.reshape(b, h, cu, tiles, per), src[..., None], axis=-2)
    valid = jnp.take_along_axis(valid, src[..., None], axis=-2)
    moved = dataclasses.replace(plan, pages=pages.reshape(b, h, cu, w), valid=valid.reshape(b, h, cu, -1))
    return moved, n_partial


def page_mask(tables, at, row0, *, block_k: int) -> TileMask:
    """The engine's mask: stage 1 (a tile ahead) loads the tile's ``block_k / 32`` valid words, and the
    columns whose bit is clear take -inf (a 0 / -inf column bias, one add a logit). No stage 2."""
    del row0
    _, valid, tile_cluster = tables
    b, h, t = at
    u = tile_cluster[b, h, t]
    words = block_k // BITS_PER_WORD
    tiles = valid.shape[-1] // words

    def stage1(j):
        j = jnp.minimum(j, tiles - 1)
        return tuple(valid[b, h, u, j * words + w] for w in range(words))

    def apply(first, _, s):
        cols = plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL)
        word = first[0]
        for w in range(1, words):
            word = jnp.where(cols >= w * BITS_PER_WORD, first[w], word)
        bit = lax.shift_right_logical(word, cols % BITS_PER_WORD) & 1
        bias = jnp.where(bit == 1, 0.0, -jnp.inf)
        return s + lax.broadcast_in_dim(bias, s.shape, [1])

    return TileMask(stage1, lambda j, first: None, apply)


def paged_sparse_attention_mosaic(
    q: Float[Array, "B Nq H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    plan: PagePlan,
    *,
    sm_scale: float,
    num_stages: int | None = None,
    num_programs: int | None = None,
    order: str = "head_lpt",
    overlap: bool | None = None,
    fold_scale: bool = False,
    tile_rows: jax.Array | None = None,
) -> Float[Array, "B Nq H D"]:
    """Attention of aligned query rows ``q`` (the plan's ``nqt · block_q`` rows: each tile in one query
    cluster) to cluster-sorted keys ``k``, ``v`` (``M`` = the plan's ``num_k`` rows, or more) over the
    plan's pages. The plan must hold every page (:func:`.page_plan.with_complete_pages` runs a narrow one
    only when it does; a truncated list would drop keys).

    ``num_stages``: K/V ring slots (default: the cluster kernel's
    :data:`~.cluster_sparse_attn_mosaic.DEFAULT_STAGES`); ``order``, ``overlap``, ``fold_scale``:
    :func:`.mosaic_flash.sparse_flash_mosaic`. ``tile_rows`` (``[B, H, nqt]``, optional): the real query
    rows of each tile (:attr:`.tile_aligned.AlignedQueries.tile_rows`); a tile with at most 64 runs on one
    warpgroup and leaves its other 64 output rows unwritten (the engine's ``paired``)."""
    check_paged_plan(q, plan)
    bk, per = plan.block_k, plan.pages_per_tile
    if k.shape[1] < plan.num_k:
        raise ValueError(f"k must have the plan's num_k={plan.num_k} key rows or more; got {k.shape[1]}")
    plan, n_partial = partial_first(plan)
    r = plan.page_rows
    rows_k = -(-max(k.shape[1], plan.num_k) // r) * r  # whole pages
    kp, vp = pad_axis(k, 1, rows_k), pad_axis(v, 1, rows_k)
    tile_cluster = plan.tile_cluster
    at_tiles = lambda x: jnp.take_along_axis(x, tile_cluster, axis=-1)
    counts = at_tiles(-(-plan.counts // per))
    tables = (plan.pages, plan.valid, tile_cluster)
    width_tiles = plan.width // per
    last_page = rows_k // r - 1

    def key_rows(tables, at, j):  # the tile's page rows: multiples of 8 the compiler can see
        pages, _, clusters = tables
        b, h, t = at
        u = clusters[b, h, t]
        j = jnp.minimum(j, width_tiles - 1)
        return tuple(jnp.clip(pages[b, h, u, j * per + i], 0, last_page) * r for i in range(per))

    return sparse_flash_mosaic(
        tables,
        q,
        kp,
        vp,
        counts=counts,
        masked_counts=at_tiles(n_partial),
        key_row=key_rows,
        make_mask=functools.partial(page_mask, block_k=bk),
        block_k=bk,
        sm_scale=sm_scale,
        num_stages=DEFAULT_STAGES[bk] if num_stages is None else num_stages,
        num_programs=num_programs,
        order=order,
        overlap=overlap,
        fold_scale=fold_scale,
        key_pages=per,
        paired=paired_tiles(tile_rows, counts.shape),
    )
