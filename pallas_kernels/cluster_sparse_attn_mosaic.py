"""Cluster (variable-block) sparse attention for Hopper: the chunk plan walked by the Mosaic GPU engine.

Same contract and plan as the Triton kernel (:mod:`.cluster_sparse_attn`, :mod:`.cluster_plan`), with
128-row query tiles (two 64-row warpgroups, :mod:`.mosaic_flash`): the producer streams each chunk's
``block_k`` key rows by TMA from the chunk's first row (a multiple of 8: TMA into 8-row shared-memory
tiles; the plan is built with ``row_align=8``), and the compute warpgroups mask

* the rows before the run's first row and past its end (``lead <= cols < valid``), on a run's first and
  last chunks (interior chunks, all rows inside the run, skip the mask);
* on a *mixed* chunk (the tile's query clusters disagree on its key clusters), what each row's own query
  cluster does not select. Fast path: when the tile holds at most ``FAST_Q`` = 4 query clusters and the chunk
  spans at most ``FAST_K`` = 8 key clusters, the map entries involved fit one 32-bit word, read from
  :func:`chunk_words` (per chunk, packed in XLA before the kernel). Both masks are one
  pass over the logits: per row the word shifted down by the row's query slot, per column the bit of its
  key slot (``(key cluster − chunk's first) · 4``, from a column vector of key labels) or 0 outside the
  run, then one AND and a test per logit (a run's edge chunk that is not mixed uses an all-ones word).
  Otherwise (tiny clusters) the slow path gives each row its query cluster's bits of the map over the
  chunk's key clusters, 32 key clusters per pass: one pass over the warpgroup's query clusters reads two
  words of :func:`map_bitset` each, then each element tests its column's bit. (A loop over (query, key)
  cluster pairs, three dependent loads and a sweep of the tile each, cost 1 ms of the Wan 720p SVG2
  plan's 36.6, from one tile with 295 such chunks.)

Each tile walks its chunks that take a mask first (:func:`masked_first`) and the rest without the
mask's code, so the 96% of chunks that need none (on the Wan 720p SVG2 plan, with uniformity decided per
chunk by the plan) run the engine's unmasked loop. On the masked chunks each warpgroup decides for itself
(``per_warpgroup_mask``): a warpgroup whose rows lie in one query cluster needs no mask or a column bias.

Where the time goes (H200, Wan 720p SVG2 plan, ``benchmarks/cluster_loads.py``, 2026-12-01): 27.0–28.8 ms in
four runs against 26.2–26.3 with no mask at all and 25.0 for density × cuDNN. The steps there: every chunk
through one mask branch, 31.9 ms; masked chunks walked first, 31.2; uniformity per chunk instead of per run
(mixed chunks 11.5% → 2.4%), 29.4; per-warpgroup masks, 27.0–28.8. Timed and not adopted (with every chunk
through the branch): loading the scalars two or four steps ahead (34.8 / 36.4 ms against 34.3), masking
before the scale (34.7), the key-label vector loaded only for mixed chunks (33.5–33.8 against 31.9 loaded
for all), the run's edges masked by a column bias (34.3), and the chunk scalars copied by the producer into
shared memory beside each K tile (no faster, and reading them a step ahead could deadlock a two-slot ring).
The engine's intra-warpgroup overlap leaves this kernel unchanged.

The per-chunk scalars (start, code, first key cluster and the chunk's packed word) are loaded one chunk
ahead and the key-label vector before the chunk's ``Q Kᵀ`` (the engine's two load stages), so their
latency hides under the matrix multiply. Everything past the plan is exact: a row whose clusters select
nothing outputs zeros.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float

from .cluster_plan import ClusterTilePlan, decode_chunk, decode_span
from .common import front_order, pad_axis
from .mosaic_flash import (
    COL,
    CTA_ROWS,
    ROW,
    WG_ROWS,
    TileMask,
    check_mosaic_inputs,
    paired_tiles,
    sparse_flash_mosaic,
)

ROW_ALIGN = 8  # TMA copies into (8, 64)-tiled shared memory start at a multiple of 8 rows
# K/V ring slots by block_k. Four 64-row slots (160 KiB of shared memory with Q) against two, H200, Wan
# 720p: 37.5 -> 36.2-37.2 ms on the SVG2 plan, 82.0 -> 81.0 ms on random maps (mosaic_steps.py).
DEFAULT_STAGES = {64: 4, 128: 2}
FAST_Q, FAST_K = 4, 8  # fast path: <= 4 query clusters per tile x <= 8 key clusters per chunk = 32 bits
# Whether plans marked one_cluster_tiles run edge_mask by default: bit for bit the general mask's output, and
# faster (H100, Wan 720p, aligned plans, benchmarks/query_tiles.py): random maps d=0.13 75.4 -> 53.7 ms,
# d=0.3 156.7 -> 115.4 ms, the SVG2 preset 33.8 -> 32.8 ms.
EDGE_ONLY_DEFAULT = True


def check_mosaic_plan(q: jax.Array, plan: ClusterTilePlan) -> None:
    """The plans the Mosaic kernel takes; raises with the reason."""
    check_mosaic_inputs(q, plan.block_q, plan.block_k)
    if plan.row_align % ROW_ALIGN:
        raise ValueError(
            f"implementation='pallas_mosaic' needs a plan built with row_align={ROW_ALIGN} (its TMA copies "
            f"start at multiples of {ROW_ALIGN} rows); got row_align={plan.row_align}"
        )


def tile_words(plan: ClusterTilePlan) -> jax.Array:
    """``[B, H, nqt, Ck+1]`` int32: the fast path's packed map of tile ``t`` for chunks whose first key
    cluster is ``j``: bit ``4·i + s`` is ``map[lo_t + s, j + i]`` for ``s < FAST_Q``, ``i < FAST_K``, where
    ``lo_t`` is the tile's first query cluster (bits past the sentinel key cluster stay 0)."""
    cmap = plan.cluster_map  # [B, H, Cq+1, Ck+1], sentinel row Cq and column Ck all False
    lo = plan.q_labels[:, :, :: plan.block_q]  # [B, H, nqt]
    shape = (*lo.shape, cmap.shape[3])
    nib = jnp.zeros(shape, jnp.int32)  # bit s: map[lo_t + s, j]
    for s in range(FAST_Q):
        rows = jnp.broadcast_to(jnp.minimum(lo + s, cmap.shape[2] - 1)[..., None], shape)
        nib = nib | (jnp.take_along_axis(cmap, rows, axis=2).astype(jnp.int32) << s)
    ck1 = shape[-1]
    nib = jnp.pad(nib, ((0, 0), (0, 0), (0, 0), (0, FAST_K - 1)))
    words = nib[..., :ck1]
    for i in range(1, FAST_K):
        words = words | (nib[..., i : i + ck1] << (FAST_Q * i))
    return words


