"""The Hopper sparse-attention engine both Mosaic GPU kernels share: CTAs walk lists of key tiles.

A kernel hands the engine ``counts [B, H, nqt]`` (how many key tiles query tile ``t`` of ``(b, h)``
visits) and two functions of its index tables (GMEM int32 refs read as scalars):

* ``key_row(tables, at, j)``: the first key row of the ``j``-th tile of the item ``at = (batch, head,
  q_tile)`` (any row: TMA takes any offset);
* ``make_mask(tables, at, row0)`` (optional): called once per item and compute warpgroup (``row0`` = its
  first query row) and returning a :class:`TileMask` ``(stage1, stage2, apply)``: ``stage1(j)`` loads what
  tile ``j`` needs from the tables, ``stage2(j, first)`` what depends on those values, and
  ``apply(first, second, s)`` masks the ``[64, block_k]`` logits. The engine pipelines the loads: step
  ``j`` issues ``stage2`` of tile ``j`` (its inputs came one step earlier) and ``stage1`` of tile
  ``j + 1`` before its ``Q Kᵀ``, and uses them after it, so the loads hide under the matrix multiply
  and only ``stage1``'s few scalars ride in the loop carry (``j`` may pass the list end: clamp). With
  ``masked_counts``, a list's first tiles take the mask and the rest run the loop without its code.

The grid is persistent: one CTA per SM deals itself the items of a work list (:func:`work_order`: head
by head for L2 reuse of K and V, longest list first inside a head). Each CTA runs three warpgroups (the
FlashAttention-3 structure):

* warpgroup 2 is the producer: it streams the listed K and V tiles of all its items into a ring of
  ``num_stages`` shared-memory slots with TMA, waiting on the consumers' "slot free" barriers before
  reusing a slot, so the next item's first tiles load while the current item finishes;
* warpgroups 0 and 1 each own 64 query rows: ``S = Q Kᵀ`` by wgmma from shared memory, base-2 online
  softmax in registers, ``O += P V`` by wgmma with ``P`` in registers; a shared "schedule" barrier
  alternates them so one warpgroup's softmax overlaps the other's matrix multiplies. By default (``overlap``)
  a warpgroup also overlaps its own softmax of step ``j`` with its ``P V`` of step ``j - 1``
  (FlashAttention-3's intra-warpgroup pipelining; +2–6% for the block kernel on the H200). With
  ``tiles_per_step=2`` a step takes two key tiles (two wgmmas each way, one softmax update): +5% for
  64-row block lists, nothing for the cluster kernel's chunk lists (H200, ``benchmarks/mosaic_steps.py``).

An item whose count is 0 writes zeros, and so does a row that no tile lets see a key. Head dims that are
multiples of 64 (≤ 256), bf16 or f16.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .work_order import num_programs_for, work_order

LOG2E = math.log2(math.e)
WG_ROWS = 64  # query rows per compute warpgroup (one wgmma M tile)
CTA_ROWS = 2 * WG_ROWS  # query rows per CTA = the block_q of the tile lists
MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)
# Key tiles per softmax step. Two: a step multiplies Q by both tiles (two wgmmas each way) and runs one
# online-softmax update over both, which halves the per-step costs (barriers, row max/sum, the rescale
# of the accumulator) for 64-row tiles at the price of a padding tile at the end of an odd list.
TILES_PER_STEP = (1, 2)
SMEM_BYTES = 227 * 1024  # dynamic shared memory of one sm90 CTA
ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per logits row
COL = plgpu.Layout.WGMMA.reduce(0)  # one value per logits column


class TileMask(NamedTuple):
    """A kernel's per-tile mask, split into two load stages and the masking itself."""

    stage1: Callable
    stage2: Callable
    apply: Callable


def paired_tiles(tile_rows: jax.Array | None, shape: tuple[int, ...]) -> jax.Array | None:
    """The engine's ``paired`` from the real query rows of each tile (``[B, H, nqt]``, or None: all)."""
    if tile_rows is None:
        return None
    if tile_rows.shape != shape:
        raise ValueError(
            f"tile_rows must hold the real query rows of each tile, shape [B, H, nqt] = {shape}; "
            f"got {tile_rows.shape}"
        )
    return tile_rows > WG_ROWS


