"""k-means assignment for Hopper: squared-L2 distances + argmin with wgmma, lowered through Mosaic GPU.

Same contract as :func:`kmeans_assign` (``implementation="pallas_mosaic"``) except how near-ties resolve
(below). The grid is persistent: one CTA per SM deals itself the work items ``(group, row tile)``
group by group (the CTAs running at once share one group's centroids in L2). Each CTA runs three
warpgroups:

* warpgroup 2 is the producer: it streams the centroid tiles (``[block_k, D]``, plus their ``‖c‖²``) of
  all its items through a ring of ``num_stages`` shared-memory slots with TMA, so the next item's first
  tiles load while the current one finishes;
* warpgroups 0 and 1 each own ``row_blocks`` × 64 rows of the item (a tile is 128 or 256 rows), one
  wgmma per 64-row block and centroid tile. A warpgroup loads its rows itself, one item ahead
  (two buffers), and moves them to registers once per item: they are the wgmma's A operand for all
  the item's tiles (only the centroids are read from shared memory), and give the rows' ``‖x‖²``.

The distances come out of the tensor cores whole: the centroids are passed as ``−2·c`` (exact in
bf16/f16) and each tile's float32 accumulator starts at ``‖x‖² + ‖c‖²``, so the wgmma leaves
``‖x − c‖²``. The argmin then costs two integer ops per distance: a distance's bits with the low 7
replaced by its column in the tile form a key whose integer order is the distance order (distances are
``≥ 0`` up to rounding), and one min per row yields the smallest distance and, among equal ones, the
lowest column. So the argmin is taken over distances truncated to 17 significant bits (ties and
near-ties within ``2⁻¹⁷`` relative go to the lowest index; distances within rounding of zero count as
ties), and ``min_dist`` is that truncated distance. The steps are software-pipelined over all of a
CTA's tiles, items back to back: step ``t`` issues tile ``t``'s matrix multiply and folds tile ``t − 1``
into the running argmin while the tensor cores work.

Rows are not padded: the last row tile of a group reads past row ``N`` (TMA fills zeros) and its extra
outputs are dropped (an ``N`` that is not a multiple of 8, or below one tile, is padded: a copy). Token-major
``[B, N, H, D]`` inputs are read in place (strided TMA rows), as the Triton kernel does. Inputs: bf16/f16
rows, head dim a multiple of 64 (≤ 256).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float, Int

from .common import pad_axis
from .kmeans_reference import rounded_centroids
from .mosaic_flash import COL, MOSAIC_DTYPES, ROW, WG_ROWS
from .work_order import num_programs_for

KEY_MASK = -128  # int32 ~127: a distance's bits without the 7 low ones, which carry the tile column
SMEM_BUDGET = 224 * 1024  # bytes of shared memory the buffers may take (227 KiB per CTA on sm90)


def kmeans_mosaic_supports(x: jax.Array) -> bool:
    """Whether :func:`kmeans_assign_mosaic` takes ``x``."""
    return x.dtype in MOSAIC_DTYPES and x.shape[-1] % 64 == 0 and x.shape[-1] <= 256


def cc_slot(block_k: int) -> int:
    """Floats per ``‖c‖²`` ring slot: ``block_k`` rounded up to whole 128-byte lines (TMA alignment)."""
    return -(-block_k // 32) * 32


def ring_fit(d: int, block_k: int, itemsize: int = 2, row_blocks: int = 1) -> int:
    """How many centroid ring slots fit in shared memory beside the four row buffers of ``x`` (each
    ``row_blocks`` × 64 rows)."""
    x_bytes = 4 * row_blocks * WG_ROWS * d * itemsize
    return (SMEM_BUDGET - x_bytes) // (block_k * d * itemsize + cc_slot(block_k) * 4)


def default_block_k(d: int, k: int | None = None, row_blocks: int = 1) -> int:
    """Centroids per tile: at most ``128 / row_blocks`` where a two-slot ring fits, else at most 64 (a
    warpgroup's accumulators hold ``row_blocks`` × 64 rows × ``block_k`` floats); given the centroid
    count ``k``, the fewest tiles of that size, shrunk (in multiples of 8, the wgmma's N step) to share
    ``k`` evenly: 300 centroids take 3 tiles of 104 (312 columns), not 3 of 128 (384)."""
    cap = 128 // row_blocks if ring_fit(d, 128 // row_blocks, 2, row_blocks) >= 2 else 64
    if k is None:
        return cap
    tiles = -(-k // cap)
    return -(-k // (8 * tiles)) * 8


def default_row_blocks(d: int, itemsize: int = 2) -> int:
    """64-row blocks per warpgroup: 2 (256-row items) where their row buffers leave room for a two-slot
    ring of 64-centroid tiles, else 1. H100, B1 H40 N75600 D128: K=1000 1.63 → 1.53 ms, K=300
    0.570 → 0.565 ms (each centroid tile read from L2 serves twice the rows; same labels)."""
    return 2 if ring_fit(d, 64, itemsize, 2) >= 2 else 1


def ring_stages(d: int, block_k: int, num_stages: int, itemsize: int = 2, row_blocks: int = 1) -> int:
    """Centroid ring depth: ``num_stages`` capped by what fits beside the ``x`` buffers (at least 2)."""
    fit = ring_fit(d, block_k, itemsize, row_blocks)
    if fit < 2:
        raise ValueError(
            f"block_k={block_k} with row_blocks={row_blocks} at head dim {d} leaves shared memory for "
            f"{max(fit, 0)} centroid ring slot(s), need 2: use block_k=64 or row_blocks=1"
        )
    return min(max(2, num_stages), fit)


def _kernel(
    x_ref, c_ref, cc_ref, label_ref, dist_ref, scoped, *, n_rt, num_k_blocks, block_k, stages, row_blocks
):
    sm, n_programs = lax.axis_index("sm"), lax.axis_size("sm")
    wg = lax.axis_index("wg")
    (x_smem, c_smem, cc_smem, lab_smem2, dist_smem2), (c_ready, cc_ready, x_ready), c_free = scoped
    num_groups = label_ref.shape[0]
    kb = num_k_blocks
    token_major = len(x_ref.shape) == 4
    rounds = lax.div(num_groups * n_rt - sm + n_programs - 1, n_programs)  # this CTA's work items

    rb = row_blocks
    wg_rows = rb * WG_ROWS  # rows per warpgroup and item: rb blocks of 64, one wgmma each per tile

    def item_at(r):  # (group, first row of the item's 2·wg_rows-row tile)
        item = sm + r * n_programs
        return lax.div(item, jnp.int32(n_rt)), lax.rem(item, jnp.int32(n_rt)) * (2 * wg_rows)

    def ring(t):
        return lax.rem(t, jnp.int32(stages))

    @pl.when(wg < 2)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        lab_smem, dist_smem = lab_smem2.at[wg], dist_smem2.at[wg]
        cols = plgpu.broadcasted_iota(jnp.int32, (WG_ROWS, block_k), 1, layout=plgpu.Layout.WGMMA)
        blocks = range(rb)

        def buf_of(r):  # this warpgroup's row buffer for item r (two per warpgroup, alternating)
            return lax.rem(r, 2) * 2 + wg

        def load_rows(r):
            g, start = item_at(r)
            rows = pl.ds(start + wg * wg_rows, wg_rows)
            if token_major:  # group g = b·H + h
                heads = x_ref.shape[2]
                src = x_ref.at[lax.div(g, jnp.int32(heads)), rows, lax.rem(g, jnp.int32(heads))]
            else:
                src = x_ref.at[g, rows]
            plgpu.copy_gmem_to_smem(src, x_smem.at[buf_of(r)], x_ready.at[buf_of(r)])

        def finish_item(r, best_keys, best_is):  # one (key, label) pair of row vectors per row block
            g, start = item_at(r)
            rows = pl.ds(start + wg * wg_rows, wg_rows)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous item's outputs left smem
            for i in blocks:
                part = pl.ds(i * WG_ROWS, WG_ROWS)
                lab_smem.at[part][...] = best_is[i]
                dist_smem.at[part][...] = lax.bitcast_convert_type(best_keys[i], jnp.float32)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(lab_smem, label_ref.at[g, rows])
            plgpu.copy_smem_to_gmem(dist_smem, dist_ref.at[g, rows])

        def update(s, t, best_key, best_i):  # fold tile t's distances s into the running argmin
            # Key = the distance's bits with the column in the low 7 bits: one integer min per row gives
            # the smallest (truncated) distance and, among equal ones, the lowest column.
            key = (lax.bitcast_convert_type(s, jnp.int32) & KEY_MASK) | cols
            tile_key = key.min(axis=1)
            tile_val = tile_key & KEY_MASK
            tile_arg = (tile_key & ~KEY_MASK) + lax.rem(t, jnp.int32(kb)) * block_k
            better = tile_val < best_key  # strict: an earlier tile keeps its ties
            return jnp.where(better, tile_val, best_key), jnp.where(better, tile_arg, best_i)

        load_rows(0)
        no_key = plgpu.layout_cast(jnp.full((WG_ROWS,), jnp.iinfo(jnp.int32).max, jnp.int32), ROW)
        zero = plgpu.layout_cast(jnp.full((WG_ROWS,), 0, jnp.int32), ROW)
        s0 = plgpu.layout_cast(jnp.full((WG_ROWS, block_k), 0.0, jnp.float32), plgpu.Layout.WGMMA)

        def item(r, carry):
            # The item's rows go to registers (the wgmma's A operand), so their buffer is free at once
            # for the next item's rows.
            plgpu.barrier_wait(x_ready.at[buf_of(r)])
            xs = [
                plgpu.load(x_smem.at[buf_of(r), pl.ds(i * WG_ROWS, WG_ROWS)], layout=plgpu.Layout.WGMMA)
                for i in blocks
            ]
            xxs = [(xf * xf).sum(axis=1) for xf in (x.astype(jnp.float32) for x in xs)]

            @pl.when(r + 1 < rounds)
            def _():
                load_rows(r + 1)

            # Software pipeline over all of this CTA's tiles (items back to back): step j issues tile j's
            # matrix multiplies (one per row block), then folds the tile before it (the previous item's
            # last one for j = 0) into the argmin while the tensor cores work.
            def step(j, carry):
                best_keys, best_is, s_prevs = carry
                t = r * kb + j
                slot = ring(t)
                plgpu.barrier_wait(c_ready.at[slot])
                plgpu.barrier_wait(cc_ready.at[slot])
                cc = plgpu.load(cc_smem.at[slot, pl.ds(0, block_k)], layout=COL, optimized=False)
                # The accumulator starts at ‖x‖² + ‖c‖² and the centroids come as −2·c (exact in bf16 and
                # f16), so the matrix multiply leaves the squared distances.
                cc_b = lax.broadcast_in_dim(cc, s0.shape, [1])
                biases = [cc_b + lax.broadcast_in_dim(xx, s0.shape, [0]) for xx in xxs]

                def xc(refs):
                    acc_refs, key_refs, arg_refs = refs[:rb], refs[rb : 2 * rb], refs[2 * rb :]
                    for i in blocks:
                        plgpu.wgmma(acc_refs[i], xs[i], c_smem.at[slot].transpose((1, 0)))
                    for i in blocks:
                        key_refs[i][...], arg_refs[i][...] = update(
                            s_prevs[i], t - 1, key_refs[i][...], arg_refs[i][...]
                        )

                out = pl.run_state(xc)((*map(plgpu.ACC.init, biases), *best_keys, *best_is))
                s, best_keys, best_is = out[:rb], out[rb : 2 * rb], out[2 * rb :]
                plgpu.barrier_arrive(c_free.at[slot])

                @pl.when((j == 0) & (r > 0))
                def _():
                    finish_item(r - 1, best_keys, best_is)

                first = lax.broadcast_in_dim(j == 0, (WG_ROWS,), ())  # a new item starts from scratch
                best_keys = tuple(jnp.where(first, no_key, k) for k in best_keys)
                best_is = tuple(jnp.where(first, zero, i) for i in best_is)
                return best_keys, best_is, tuple(s)

            return lax.fori_loop(0, kb, step, carry)

        init = ((no_key,) * rb, (zero,) * rb, (s0,) * rb)
        best_keys, best_is, s = lax.fori_loop(0, rounds, item, init)
        last = [update(s[i], rounds * kb - 1, best_keys[i], best_is[i]) for i in blocks]
        finish_item(rounds - 1, [k for k, _ in last], [i for _, i in last])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")

        def work(r, base):
            g, _ = item_at(r)

            @pl.loop(0, kb)
            def _(j):
                t = base + j
                slot = ring(t)

                @pl.when(t >= stages)  # the ring's first lap fills free slots
                def _():
                    plgpu.barrier_wait(c_free.at[slot])

                rows = pl.ds(j * block_k, block_k)
                plgpu.copy_gmem_to_smem(c_ref.at[g, rows], c_smem.at[slot], c_ready.at[slot])
                plgpu.copy_gmem_to_smem(
                    cc_ref.at[g, rows], cc_smem.at[slot, pl.ds(0, block_k)], cc_ready.at[slot]
                )

            return base + kb

        total = lax.fori_loop(0, rounds, work, jnp.int32(0))

        @pl.loop(jnp.maximum(total - stages, 0), total)  # observe the last lap's releases (barrier rule)
        def _(t):
            plgpu.barrier_wait(c_free.at[ring(t)])


def kmeans_assign_mosaic(
    x: Float[Array, "G N D"] | Float[Array, "B N H D"],
    centroids: Float[Array, "G K D"],
    *,
    block_k: int | None = None,
    num_stages: int = 2,
    num_programs: int | None = None,
    row_blocks: int | None = None,
) -> tuple[Int[Array, "G N"], Float[Array, "G N"]]:
    """``(labels, min_dist)`` of every row, ``[G, N]`` with ``G = B·H`` for token-major ``x``; see
    :func:`kmeans_assign` (which validates the inputs).

    ``block_k`` (a multiple of 8 up to 128; default :func:`default_block_k`) centroids per tile,
    ``num_stages`` ring slots (capped by shared memory; 2 measured 3–9% faster than 3 or 4 on the H200),
    ``num_programs`` persistent CTAs (default one per SM), ``row_blocks`` 64-row blocks per warpgroup
    (1 or 2: a CTA takes 128 or 256 rows per item, so each centroid tile it reads serves that many rows;
    default :func:`default_row_blocks`, or 1 with ``block_k`` > 64): they change speed, never the labels.
    GPU only: Mosaic GPU's simulator cannot run the accumulator-initialised wgmma (``run_state``).
    """
    if not kmeans_mosaic_supports(x):
        raise ValueError(
            "implementation='pallas_mosaic' needs bf16/f16 rows with a head dim that is a multiple of 64 "
            f"(at most 256); got {x.dtype} with D={x.shape[-1]}: use implementation='pallas_triton'"
        )
    if row_blocks is None:  # a tile wider than 64 centroids takes 128-row items (registers)
        row_blocks = default_row_blocks(x.shape[-1], x.dtype.itemsize) if (block_k or 0) <= 64 else 1
    if row_blocks not in (1, 2):
        raise ValueError(f"row_blocks must be 1 or 2 (64-row blocks per warpgroup); got {row_blocks!r}")
    block_k = block_k or default_block_k(x.shape[-1], centroids.shape[1], row_blocks)
    if isinstance(block_k, bool) or not isinstance(block_k, int) or not 8 <= block_k <= 128 or block_k % 8:
        raise ValueError(f"block_k must be a multiple of 8 in [8, 128] (one wgmma N tile); got {block_k!r}")
    if block_k * row_blocks > 128:
        raise ValueError(
            f"block_k={block_k} with row_blocks={row_blocks} needs {block_k * row_blocks} accumulator "
            "columns per warpgroup, more than the 128 its registers hold: use block_k <= 64 or row_blocks=1"
        )
    n, d = x.shape[1], x.shape[-1]
    g, k = centroids.shape[0], centroids.shape[1]
    if x.ndim == 4 and x.shape[0] * x.shape[2] != g:
        raise ValueError(f"centroids must have B·H = {x.shape[0] * x.shape[2]} groups; got {g}")
    c, cc = rounded_centroids(centroids, x.dtype)  # [G, K, D], [G, K]
    kp = -(-k // block_k) * block_k
    cc = jnp.pad(cc, ((0, 0), (0, kp - k)), constant_values=jnp.inf)  # [G, Kp]
    c = pad_axis(-2 * c, 1, kp)  # exact: a power-of-two scale
    # TMA wants the row count a multiple of 8 (and at least one tile): copies x only for other N.
    cta_rows = 2 * row_blocks * WG_ROWS  # rows per item
    xp = pad_axis(x, 1, max(-(-n // 8) * 8, cta_rows))
    n_rt = -(-xp.shape[1] // cta_rows)
    width = n_rt * cta_rows  # the last tile's rows past N read zeros (TMA) and are dropped
    stages = ring_stages(d, block_k, num_stages, x.dtype.itemsize, row_blocks)
    programs = num_programs or num_programs_for(g * n_rt, False)
    tiles = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

    def kmeans_assign_wgmma(x_ref, c_ref, cc_ref, label_ref, dist_ref):  # (the profiler's kernel name)
        pl.run_scoped(
            lambda *scoped: _kernel(
                x_ref,
                c_ref,
                cc_ref,
                label_ref,
                dist_ref,
                scoped,
                n_rt=n_rt,
                num_k_blocks=kp // block_k,
                block_k=block_k,
                stages=stages,
                row_blocks=row_blocks,
            ),
            (
                # [item parity · 2 + warpgroup]
                plgpu.SMEM((4, row_blocks * WG_ROWS, d), x.dtype, transforms=tiles),
                plgpu.SMEM((stages, block_k, d), x.dtype, transforms=tiles),
                plgpu.SMEM((stages, cc_slot(block_k)), jnp.float32),
                plgpu.SMEM((2, row_blocks * WG_ROWS), jnp.int32),
                plgpu.SMEM((2, row_blocks * WG_ROWS), jnp.float32),
            ),  # labels and distances per warpgroup
            (
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=4),
            ),
            plgpu.Barrier(num_arrivals=2, num_barriers=stages),
            collective_axes="wg",
        )

    out = (jax.ShapeDtypeStruct((g, width), jnp.int32), jax.ShapeDtypeStruct((g, width), jnp.float32))
    labels, dist = plgpu.kernel(
        kmeans_assign_wgmma,
        out_type=out,
        grid=(programs,),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=False),
    )(xp, c, cc)
    return labels[:, :n], dist[:, :n]