def chunk_words(plan: ClusterTilePlan, bitset: jax.Array | None = None) -> jax.Array:
    """``[B, H, nqt, width]`` int32: :func:`tile_words` at each chunk's first key cluster, so the kernel
    loads a chunk's packed word without first waiting for that cluster (one dependent load fewer).

    Built per chunk from the map's bit rows (:func:`map_bitset`, passed as ``bitset`` when the caller has
    it): for each of the tile's ``FAST_Q`` first query clusters, the ``FAST_K`` bits from the chunk's first
    key cluster on, spread to every ``FAST_Q``-th bit. No ``[nqt, Ck]`` table of every tile's words."""
    if bitset is None:
        bitset = map_bitset(plan.cluster_map)  # [B, H, Cq+1, W]
    b, h = plan.chunk_kfirst.shape[:2]
    cq1, ck1 = plan.cluster_map.shape[2:]
    words_per_row = bitset.shape[-1]
    flat = lax.bitcast_convert_type(bitset, jnp.uint32).reshape(b, h, -1)  # [B, H, (Cq+1)·W]
    lo = plan.q_labels[:, :, :: plan.block_q, None]  # [B, H, nqt, 1] the tile's first query cluster
    j = jnp.clip(plan.chunk_kfirst, 0, ck1 - 1)  # [B, H, nqt, C]
    word, shift = j // 32, (j % 32).astype(jnp.uint32)
    take = lambda at: jnp.take_along_axis(flat, at.reshape(b, h, -1), axis=2).reshape(at.shape)
    packed = jnp.zeros(j.shape, jnp.uint32)
    for s in range(FAST_Q):
        at = jnp.minimum(lo + s, cq1 - 1) * words_per_row + word  # the sentinel row (all 0) past the last
        low, high = take(at), take(at + 1)  # map_bitset keeps a zero word past each row's end
        x = (low >> shift) | jnp.where(shift > 0, high << ((32 - shift) % 32), 0)  # bits j, j+1, … at 0, 1, …
        packed = packed | (_spread_bits(x & ((1 << FAST_K) - 1)) << s)
    return lax.bitcast_convert_type(packed, jnp.int32)