def mosaic_supports(q: jax.Array, block_q: int, block_k: int) -> bool:
    """Whether the Mosaic kernels take these inputs (what 'auto' asks on Hopper)."""
    try:
        check_mosaic_inputs(q, block_q, block_k)
    except ValueError:
        return False
    return True


def check_mosaic_inputs(q: jax.Array, block_q: int, block_k: int) -> None:
    """The shapes the Mosaic kernels take; raises with the reason (never a silent fallback)."""
    d = q.shape[-1]
    if q.dtype not in MOSAIC_DTYPES:
        raise ValueError(
            f"implementation='pallas_mosaic' takes bf16 or f16 inputs (wgmma); got {q.dtype}: cast q, k, v "
            "or use implementation='pallas_triton'"
        )
    if d % 64 or d > 256:
        raise ValueError(
            f"implementation='pallas_mosaic' needs a head dim that is a multiple of 64, at most 256; got {d}"
        )
    if block_q != CTA_ROWS:
        raise ValueError(
            f"implementation='pallas_mosaic' needs block_q={CTA_ROWS} (two 64-row warpgroups); got {block_q}"
        )
    if block_k not in (64, 128):
        raise ValueError(f"implementation='pallas_mosaic' needs block_k 64 or 128; got {block_k}")


def _kernel(
    counts_ref,
    masked_ref,
    order_ref,
    paired_ref,
    tables,
    q_ref,
    k_ref,
    v_ref,
    out_ref,
    scoped,
    *,
    walk,
    block_k,
    sm_scale,
    stages,
    tiles_per_step,
    overlap,
    fold_scale,
    key_pages,
    dtype,
):
    key_row, make_mask, split = walk
    page_rows = block_k // key_pages
    scale = sm_scale * LOG2E  # logits to base 2
    sm, n_programs = lax.axis_index("sm"), lax.axis_size("sm")
    wg = lax.axis_index("wg")
    (qo_smem2, k_smem, v_smem), (k_ready, v_ready, q_ready), (k_free, v_free), schedule = scoped
    _, nq, heads, head_dim = q_ref.shape
    n_qt = nq // CTA_ROWS
    rounds = lax.div(order_ref.shape[0] - sm + n_programs - 1, n_programs)  # this CTA's work items

    def item_at(r):  # the r-th work item of this CTA: (batch, head, query tile)
        item = order_ref[sm + r * n_programs]
        bh = lax.div(item, jnp.int32(n_qt))
        return lax.div(bh, jnp.int32(heads)), lax.rem(bh, jnp.int32(heads)), lax.rem(item, jnp.int32(n_qt))

    def ring(t):  # the ring slot of the CTA's t-th key tile (counted across its work items)
        return lax.rem(t, jnp.int32(stages))

    per = tiles_per_step

    def steps_of(count):  # an item's steps; a list of odd length walks one padding tile at the end
        return lax.div(count + per - 1, jnp.int32(per))

    @pl.when(wg < 2)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        qo_smem = qo_smem2.at[wg]

        def item(at, base, sync):  # one work item; without `sync` this warpgroup runs it alone
            batch, head, qt = at
            count = counts_ref[at]
            n_steps = steps_of(count)

            def schedule_arrive():  # the ping-pong with the other warpgroup (none when alone)
                if sync:
                    plgpu.barrier_arrive(schedule)

            def schedule_wait():
                if sync:
                    plgpu.barrier_wait(schedule)

            def schedule_sync():
                schedule_arrive()
                schedule_wait()

            n_masked = jnp.minimum(steps_of(masked_ref[at]), n_steps)  # the steps that take the mask
            row0 = qt * CTA_ROWS + wg * WG_ROWS
            plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(row0, WG_ROWS), head], qo_smem, q_ready.at[wg])
            mask = make_mask(tables, at, row0) if make_mask is not None else None
            meta = tuple(mask.stage1(i) for i in range(per)) if mask is not None else ()  # step 0's stage 1
            plgpu.barrier_wait(q_ready.at[wg])
            m_i = plgpu.layout_cast(jnp.full((WG_ROWS,), -jnp.inf, jnp.float32), ROW)
            l_i = plgpu.layout_cast(jnp.full((WG_ROWS,), 0.0, jnp.float32), ROW)
            acc = plgpu.layout_cast(jnp.full((WG_ROWS, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA)

            @pl.when(count > 0)
            def _():
                for i in range(per):
                    plgpu.barrier_wait(k_ready.at[ring(base + i)])

            if sync:
                pl.when(wg == 1)(schedule_sync)

            def slots_of(p):  # the ring slots of step p's tiles
                return [ring(base + p * per + i) for i in range(per)]

            def mask_loads(p, meta, masked):  # stage 2 of step p's tiles (their stage 1 came a step earlier)
                if not masked:  # and stage 1 of the next; an unmasked segment carries stage 1 unused
                    return (), (), meta
                seconds = [mask.stage2(p * per + i, meta[i]) for i in range(per)]
                return meta, seconds, tuple(mask.stage1((p + 1) * per + i) for i in range(per))

            def issue_qk(slots, s_refs):
                for slot, s_ref in zip(slots, s_refs, strict=True):
                    plgpu.wgmma(s_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))

            def issue_pv(o_ref, slots, p16):
                for slot, p_ in zip(slots, p16, strict=True):
                    plgpu.wgmma(o_ref, p_, v_smem.at[slot])

            def logits(p, ss, firsts, seconds, masked):  # masked; scaled to base 2 unless fold_scale
                ss = list(ss) if fold_scale else [s * scale for s in ss]
                if masked:  # (masks are 0 / -inf: the same on scaled or raw logits)
                    ss = [mask.apply(firsts[i], seconds[i], s) for i, s in enumerate(ss)]
                for i in range(1, per):  # the padding tile past an odd list's end sees nothing (0/1 trips)
                    pad = (p * per + i >= count).astype(jnp.int32)
                    ss[i] = lax.fori_loop(0, pad, lambda _, s: jnp.minimum(s, -jnp.inf), ss[i])
                return ss

            def softmax(ss, m_i, l_i, p_dtype=dtype):  # the online update: new max, rescale, row sums, P
                # m is kept in base-2 units; with fold_scale the logits are raw and the scale goes to the
                # row max (max commutes with a positive scale, rounding included) and into exp2's argument,
                # s·scale − m: one fused multiply-add per logit instead of a multiply and a subtract.
                m_new = m_i
                for s in ss:
                    m_new = jnp.maximum(m_new, s.max(axis=1) * scale if fold_scale else s.max(axis=1))
                if mask is not None:  # a row masked everywhere so far keeps m = -inf: shift by 0 instead
                    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                else:
                    m_use = m_new
                alpha = jnp.exp2(m_i - m_use)
                m_b = [lax.broadcast_in_dim(m_use, s.shape, [0]) for s in ss]
                ps = [jnp.exp2(s * scale - m if fold_scale else s - m) for s, m in zip(ss, m_b, strict=True)]
                l_i = l_i * alpha
                for p_ in ps:
                    l_i = l_i + p_.sum(axis=1)
                return m_new, alpha, l_i, tuple(p_.astype(p_dtype) for p_ in ps)

            def scores(slots):  # S = Q Kᵀ of these tiles, waited for; then their K slots are free
                def qk(*s_refs):
                    issue_qk(slots, s_refs)
                    schedule_sync()
                    return tuple(s_ref[...] for s_ref in s_refs)

                ss = pl.run_scoped(qk, *[plgpu.ACC((WG_ROWS, block_k), jnp.float32)] * per)
                for slot in slots:
                    plgpu.barrier_arrive(k_free.at[slot])
                return ss

            def rescale(acc, alpha):
                return acc * lax.broadcast_in_dim(alpha, acc.shape, [0])

            def step(p, carry, masked):  # Q Kᵀ, softmax, P V: the other warpgroup's GEMMs hide the softmax
                acc, m_i, l_i, meta = carry
                slots = slots_of(p)
                firsts, seconds, meta = mask_loads(p, meta, masked)
                ss = scores(slots)
                m_new, alpha, l_i, p16 = softmax(logits(p, ss, firsts, seconds, masked), m_i, l_i)
                acc = rescale(acc, alpha)
                acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
                schedule_arrive()  # softmax done
                for slot in slots:
                    plgpu.barrier_wait(v_ready.at[slot])
                schedule_wait()  # tensor cores free

                def pv(o_ref):
                    issue_pv(o_ref, slots, p16)

                    @pl.when(p + 1 < n_steps)
                    def _():
                        for i in range(per):
                            plgpu.barrier_wait(k_ready.at[ring(base + (p + 1) * per + i)])

                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
                for slot in slots:
                    plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l_i, meta

            def first_step(_, carry, masked):  # overlap: step 0 is Q K_0 and its softmax alone
                acc, m_i, l_i, _, meta = carry
                slots = slots_of(0)
                firsts, seconds, meta = mask_loads(0, meta, masked)
                ss = scores(slots)
                m_new, _, l_i, p16 = softmax(logits(0, ss, firsts, seconds, masked), m_i, l_i)
                l_i, m_new, p16 = lax.optimization_barrier((l_i, m_new, p16))
                schedule_sync()
                return acc, m_new, l_i, p16, meta

            def overlapped_step(p, carry, masked):  # overlap: Q K_p and P_{p-1} V_{p-1} in flight, softmax p
                acc, m_i, l_i, p16, meta = carry
                slots, prev = slots_of(p), slots_of(p - 1)
                firsts, seconds, meta = mask_loads(p, meta, masked)
                for slot, slot_prev in zip(slots, prev, strict=True):
                    plgpu.barrier_wait(k_ready.at[slot])
                    plgpu.barrier_wait(v_ready.at[slot_prev])

                # ptxas serializes every wgmma if a non-wgmma instruction writes a wgmma input register while
                # one is in flight, so P stays float32 here and becomes P16 (the next input) after the wait.
                def body(refs):
                    o_ref, m_ref, l_ref, alpha_ref, p_refs = refs

                    def qk(*s_refs):
                        issue_qk(slots, s_refs)
                        issue_pv(o_ref, prev, p16)
                        schedule_sync()
                        # wgmma groups retire in order: with `per` P V groups left, every Q Kᵀ is done
                        return tuple(plgpu.wgmma_accumulator_load(s_ref, wait_n=per) for s_ref in s_refs)

                    ss = pl.run_scoped(qk, *[plgpu.ACC((WG_ROWS, block_k), jnp.float32)] * per)
                    for slot in slots:
                        plgpu.barrier_arrive(k_free.at[slot])
                    ss = logits(p, ss, firsts, seconds, masked)
                    m_new, alpha, l_new, p_new = softmax(ss, m_ref[...], l_ref[...], jnp.float32)
                    l_new, m_new, alpha, p_new = lax.optimization_barrier((l_new, m_new, alpha, p_new))
                    m_ref[...], l_ref[...], alpha_ref[...] = m_new, l_new, alpha
                    for p_ref, p_ in zip(p_refs, p_new, strict=True):
                        p_ref[...] = p_
                    schedule_arrive()  # softmax done

                zeros = jnp.zeros((WG_ROWS, block_k), jnp.float32)  # (overwritten: only shapes matter)
                p32 = (plgpu.layout_cast(zeros, plgpu.Layout.WGMMA),) * per
                acc, m_new, l_i, alpha, p32 = pl.run_state(body)((plgpu.ACC.init(acc), m_i, l_i, m_i, p32))
                for slot in prev:
                    plgpu.barrier_arrive(v_free.at[slot])
                p16 = tuple(p_.astype(dtype) for p_ in p32)
                schedule_wait()  # tensor cores free
                return rescale(acc, alpha), m_new, l_i, p16, meta

            def last_pv(acc, p16):  # overlap: the last step's P V
                slots = slots_of(n_steps - 1)
                for slot in slots:
                    plgpu.barrier_wait(v_ready.at[slot])
                acc = pl.run_state(lambda o_ref: issue_pv(o_ref, slots, p16))(plgpu.ACC.init(acc))
                for slot in slots:
                    plgpu.barrier_arrive(v_free.at[slot])
                return acc

            # The walk in segments (static): steps [start, end) with or without the mask's code. With `split`,
            # the lists hold the tiles that take the mask first, so the rest run without even its branch.
            if mask is None:
                segments = [(False, n_steps)]
            elif split:
                segments = [(True, n_masked), (False, n_steps)]
            else:
                segments = [(True, n_steps)]
            starts = [jnp.int32(0)] + [end for _, end in segments[:-1]]
            one = lambda x: jnp.minimum(x, 1)
            if overlap:
                p16 = (plgpu.layout_cast(jnp.zeros((WG_ROWS, block_k), dtype), plgpu.Layout.WGMMA),) * per
                carry = (acc, m_i, l_i, p16, meta)
                for start, (masked, end) in zip(starts, segments, strict=True):  # one segment takes step 0
                    body = functools.partial(first_step, masked=masked)
                    carry = lax.fori_loop(0, one(end) - one(start), body, carry)
                for start, (masked, end) in zip(starts, segments, strict=True):
                    body = functools.partial(overlapped_step, masked=masked)
                    carry = lax.fori_loop(jnp.maximum(start, 1), jnp.maximum(end, 1), body, carry)
                acc, m_i, l_i, p16, _ = carry
                acc = lax.fori_loop(0, one(n_steps), lambda _, acc: last_pv(acc, p16), acc)
            else:
                carry = (acc, m_i, l_i, meta)
                for start, (masked, end) in zip(starts, segments, strict=True):
                    carry = lax.fori_loop(start, end, functools.partial(step, masked=masked), carry)
                acc, m_i, l_i, _ = carry
            if sync:
                pl.when(wg == 0)(schedule_sync)
            # Rows that saw no key have l = 0 and acc = 0: output zeros, not NaN.
            acc = acc / lax.broadcast_in_dim(jnp.maximum(l_i, 1e-30), acc.shape, [0])
            qo_smem[...] = acc.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[batch, pl.ds(row0, WG_ROWS), head])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the buffer takes the next item's Q

        def shadow(at, base):  # warpgroup 1 on an item whose 64 rows are all padding: keep the ring's count
            @pl.loop(0, steps_of(counts_ref[at]) * per)
            def _(j):
                slot = ring(base + j)
                plgpu.barrier_wait(k_ready.at[slot])
                plgpu.barrier_arrive(k_free.at[slot])
                plgpu.barrier_wait(v_ready.at[slot])
                plgpu.barrier_arrive(v_free.at[slot])

        def work(r, base):
            at = item_at(r)
            if paired_ref is None:
                item(at, base, True)
            else:
                both = paired_ref[at] != 0
                pl.when(both)(lambda: item(at, base, True))
                pl.when(~both & (wg == 0))(lambda: item(at, base, False))
                pl.when(~both & (wg == 1))(lambda: shadow(at, base))
            return base + steps_of(counts_ref[at]) * per

        lax.fori_loop(0, rounds, work, jnp.int32(0))
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")

        def work(r, base):
            at = item_at(r)
            batch, head, _ = at
            count = counts_ref[at]
            walked = steps_of(count) * per  # with the padding tile (a copy of the last one)

            @pl.loop(0, walked)
            def _(j):
                firsts = key_row(tables, at, jnp.minimum(j, count - 1))  # a row, or one per page
                firsts = firsts if key_pages > 1 else (firsts,)
                t = base + j
                slot = ring(t)
                reuse = t >= stages  # the ring's first lap fills free slots

                def load(src, dst, ready):  # the tile's pages, each arriving on the slot's barrier
                    for i, first in enumerate(firsts):
                        rows = (batch, pl.ds(first, page_rows), head)
                        part = (
                            dst.at[slot, pl.ds(i * page_rows, page_rows)] if key_pages > 1 else dst.at[slot]
                        )
                        plgpu.copy_gmem_to_smem(src.at[rows], part, ready.at[slot])

                @pl.when(reuse)
                def _():
                    plgpu.barrier_wait(k_free.at[slot])

                load(k_ref, k_smem, k_ready)

                @pl.when(reuse)
                def _():
                    plgpu.barrier_wait(v_free.at[slot])

                load(v_ref, v_smem, v_ready)

            return base + walked

        lax.fori_loop(0, rounds, work, jnp.int32(0))


