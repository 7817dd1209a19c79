"""Fixed-block sparse attention for Hopper: Pallas lowered through Mosaic GPU (wgmma, TMA, warp-specialised).

Same contract as :func:`block_sparse_attention` (``implementation="pallas_mosaic"``): query block ``i``
(128 rows) of ``(b, h)`` attends to the key blocks ``kv_block_indices[b, h, i, :kv_block_counts[b, h, i]]``.

One CTA per ``(head, query block, batch)`` runs three warpgroups (the FlashAttention-3 structure):

* warpgroup 2 is the producer: it reads the CTA's block list (scalars from global memory) and streams
  the listed K and V tiles into a ring of ``num_stages`` shared-memory slots with TMA, waiting on the
  consumers' "slot free" barriers before reusing a slot;
* warpgroups 0 and 1 each own 64 query rows: ``S = Q Kᵀ`` by wgmma from shared memory, base-2 online
  softmax in registers, ``O += P V`` by wgmma with ``P`` in registers; a shared "schedule" barrier
  alternates them so one warpgroup's softmax overlaps the other's matrix multiplies.

A CTA whose count is 0 writes zeros. Ragged lengths: the wrapper pads queries to 128 rows and keys to
``block_k``; when ``M`` is not a multiple of ``block_k`` the key columns past ``M`` are masked in every
tile (a static choice, one compare per element). Head dims 64/128/256 (multiples of 64), bf16 or f16.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float, Int

from .common import pad_axis

LOG2E = math.log2(math.e)
WG_ROWS = 64  # query rows per compute warpgroup (one wgmma M tile)
CTA_ROWS = 2 * WG_ROWS  # query rows per CTA = the block_q of the block lists
MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)


def mosaic_supports(q: jax.Array, block_q: int, block_k: int) -> bool:
    """Whether :func:`block_sparse_attention_mosaic` takes these inputs (what 'auto' asks on Hopper)."""
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
    idx_ref, cnt_ref, q_ref, k_ref, v_ref, out_ref, scoped, *, block_k, num_k, sm_scale, stages, dtype
):
    batch, head, qt = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_blocks")
    wg = lax.axis_index("wg")
    (qo_smem2, k_smem, v_smem), (k_ready, v_ready, q_ready), (k_free, v_free), schedule = scoped
    head_dim = q_ref.shape[-1]
    count = cnt_ref[batch, head, qt]

    def schedule_sync():
        plgpu.barrier_arrive(schedule)
        plgpu.barrier_wait(schedule)

    @pl.when(wg < 2)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        qo_smem = qo_smem2.at[wg]
        row0 = qt * CTA_ROWS + wg * WG_ROWS
        plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(row0, WG_ROWS), head], qo_smem, q_ready.at[wg])
        plgpu.barrier_wait(q_ready.at[wg])
        m_i = plgpu.layout_cast(jnp.full((WG_ROWS,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
        l_i = plgpu.layout_cast(jnp.full((WG_ROWS,), 0.0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
        acc = plgpu.layout_cast(jnp.full((WG_ROWS, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA)

        @pl.when(count > 0)
        def _():
            plgpu.barrier_wait(k_ready.at[0])

        pl.when(wg == 1)(schedule_sync)

        def step(j, carry):
            acc, m_i, l_i = carry
            slot = lax.rem(j, jnp.int32(stages))

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                schedule_sync()
                return acc_ref[...]

            s = pl.run_scoped(qk, plgpu.ACC((WG_ROWS, block_k), jnp.float32))
            plgpu.barrier_arrive(k_free.at[slot])
            s = s * (sm_scale * LOG2E)
            if num_k % block_k:  # ragged keys: mask the columns past M (static choice)
                kb = idx_ref[batch, head, qt, j]
                cols = plgpu.broadcasted_iota(jnp.int32, (WG_ROWS, block_k), 1, layout=plgpu.Layout.WGMMA)
                s = jnp.where(cols + kb * block_k < num_k, s, -jnp.inf)
            m_new = jnp.maximum(m_i, s.max(axis=1))
            alpha = jnp.exp2(m_i - m_new)
            p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
            l_i = l_i * alpha + p.sum(axis=1)
            p16 = p.astype(dtype)
            acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
            plgpu.barrier_arrive(schedule)  # softmax done
            plgpu.barrier_wait(v_ready.at[slot])
            plgpu.barrier_wait(schedule)  # tensor cores free

            def pv(acc_ref):
                plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                nxt = j + 1

                @pl.when(nxt < count)
                def _():
                    plgpu.barrier_wait(k_ready.at[lax.rem(nxt, jnp.int32(stages))])

            acc = pl.run_state(pv)(plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_free.at[slot])
            return acc, m_new, l_i

        acc, m_i, l_i = lax.fori_loop(0, count, step, (acc, m_i, l_i))
        pl.when(wg == 0)(schedule_sync)
        # Rows that saw no key (count 0) have l = 0 and acc = 0: output zeros, not NaN.
        acc = acc / lax.broadcast_in_dim(jnp.maximum(l_i, 1e-30), acc.shape, [0])
        qo_smem[...] = acc.astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[batch, pl.ds(row0, WG_ROWS), head])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")

        def fetch(j, slot):
            rows = (batch, pl.ds(idx_ref[batch, head, qt, j] * block_k, block_k), head)
            plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])

        for i in range(stages):  # prologue: fill the ring (short lists fill part of it)

            @pl.when(i < count)
            def _(i=i):
                fetch(i, i)

        @pl.loop(0, jnp.maximum(count - stages, 0))
        def _(j):
            slot = lax.rem(j, jnp.int32(stages))
            rows = (batch, pl.ds(idx_ref[batch, head, qt, j + stages] * block_k, block_k), head)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_ready.at[slot])
            plgpu.barrier_wait(v_free.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_ready.at[slot])


def block_sparse_attention_mosaic(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    kv_block_indices: Int[Array, "B H nqb K"],
    kv_block_counts: Int[Array, "B H nqb"],
    *,
    block_q: int = CTA_ROWS,
    block_k: int,
    sm_scale: float,
    num_stages: int = 2,
    interpret: bool = False,
) -> Float[Array, "B N H D"]:
    """The Mosaic GPU kernel on validated inputs (``block_sparse_attention`` checks them first).

    ``interpret=True`` runs Mosaic's GPU simulator on the CPU (slow: tiny shapes only).
    """
    check_mosaic_inputs(q, block_q, block_k)
    b, n, h, d = q.shape
    m = k.shape[1]
    nqb, nkb = -(-n // CTA_ROWS), -(-m // block_k)
    qp = pad_axis(q, 1, nqb * CTA_ROWS)
    kp, vp = pad_axis(k, 1, nkb * block_k), pad_axis(v, 1, nkb * block_k)
    idx = jnp.clip(kv_block_indices.astype(jnp.int32), 0, nkb - 1)
    cnt = kv_block_counts.astype(jnp.int32)
    stages = max(2, num_stages)
    tiles = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

    def entry(idx_ref, cnt_ref, q_ref, k_ref, v_ref, out_ref):
        pl.run_scoped(
            lambda *scoped: _kernel(
                idx_ref,
                cnt_ref,
                q_ref,
                k_ref,
                v_ref,
                out_ref,
                scoped,
                block_k=block_k,
                num_k=m,
                sm_scale=sm_scale,
                stages=stages,
                dtype=q.dtype,
            ),
            (
                plgpu.SMEM((2, WG_ROWS, d), q.dtype, transforms=tiles),
                plgpu.SMEM((stages, block_k, d), q.dtype, transforms=tiles),
                plgpu.SMEM((stages, block_k, d), q.dtype, transforms=tiles),
            ),
            (
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=2),
            ),
            (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=2),
            collective_axes="wg",
        )

    out = plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct(qp.shape, q.dtype),
        grid=(h, nqb, b),
        grid_names=("heads", "q_blocks", "batch"),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
    )(idx, cnt, qp, kp, vp)
    return out[:, :n]