def _spread_bits(x: jax.Array) -> jax.Array:
    """uint32 with bit ``i`` of ``x`` (``i < 8``) moved to bit ``4·i`` (``FAST_Q``, ``FAST_K`` = 4, 8)."""
    assert (FAST_Q, FAST_K) == (4, 8), "the bit spread is written for 8 key clusters of 4 query clusters"
    x = (x | (x << 12)) & 0x000F000F  # bits 0-3 stay, 4-7 go to 16-19
    x = (x | (x << 6)) & 0x03030303  # pairs to bytes
    return (x | (x << 3)) & 0x11111111  # single bits, four apart


def map_bitset(cluster_map: jax.Array) -> jax.Array:
    """``[B, H, Cq+1, W]`` int32: the map's rows as bit sets, bit ``i`` of word ``w`` being
    ``map[u, 32·w + i]``, with a zero word past the end (so two neighbouring words always exist)."""
    ck1 = cluster_map.shape[-1]
    words = -(-ck1 // 32) + 1
    m = jnp.pad(cluster_map.astype(jnp.uint32), ((0, 0), (0, 0), (0, 0), (0, 32 * words - ck1)))
    m = m.reshape(*m.shape[:-1], words, 32) << jnp.arange(32, dtype=jnp.uint32)
    return lax.bitcast_convert_type(jnp.sum(m, axis=-1, dtype=jnp.uint32), jnp.int32)  # distinct bits: OR


def cluster_mask(
    tables,
    at,
    row0,
    *,
    block_k: int,
    branch: bool = True,
    per_warpgroup: bool = True,
) -> TileMask:
    """The engine's mask: the run's columns on a run's first and last chunks; on mixed chunks the packed-bit
    selection of each row's query cluster, or, where the tile or chunk has too many clusters for one word,
    each row's bits of the map (:func:`map_bitset`) over the chunk's key clusters.

    ``branch`` False applies the packed mask to every chunk instead of branching around it (a benchmark
    variant, ``benchmarks/cluster_mask.py``: 40.9–46.0 ms against 34.5–35.9 on the Wan 720p SVG2 plan).

    ``per_warpgroup`` (default) decides per warpgroup: when its 64 rows lie in one query cluster, a mixed
    chunk is either wholly selected for it (no mask) or masked by columns (a 0 / -inf column bias, one add
    a logit); only warpgroups spanning several query clusters test bits per element. Same output. On the
    Wan 720p SVG2 plan (H200, ``benchmarks/cluster_loads.py``) it cuts the kernel from 29.1–29.5 to
    27.0–28.8 ms, now that only the chunks that take a mask run this code (:func:`masked_first`; before
    that it was slower, 34.9 against 33.5–33.8 ms). On random maps, where 95% of chunks take a mask, it
    costs: 91.0 against 81.2 ms (``--problem random``); pass False for unstructured maps.

    The passes sit inside one 0/1-trip ``fori_loop``, which a warpgroup that needs no pass skips. When every
    chunk came through here, each loop carrying the logits cost on every chunk (a third pass in its own
    loop took the plan from 34 to 38.7 ms, inside the one loop 34.9). Now that only the masked chunks do,
    a ``lax.cond`` instead or one loop per pass read the same (29.2–30.1 against 28.1–29.5 ms) and were
    removed.

    Stage 1 (a chunk ahead) loads the chunk's start, code, first key cluster and packed word, the last from
    the :func:`chunk_words` table (the last of ``tables``), indexed by chunk."""
    starts, codes, _, kfirst, q_lab, k_lab, bitmap, words = tables
    b, h, t = at
    width = starts.shape[-1]
    u_lo = q_lab[b, h, row0]  # the warpgroup's query clusters: u_lo..u_hi (rows are sorted)
    u_hi = q_lab[b, h, row0 + WG_ROWS - 1]
    tile_lo = q_lab[b, h, t * CTA_ROWS]
    flags = warpgroup_flags(u_lo, u_hi, tile_lo)
    row_lab = plgpu.load(q_lab.at[b, h, pl.ds(row0, WG_ROWS)], layout=ROW, optimized=False)
    row_slot = jnp.minimum(row_lab - tile_lo, FAST_Q - 1)  # past FAST_Q - 1 only in slow-path tiles

    def stage1(j):
        j = jnp.minimum(j, width - 1)
        return starts[b, h, t, j], codes[b, h, t, j], kfirst[b, h, t, j], words[b, h, t, j]

    def stage2(j, first):
        start = first[0]
        return plgpu.load(k_lab.at[b, h, pl.ds(start, block_k)], layout=COL, optimized=False)

    def apply(first, col_lab, s):
        start, code, j_lo, bits = first
        lead, valid, _ = decode_chunk(code)
        passes = functools.partial(mask_passes, block_k=block_k, per_warpgroup=per_warpgroup)
        column_trips, packed_trips, slow_trips, column_word, packed_word = passes(code, bits, **flags)

        def packed_mask(_, s):  # one pass: the run's columns and, on a mixed-fast chunk, the packed map
            # Element (r, c) survives when bit (key slot·FAST_Q + query slot) of the word is set and column c
            # lies in the run: per row the word shifted down by the query slot, per column the key slot's
            # bit or 0, one AND and a test per logit. Uniform chunks use an all-ones word.
            row_bits = lax.shift_right_logical(jnp.full((WG_ROWS,), packed_word, jnp.int32), row_slot)
            cols = plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL)
            key_slot = jnp.clip(col_lab - j_lo, 0, FAST_K - 1) * FAST_Q
            in_run = (cols >= lead) & (cols < valid)
            col_bit = jnp.where(in_run, lax.shift_left(jnp.ones_like(cols), key_slot), 0)
            hit = lax.broadcast_in_dim(row_bits, s.shape, [0]) & lax.broadcast_in_dim(col_bit, s.shape, [1])
            return jnp.where(hit != 0, s, -jnp.inf)

        def column_mask(_, s):  # the run's columns and, on a mixed-fast chunk, the warpgroup's own bits
            cols = plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL)
            key_slot = jnp.clip(col_lab - j_lo, 0, FAST_K - 1) * FAST_Q
            word = jnp.full((block_k,), column_word, jnp.int32)
            selected = (lax.shift_right_logical(word, key_slot) & 1) == 1
            bias = jnp.where((cols >= lead) & (cols < valid) & selected, 0.0, -jnp.inf)
            return s + lax.broadcast_in_dim(bias, s.shape, [1])

        def slow_mask(_, s):  # each row's own bits of the map over the chunk's key clusters, 32 at a time
            j_hi = k_lab[b, h, start + jnp.maximum(valid, 1) - 1]

            def window(w, allowed):  # key clusters jw .. jw + 31
                jw = j_lo + 32 * w
                word0, shift = lax.div(jw, 32), lax.rem(jw, 32)

                def query_cluster(i, row_bits):  # bits jw.. of map row u, on the rows of cluster u
                    u = u_lo + i
                    low = lax.shift_right_logical(bitmap[b, h, u, word0], shift)
                    high = lax.shift_left(lax.shift_left(bitmap[b, h, u, word0 + 1], 31 - shift), 1)
                    return jnp.where(row_lab == u, low | high, row_bits)

                none = plgpu.layout_cast(jnp.zeros((WG_ROWS,), jnp.int32), ROW)
                row_bits = lax.fori_loop(0, u_hi - u_lo + 1, query_cluster, none)
                k_slot = col_lab - jw
                up = 31 - jnp.clip(k_slot, 0, 31)  # the column's bit to the sign
                word = lax.shift_left(
                    lax.broadcast_in_dim(row_bits, s.shape, [0]), lax.broadcast_in_dim(up, s.shape, [1])
                )
                inside = lax.broadcast_in_dim(((k_slot >= 0) & (k_slot < 32)).astype(jnp.int32), s.shape, [1])
                return allowed | (inside & (word < 0).astype(jnp.int32))

            allowed = jnp.zeros(s.shape, jnp.int32)
            allowed = lax.fori_loop(0, lax.div(j_hi - j_lo, 32) + 1, window, allowed)
            return jnp.where(allowed != 0, s, -jnp.inf)

        def masks(_, s):  # the passes this chunk takes, each 0 or 1 times
            if per_warpgroup:
                s = lax.fori_loop(0, column_trips, column_mask, s)
            if branch:
                s = lax.fori_loop(0, packed_trips, packed_mask, s)
            else:
                s = packed_mask(0, s)
            return lax.fori_loop(0, slow_trips, slow_mask, s)

        if not branch:
            return masks(0, s)
        # One branch around the passes: a warpgroup that needs none skips it once rather than once per pass.
        any_pass = jnp.maximum(jnp.maximum(column_trips, packed_trips), slow_trips)
        return lax.fori_loop(0, any_pass, masks, s)

    return TileMask(stage1, stage2, apply)