def sparse_flash_mosaic(
    tables: tuple[jax.Array, ...],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    counts: jax.Array,
    key_row: Callable,
    make_mask: Callable | None,
    masked_counts: jax.Array | None = None,
    block_k: int,
    sm_scale: float,
    num_stages: int = 2,
    tiles_per_step: int = 1,
    order: str = "head_lpt",
    num_programs: int | None = None,
    cost: jax.Array | None = None,
    overlap: bool | None = None,
    fold_scale: bool = False,
    key_pages: int = 1,
    paired: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Launch on padded operands: q ``[B, nqt·128, H, D]``; k, v ``[B, Mk, H, D]`` with every listed tile
    inside ``Mk`` rows; ``counts [B, H, nqt]`` (int32, ``>= 0``) says how many key tiles each query tile
    walks. ``tables`` are int32 arrays handed to ``key_row`` and ``make_mask`` as GMEM refs.

    The grid is persistent: ``num_programs`` CTAs (default one per SM) deal the work list of
    :func:`work_order` round-robin, and each carries its K/V ring across its items, so the producer
    streams the next item's first tiles while the compute warpgroups finish the current one.

    ``masked_counts`` (``[B, H, nqt]``, optional): the lists hold the tiles that need ``make_mask`` first,
    this many of them; the rest of each walk runs without the mask's code at all (no loads, no branch). By
    default every tile goes through ``make_mask``'s ``apply``. A step with ``tiles_per_step`` 2 that holds
    a masked tile takes the mask on both (``apply`` must leave a tile that needs none unchanged).

    ``tiles_per_step`` 2 walks the lists two tiles per softmax step (:data:`TILES_PER_STEP`); the ring then
    holds at least 4 tiles. ``order`` and ``cost``: see :func:`work_order`.

    ``overlap`` (default: on with one tile per step) adds FlashAttention-3's intra-warpgroup pipelining to
    the ping-pong: a warpgroup issues ``Q Kᵀ`` of step ``j`` and ``P V`` of step ``j - 1`` together, waits
    only for the first, and runs step ``j``'s softmax while its own ``P V`` is in flight; the accumulator
    is rescaled after it lands (the same sum in another order). H200, B1 H40 N75600 D128: the block
    kernel's 128-row tiles at density 0.1–0.3 go from 548–574 to 563–597 effective TFLOP/s; the cluster
    kernel on the SVG2 plan is unchanged (``benchmarks/mosaic_steps.py``).

    ``fold_scale`` applies the softmax scale inside the exponent (``exp2(s·c − m)``, one fused multiply-add
    per logit, FlashAttention-3's form) and to the row max, instead of scaling every logit first (a multiply
    per logit). Not the default: it lowers for sm90 on the CPU (``tests/test_mosaic_lowering.py``), but its
    GPU tests against the oracles have not run yet, nor has it been timed (``mosaic_steps.py --steps 1,2,1,0
    1,2,1,1``; ``benchmarks/open_measurements.sh``).

    ``key_pages`` > 1 fills each key tile from that many pages of ``block_k / key_pages`` rows (a multiple
    of 8), one TMA copy each: ``key_row`` then returns a tuple of the pages' first rows, and each ring slot's
    barriers wait for that many copies (:mod:`.paged_sparse_attn_mosaic`).

    ``paired`` (``[B, H, nqt]`` int, optional; default: every item) is nonzero where warpgroup 1's 64 query
    rows hold real queries. Where it is 0, warpgroup 1 only keeps the K/V ring's count (waits for each tile
    and frees it) and leaves its rows of the output unwritten, and warpgroup 0 runs the item alone, without
    the ping-pong. For the last tile of a query cluster padded to whole tiles with at most 64 rows left.
    """
    if tiles_per_step not in TILES_PER_STEP:
        raise ValueError(f"tiles_per_step must be one of {TILES_PER_STEP}; got {tiles_per_step!r}")
    if overlap is None:
        overlap = tiles_per_step == 1
    if overlap and tiles_per_step != 1:
        raise ValueError(
            "overlap=True takes tiles_per_step=1 (with 2 it ran 2x slower on the Wan 720p SVG2 plan, H200); "
            f"got tiles_per_step={tiles_per_step}"
        )
    if key_pages < 1 or block_k % key_pages or (block_k // key_pages) % 8:
        raise ValueError(
            f"key_pages must split block_k={block_k} into pages of a multiple of 8 rows; got {key_pages!r}"
        )
    b, nq, h, d = q.shape
    stages = max(2 * tiles_per_step, num_stages)  # a step holds its tiles while the next ones load
    smem = (2 * WG_ROWS + 2 * stages * block_k) * d * q.dtype.itemsize  # Q/O buffers + the K/V ring
    if smem > SMEM_BYTES:
        raise ValueError(
            f"num_stages={stages} key tiles of {block_k}x{d} (tiles_per_step={tiles_per_step}) need "
            f"{smem // 1024} KiB of shared memory, more than the {SMEM_BYTES // 1024} KiB a Hopper CTA has: "
            "use fewer stages, block_k=64 or tiles_per_step=1"
        )
    tiles = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    counts = counts.astype(jnp.int32)
    n_items = counts.size
    programs = num_programs or num_programs_for(n_items, interpret)
    order_arr = work_order(counts, order, programs=programs, cost=cost)
    n_tab = len(tables)

    split = masked_counts is not None
    if split and masked_counts.shape != counts.shape:
        raise ValueError(
            f"masked_counts must have the shape of counts {counts.shape}; got {masked_counts.shape}"
        )
    masked_counts = (masked_counts if split else counts).astype(jnp.int32)
    if paired is not None and paired.shape != counts.shape:
        raise ValueError(f"paired must have the shape of counts {counts.shape}; got {paired.shape}")
    extra = () if paired is None else (paired.astype(jnp.int32),)

    def sparse_flash_attention(*refs):  # (the profiler's kernel name)
        counts_ref, masked_ref, order_ref = refs[:3]
        paired_ref = refs[3] if extra else None
        refs = refs[3 + len(extra) :]
        tabs, (q_ref, k_ref, v_ref, out_ref) = refs[:n_tab], refs[n_tab:]
        pl.run_scoped(
            lambda *scoped: _kernel(
                counts_ref,
                masked_ref,
                order_ref,
                paired_ref,
                tabs,
                q_ref,
                k_ref,
                v_ref,
                out_ref,
                scoped,
                walk=(key_row, make_mask, split),
                block_k=block_k,
                sm_scale=sm_scale,
                stages=stages,
                tiles_per_step=tiles_per_step,
                overlap=overlap,
                fold_scale=fold_scale,
                key_pages=key_pages,
                dtype=q.dtype,
            ),
            (
                plgpu.SMEM((2, WG_ROWS, d), q.dtype, transforms=tiles),
                plgpu.SMEM((stages, block_k, d), q.dtype, transforms=tiles),
                plgpu.SMEM((stages, block_k, d), q.dtype, transforms=tiles),
            ),
            (
                plgpu.Barrier(num_arrivals=key_pages, num_barriers=stages),  # one arrival per page copy
                plgpu.Barrier(num_arrivals=key_pages, num_barriers=stages),
                plgpu.Barrier(num_barriers=2),
            ),
            (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=2),
            collective_axes="wg",
        )

    return plgpu.kernel(
        sparse_flash_attention,
        out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(programs,),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
    )(counts, masked_counts, order_arr, *extra, *tables, q, k, v)
