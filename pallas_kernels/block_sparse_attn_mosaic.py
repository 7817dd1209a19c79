"""Fixed-block sparse attention for Hopper: Pallas lowered through Mosaic GPU (wgmma, TMA, warp-specialised).

Same contract as :func:`block_sparse_attention` (``implementation="pallas_mosaic"``): query block ``i``
(128 rows) of ``(b, h)`` attends to the key blocks ``kv_block_indices[b, h, i, :kv_block_counts[b, h, i]]``.
The CTA structure (producer warpgroup + two ping-ponged compute warpgroups) is :mod:`.mosaic_flash`; this
module says which key tiles a CTA walks. Ragged lengths: queries are padded to 128 rows and keys to
``block_k``; when ``M`` is not a multiple of ``block_k`` the key columns past ``M`` are masked in every
tile (a static choice, one compare per element). With ``key_padding`` (a per-batch key range every query
ignores) the tiles that cross that range or ``M`` are masked instead, behind a branch.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float, Int

from .common import pad_axis
from .mosaic_flash import (
    CTA_ROWS,
    TileMask,
    check_mosaic_inputs,
    mosaic_supports,
    sparse_flash_mosaic,
)

__all__ = ["block_sparse_attention_mosaic", "check_mosaic_inputs", "mosaic_supports"]


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
    tiles_per_step: int = 1,
    num_programs: int | None = None,
    order: str = "head_lpt",
    key_padding: Int[Array, "B 2"] | None = None,
    overlap: bool | None = None,
    fold_scale: bool = False,
    interpret: bool = False,
) -> Float[Array, "B N H D"]:
    """The Mosaic GPU kernel on validated inputs (``block_sparse_attention`` checks them first).

    ``overlap`` and ``fold_scale``: the engine's intra-warpgroup pipelining and where it applies the softmax
    scale (:func:`.mosaic_flash.sparse_flash_mosaic`).

    ``interpret=True`` runs Mosaic's GPU simulator on the CPU (slow: tiny shapes only).
    """
    check_mosaic_inputs(q, block_q, block_k)
    n, m = q.shape[1], k.shape[1]
    nqb, nkb = -(-n // CTA_ROWS), -(-m // block_k)
    qp = pad_axis(q, 1, nqb * CTA_ROWS)
    kp, vp = pad_axis(k, 1, nkb * block_k), pad_axis(v, 1, nkb * block_k)
    idx = jnp.clip(kv_block_indices.astype(jnp.int32), 0, nkb - 1)
    cnt = kv_block_counts.astype(jnp.int32)

    def key_row(tables, at, j):
        return tables[0][(*at, j)] * block_k

    def mask_of(tables, at, row0):  # columns past M; with key_padding also the batch element's padding keys
        def cols(first, s):
            return first + plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)

        if key_padding is None:  # every tile (static): one compare per element

            def apply(first, second, s):
                return jnp.where(cols(first, s) < m, s, -jnp.inf)

        else:  # only the tiles that cross the padding range or M
            lo, hi = tables[1][at[0], 0], tables[1][at[0], 1]

            def apply(first, second, s):
                def mask(_, s):
                    c = cols(first, s)
                    return jnp.where((c < m) & ((c < lo) | (c >= hi)), s, -jnp.inf)

                crosses = (first + block_k > m) | ((first + block_k > lo) & (first < hi))
                return lax.fori_loop(0, crosses.astype(jnp.int32), mask, s)  # 0 or 1 trips

        last = idx.shape[-1] - 1
        return TileMask(lambda j: key_row(tables, at, jnp.minimum(j, last)), lambda j, first: (), apply)

    tables = (idx,) if key_padding is None else (idx, key_padding.astype(jnp.int32))
    out = sparse_flash_mosaic(
        tables,
        qp,
        kp,
        vp,
        counts=jnp.clip(cnt, 0, idx.shape[-1]),
        key_row=key_row,
        make_mask=mask_of if key_padding is not None or m % block_k else None,
        block_k=block_k,
        sm_scale=sm_scale,
        num_stages=num_stages,
        tiles_per_step=tiles_per_step,
        num_programs=num_programs,
        order=order,
        overlap=overlap,
        fold_scale=fold_scale,
        interpret=interpret,
    )
    return out[:, :n]