def edge_mask(tables, at, row0, *, block_k: int) -> TileMask:
    """The mask of a plan whose tiles each lie in one query cluster (``plan.one_cluster_tiles``, the
    aligned layouts of :mod:`.tile_aligned`): no chunk is mixed, so a chunk that takes a mask is a run's
    first or last and needs only its columns ``lead <= c < valid``, one 0 / -inf column bias added to the
    logits. Stage 1 loads the chunk's code alone; there is no stage 2 (no key labels, map words or
    branches). ``tables`` start with the chunk starts and codes."""
    del row0
    _, codes = tables[:2]
    b, h, t = at
    width = codes.shape[-1]

    def stage1(j):
        return codes[b, h, t, jnp.minimum(j, width - 1)]

    def apply(code, _, s):
        lead, valid, _ = decode_chunk(code)
        cols = plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL)
        bias = jnp.where((cols >= lead) & (cols < valid), 0.0, -jnp.inf)
        return s + lax.broadcast_in_dim(bias, s.shape, [1])

    return TileMask(stage1, lambda j, first: None, apply)


def warpgroup_flags(u_lo, u_hi, tile_lo) -> dict:
    """What :func:`mask_passes` needs of a warpgroup whose rows run from query cluster ``u_lo`` to ``u_hi``
    in a tile starting at ``tile_lo`` (elementwise int32): ``rows_fit`` (the tile's clusters up to its last
    row fit ``FAST_Q``), ``single`` (its rows lie in one cluster) and ``u_slot`` (that cluster's slot)."""
    return dict(
        rows_fit=(u_hi - tile_lo < FAST_Q).astype(jnp.int32),
        single=(u_lo == u_hi).astype(jnp.int32),
        u_slot=jnp.clip(u_lo - tile_lo, 0, FAST_Q - 1),
    )


