"""Fixed-block sparse attention (SVG1's spatial/temporal bands): Pallas kernel lowered through Triton.

Query block ``i`` of ``(b, h)`` attends, with an exact online softmax, to the key blocks
``kv_block_indices[b, h, i, :kv_block_counts[b, h, i]]``. One Pallas program handles one
``(query block, batch, head)``; it keeps its ``[block_q, D]`` query tile in registers and walks its key
block list with a data-dependent ``fori_loop`` (the whole K/V sequence of the head is a pointer in Triton,
so only the listed blocks are ever loaded).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int

from . import checks
from .block_sparse_attn_mosaic import block_sparse_attention_mosaic
from .common import (
    TritonConfig,
    default_triton_config,
    dot_precision,
    pad_axis,
    padded_head_dim,
    resolve_implementation,
)
from .mosaic_flash import mosaic_supports
from .reference import block_sparse_attention_reference

LOG2E = math.log2(math.e)


def online_softmax_step(carry, s, v, *, masked: bool):
    """One flash-attention update with base-2 logits ``s`` (``[bq, bk]`` f32) and values ``v``.

    With ``masked=True`` entries of ``s`` may be ``-inf`` and whole rows may be masked; the running max
    is then kept finite for the exponentials so that no NaN appears.
    """
    acc, m, row_sum = carry
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    alpha = jnp.exp2(m - m_use)
    p = jnp.exp2(s - m_use[:, None])
    row_sum = row_sum * alpha + jnp.sum(p, axis=-1)
    pv = jax.lax.dot_general(
        p.astype(v.dtype),
        v,
        (((1,), (0,)), ((), ())),
        precision=dot_precision(v.dtype),
        preferred_element_type=jnp.float32,
    )
    return acc * alpha[:, None] + pv, m_new, row_sum


def finish_softmax(acc, row_sum):
    """Normalise the accumulator; rows that saw no key (row_sum == 0) give zeros, not NaN."""
    return acc / jnp.where(row_sum == 0.0, 1.0, row_sum)[:, None]


def qk_logits(q, k, scale_log2: float):
    """``q @ k.T`` in float32, pre-scaled for ``exp2``."""
    s = jax.lax.dot_general(
        q,
        k,
        (((1,), (1,)), ((), ())),
        precision=dot_precision(q.dtype),
        preferred_element_type=jnp.float32,
    )
    return s * scale_log2


def load_kv_block(idx_ref, k_ref, v_ref, j, *, block_k: int, num_kv_blocks: int):
    """Key/value block ``idx_ref[j]`` (clamped into range, so never out of bounds) and its first row."""
    kb = jnp.clip(idx_ref[j], 0, num_kv_blocks - 1)
    start = pl.multiple_of(kb * block_k, block_k)
    return k_ref[pl.ds(start, block_k), :], v_ref[pl.ds(start, block_k), :], start  # [bk, D] x2


def flash_loop(count, body, *, block_q: int, head_dim: int):
    """Run ``body(j, carry)`` (an online-softmax step) for ``j < count`` and return the normalised output."""
    carry = (
        jnp.zeros((block_q, head_dim), jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, _, row_sum = jax.lax.fori_loop(0, count, body, carry)
    return finish_softmax(acc, row_sum)


def _kernel(
    idx_ref,
    cnt_ref,
    pad_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    *,
    scale_log2: float,
    block_k: int,
    num_k: int,
    num_kv_blocks: int,
    max_kv_blocks: int,
):
    block_q, head_dim = q_ref.shape
    q = q_ref[...]  # [bq, D]
    count = jnp.clip(cnt_ref[0], 0, max_kv_blocks)
    mask_tail = num_k % block_k != 0
    padded = pad_ref is not None

    def body(j, carry):
        k, v, start = load_kv_block(idx_ref, k_ref, v_ref, j, block_k=block_k, num_kv_blocks=num_kv_blocks)
        s = qk_logits(q, k, scale_log2)  # [bq, bk]
        if mask_tail or padded:
            cols = start + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
            keep = cols < num_k
            if padded:  # the batch element's padding keys: a whole tile, so whole rows, may be masked
                keep &= (cols < pad_ref[0]) | (cols >= pad_ref[1])
            s = jnp.where(keep, s, -jnp.inf)
        return online_softmax_step(carry, s, v, masked=padded)

    o_ref[...] = flash_loop(count, body, block_q=block_q, head_dim=head_dim).astype(o_ref.dtype)


def _call(
    q,
    k,
    v,
    kv_block_indices,
    kv_block_counts,
    *,
    block_q: int,
    block_k: int,
    sm_scale: float,
    num_k: int,
    config: TritonConfig,
    interpret: bool,
    key_padding=None,
):
    """Launch on padded operands: q ``[B, nqb·bq, H, Dp]``, k/v ``[B, nkb·bk, H, Dp]``; ``key_padding``
    int32 ``[B, 2]`` or None."""
    b, nq_pad, h, d = q.shape
    nk_pad = k.shape[1]
    nqb, max_kv = kv_block_indices.shape[2], kv_block_indices.shape[3]
    kernel = functools.partial(
        _kernel,
        scale_log2=sm_scale * LOG2E,
        block_k=block_k,
        num_k=num_k,
        num_kv_blocks=nk_pad // block_k,
        max_kv_blocks=max_kv,
    )
    pads = [] if key_padding is None else [key_padding.astype(jnp.int32)]
    pad_spec = [pl.BlockSpec((None, 2), lambda i, bi, hi: (bi, 0))] * len(pads)
    if key_padding is None:  # no key_padding input: the kernel gets None in its place
        with_pad = kernel
        kernel = lambda idx, cnt, *refs: with_pad(idx, cnt, None, *refs)  # noqa: E731
    return pl.pallas_call(
        kernel,
        grid=(nqb, b, h),
        in_specs=[
            pl.BlockSpec((None, None, None, max_kv), lambda i, bi, hi: (bi, hi, i, 0)),
            pl.BlockSpec((None, None, None, 1), lambda i, bi, hi: (bi, hi, i, 0)),
            *pad_spec,
            pl.BlockSpec((None, block_q, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
            pl.BlockSpec((None, nk_pad, None, d), lambda i, bi, hi: (bi, 0, hi, 0)),
            pl.BlockSpec((None, nk_pad, None, d), lambda i, bi, hi: (bi, 0, hi, 0)),
        ],
        out_specs=pl.BlockSpec((None, block_q, None, d), lambda i, bi, hi: (bi, i, hi, 0)),
        out_shape=jax.ShapeDtypeStruct((b, nq_pad, h, d), q.dtype),
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="block_sparse_attention",
    )(kv_block_indices, kv_block_counts[..., None], *pads, q, k, v)


def block_sparse_attention(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    kv_block_indices: Int[Array, "B H nqb K"],
    kv_block_counts: Int[Array, "B H nqb"],
    *,
    block_q: int,
    block_k: int,
    sm_scale: float | None = None,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: TritonConfig | None = None,
    key_padding: Int[Array, "B 2"] | None = None,
) -> Float[Array, "B N H D"]:
    """Attention where query block ``i`` sees exactly the key blocks ``kv_block_indices[b, h, i, :count]``.

    Layout ``[B, N, H, D]`` as in ``jax.nn.dot_product_attention``; ``sm_scale`` defaults to ``D**-0.5``.
    ``N`` and ``M`` need not be multiples of the blocks: inputs are zero-padded, padded keys are masked and
    padded query rows dropped. A query block whose count is 0 outputs zeros. Entries past a row's count
    are ignored; indices are clamped into range inside the kernel, so it never reads out of bounds (eager
    calls also raise on out-of-range values; under ``jit`` they cannot be checked).

    ``implementation``: ``"xla"`` (the dense-masked oracle), ``"pallas_triton"`` (Pallas lowered through
    Triton; runs on CPU with ``interpret=True``), ``"pallas_mosaic"`` (Hopper: Mosaic GPU, wgmma + TMA,
    ``block_q=128``, ``block_k`` 64/128, bf16/f16, D a multiple of 64; see ``block_sparse_attn_mosaic``)
    or ``"auto"`` (Mosaic on Hopper when the inputs qualify, else Triton on GPU; XLA on CPU).
    ``interpret`` defaults to True off-GPU. ``config`` tunes the Triton launch (never the result).

    ``key_padding`` (int ``[B, 2]``, optional): per batch element a key range ``[start, end)`` that every
    query ignores, element by element inside the listed blocks (e.g. HunyuanVideo's padded text slots);
    a row left with no key outputs zeros. ``start == end`` masks nothing.
    """
    checks.check_qkv(q, k, v)
    checks.check_block_size("block_q", block_q)
    checks.check_block_size("block_k", block_k)
    b, n, h, d = q.shape
    m = k.shape[1]
    nqb, nkb = -(-n // block_q), -(-m // block_k)
    if kv_block_indices.ndim != 4:
        raise ValueError(
            f"kv_block_indices must have rank 4 [B, H, nqb, max_kv_blocks]; "
            f"got shape {kv_block_indices.shape}"
        )
    checks.check_int_array("kv_block_indices", kv_block_indices, (b, h, nqb, kv_block_indices.shape[3]))
    checks.check_int_array("kv_block_counts", kv_block_counts, (b, h, nqb))
    max_kv = kv_block_indices.shape[3]
    if max_kv < 1:
        raise ValueError(f"kv_block_indices needs max_kv_blocks >= 1; got shape {kv_block_indices.shape}")
    checks.check_value_range(
        "kv_block_counts",
        kv_block_counts,
        0,
        max_kv + 1,
        "counts cannot exceed max_kv_blocks = kv_block_indices.shape[-1]",
    )
    if checks.is_concrete(kv_block_indices, kv_block_counts):
        used = jnp.arange(max_kv) < kv_block_counts[..., None]
        checks.check_value_range(
            "kv_block_indices",
            jnp.where(used, kv_block_indices, 0),
            0,
            nkb,
            f"key blocks of size {block_k} over M={m} keys",
        )
    if key_padding is not None:
        checks.check_key_padding(key_padding, b, m)
    sm_scale = checks.default_sm_scale(q) if sm_scale is None else float(sm_scale)

    impl = resolve_implementation(implementation, mosaic_ok=mosaic_supports(q, block_q, block_k))
    if impl == "xla":
        blocks = dict(block_q=block_q, block_k=block_k, sm_scale=sm_scale, key_padding=key_padding)
        return block_sparse_attention_reference(q, k, v, kv_block_indices, kv_block_counts, **blocks)
    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    if impl == "pallas_mosaic":
        return block_sparse_attention_mosaic(
            q,
            k,
            v,
            kv_block_indices,
            kv_block_counts,
            block_q=block_q,
            block_k=block_k,
            sm_scale=sm_scale,
            key_padding=key_padding,
            interpret=interpret,
        )
    dp = padded_head_dim(d)
    qp = pad_axis(pad_axis(q, 1, nqb * block_q), 3, dp)
    kp = pad_axis(pad_axis(k, 1, nkb * block_k), 3, dp)
    vp = pad_axis(pad_axis(v, 1, nkb * block_k), 3, dp)
    config = config or default_triton_config(block_q, dp)
    out = _call(
        qp,
        kp,
        vp,
        kv_block_indices.astype(jnp.int32),
        kv_block_counts.astype(jnp.int32),
        block_q=block_q,
        block_k=block_k,
        sm_scale=sm_scale,
        num_k=m,
        config=config,
        interpret=interpret,
        key_padding=key_padding,
    )
    return out[:, :n, :, :d]