def mask_passes(code, bits, rows_fit, single, u_slot, *, block_k: int, per_warpgroup: bool):
    """Which of :func:`cluster_mask`'s passes a warpgroup runs on a chunk, each 0 or 1 times, and their
    words: ``(column_trips, packed_trips, slow_trips, column_word, packed_word)``.

    ``code``: the chunk's code; ``bits``: the tile's packed word at the chunk's first key cluster;
    ``rows_fit``: the tile's query clusters up to the warpgroup's last row fit ``FAST_Q``; ``single``: the
    warpgroup's rows lie in one query cluster, at slot ``u_slot`` of the tile. Scalars in the kernel,
    arrays in tests (everything is elementwise int32)."""
    lead, valid, uniform = decode_chunk(code)
    edge = ((lead > 0) | (valid < block_k)).astype(jnp.int32)  # interior chunks lie wholly in the run
    mixed = 1 - uniform
    fast = mixed * rows_fit * (decode_span(code) < FAST_K).astype(jnp.int32)
    packed_word = jnp.where(fast == 1, bits, jnp.int32(-1))  # uniform and slow chunks: the run mask only
    column_word = jnp.where(fast == 1, lax.shift_right_logical(bits, u_slot), jnp.int32(-1))
    if not per_warpgroup:
        return 0, edge | fast, mixed - fast, column_word, packed_word  # (a Python 0: no column pass traced)
    # Bits 0, 4, .. of the warpgroup's word are its selection of the chunk's key clusters; with all of the
    # chunk's span + 1 clusters selected and no run edge, the chunk needs no mask for this warpgroup.
    span = jnp.clip(decode_span(code), 0, FAST_K - 1)  # (only used where fast: span < FAST_K)
    want = lax.shift_right_logical(jnp.full_like(code, 0x11111111), (FAST_K - 1 - span) * FAST_Q)
    keep_all = ((column_word & want) == want).astype(jnp.int32)
    masked = (edge | fast) * (1 - (1 - edge) * fast * single * keep_all)
    by_columns = jnp.maximum(1 - fast, single)  # the run's edge only, or one query cluster
    return masked * by_columns, masked * (1 - by_columns), mixed - fast, column_word, packed_word


def cluster_sparse_attention_mosaic(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    plan: ClusterTilePlan,
    *,
    sm_scale: float,
    num_stages: int | None = None,
    tiles_per_step: int = 1,
    num_programs: int | None = None,
    order: str = "head_lpt",
    mask_weight: float | None = None,
    overlap: bool | None = None,
    per_warpgroup_mask: bool = True,
    edge_only: bool | None = None,
    fold_scale: bool = False,
    tile_rows: jax.Array | None = None,
    make_mask=None,
) -> Float[Array, "B N H D"]:
    """Run the Mosaic kernel on a plan built with ``block_q=128``, ``block_k`` 64 or 128 and ``row_align=8``
    (``cluster_sparse_attention_from_plan`` checks that the plan fits q/k first).

    ``num_stages``: K/V ring slots, by default :data:`DEFAULT_STAGES` for the plan's ``block_k``.

    ``order``: the persistent CTAs' work order (:func:`.work_order.work_order`); with ``mask_weight`` it
    ranks query tiles by their chunk count plus ``mask_weight`` per chunk that takes a mask.

    ``overlap`` and ``fold_scale``: the engine's intra-warpgroup pipelining and where it applies the softmax
    scale (:func:`.mosaic_flash.sparse_flash_mosaic`). ``per_warpgroup_mask``: :func:`cluster_mask`'s
    ``per_warpgroup`` (default on; False gives the same bits).

    The chunks that take a mask are walked first (:func:`masked_first`), the rest without the mask's code
    at all (the engine's ``masked_counts``).

    ``edge_only`` (default :data:`EDGE_ONLY_DEFAULT`) runs :func:`edge_mask`, which reads only the chunk
    starts and codes, instead of :func:`cluster_mask`; it needs a plan marked ``one_cluster_tiles``
    (:func:`.tile_aligned.align_plan`), where no chunk is mixed (``per_warpgroup_mask`` then does not apply).

    ``tile_rows`` (``[B, H, nqt]``, optional): the real query rows of each tile, e.g.
    :attr:`.tile_aligned.AlignedQueries.tile_rows`. A tile with at most 64 runs on one warpgroup and leaves
    its other 64 rows of the output unwritten (they are padding; the engine's ``paired``).

    ``make_mask`` replaces the kernel's mask (:func:`cluster_mask`, same signature and full tables): an
    ablation hook for benchmarks, which then compute something else than the plan's attention."""
    check_mosaic_plan(q, plan)
    if edge_only is None:  # (a make_mask of the caller's replaces the default mask, edge-only or not)
        edge_only = EDGE_ONLY_DEFAULT and plan.one_cluster_tiles and make_mask is None
    if edge_only and not plan.one_cluster_tiles:
        raise ValueError(
            "edge_only=True needs a plan whose tiles each lie in one query cluster (one_cluster_tiles, from "
            "tile_aligned.align_plan); this plan's tiles may span query clusters: pass edge_only=False"
        )
    if edge_only and make_mask is not None:
        raise ValueError("pass edge_only=True or make_mask, not both")
    plan, masked_counts = masked_first(plan)
    n = q.shape[1]
    bk = plan.block_k
    nqt, width = plan.chunk_starts.shape[2:]
    mk = plan.k_labels.shape[2]  # M + block_k: a chunk starting at any key row stays in bounds
    qp = pad_axis(q, 1, nqt * CTA_ROWS)  # no copy when the caller laid q out padded
    mk_pad = -(-mk // ROW_ALIGN) * ROW_ALIGN  # TMA wants whole 8-row tiles in the global array too
    kp, vp = pad_axis(k, 1, mk_pad), pad_axis(v, 1, mk_pad)
    if edge_only:  # run edges only: the starts and codes suffice
        tables, make_mask = (plan.chunk_starts, plan.chunk_codes), edge_mask
    else:
        ck = plan.cluster_map.shape[3] - 1  # the sentinel key cluster
        bitset = map_bitset(plan.cluster_map)
        tables = (
            plan.chunk_starts,
            plan.chunk_codes,
            plan.chunk_counts,
            plan.chunk_kfirst,
            plan.q_labels,  # rows of nqt·128: vector loads stay aligned
            jnp.pad(plan.k_labels, ((0, 0), (0, 0), (0, mk_pad - mk)), constant_values=ck),  # aligned rows
            bitset,
            chunk_words(plan, bitset),
        )
        make_mask = make_mask or functools.partial(cluster_mask, per_warpgroup=per_warpgroup_mask)

    def key_row(tables, at, j):  # a multiple of ROW_ALIGN the compiler can see (TMA into 8-row tiles)
        return lax.div(jnp.clip(tables[0][(*at, j)], 0, mk - bk), ROW_ALIGN) * ROW_ALIGN

    out = sparse_flash_mosaic(
        tables,
        qp,
        kp,
        vp,
        counts=jnp.clip(plan.chunk_counts, 0, width),
        masked_counts=masked_counts,
        key_row=key_row,
        make_mask=functools.partial(make_mask, block_k=bk),
        block_k=bk,
        sm_scale=sm_scale,
        num_stages=DEFAULT_STAGES[bk] if num_stages is None else num_stages,
        tiles_per_step=tiles_per_step,
        num_programs=num_programs,
        order=order,
        cost=None if mask_weight is None else tile_cost(plan, mask_weight),
        overlap=overlap,
        fold_scale=fold_scale,
        paired=paired_tiles(tile_rows, plan.chunk_counts.shape),
    )
    return out[:, :n]


def needs_mask(plan: ClusterTilePlan) -> jax.Array:
    """``[B, H, nqt, C]`` bool: the listed chunks that take a mask (a run's edge chunk or a mixed one)."""
    listed = jnp.arange(plan.chunk_codes.shape[-1]) < plan.chunk_counts[..., None]
    lead, valid, uniform = decode_chunk(plan.chunk_codes)
    return listed & ((lead > 0) | (valid < plan.block_k) | (uniform == 0))


def masked_first(plan: ClusterTilePlan) -> tuple[ClusterTilePlan, jax.Array]:
    """The plan with each tile's chunks that take a mask moved to the front of its list (in order, then the
    rest in order), and ``[B, H, nqt]`` how many there are: the engine walks those with the mask and the
    rest without its code (``masked_counts`` of :func:`.mosaic_flash.sparse_flash_mosaic`). Same chunks, so
    the same attention up to the order of the online softmax's sums (:func:`.common.front_order`; each field
    is gathered through it)."""
    masked = needs_mask(plan)
    src, n_masked = front_order(masked, plan.chunk_counts)
    fields = ("chunk_starts", "chunk_codes", "chunk_kfirst")
    moved = {f: jnp.take_along_axis(getattr(plan, f), src, axis=-1) for f in fields}
    return dataclasses.replace(plan, **moved), n_masked


def tile_cost(plan: ClusterTilePlan, mask_weight: float) -> jax.Array:
    """``[B, H, nqt]`` float32: each query tile's chunk count plus ``mask_weight`` per masked chunk (a run's
    first or last chunk, or a mixed one)."""
    masked = needs_mask(plan)
    return plan.chunk_counts.astype(jnp.float32) + mask_weight * jnp.sum(masked, axis=-1, dtype=jnp.float32)


def mosaic_plan_ok(q: jax.Array, plan: ClusterTilePlan) -> bool:
    """Whether the Mosaic kernel takes this plan and these inputs (what 'auto' asks on Hopper)."""
    try:
        check_mosaic_plan(q, plan)
    except ValueError:
        return False
    return True
