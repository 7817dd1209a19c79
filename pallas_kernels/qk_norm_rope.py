"""Fused QK-norm + RoPE (Wan style): RMSNorm over the full inner dim, head split, interleaved RoPE.

Wan 2.1 (diffusers ``WanAttention``) normalises q and k with ``RMSNorm(inner_dim = H·D)`` *before* the
head split, then rotates each head's interleaved pairs ``(x[2i], x[2i+1])`` by per-token angles
(cos/sin tables ``[N, D/2]``; the 3D t/h/w frequency split lives in the tables). Unfused this reads and
writes q and k several times; the kernel reads each ``[block_rows, H·D]`` slab twice (sum of squares,
then normalise + rotate, the second read mostly from L2) and writes it once.

Numerics (both implementations): the RMSNorm is computed in f32, ``x·rsqrt(mean(x²) + eps)·w``, and
rounded to the input dtype (the torch module's output dtype); RoPE then runs in f32 with the f32
tables and is rounded again, as diffusers' ``apply_rotary_emb`` does. Tokens that take no RoPE (text in
HunyuanVideo/CogVideoX) can be given identity rows (cos 1, sin 0).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float

from . import checks
from .common import pad_axis, resolve_implementation


@dataclasses.dataclass(frozen=True, kw_only=True)
class QKNormRopeConfig:
    """Launch knobs of the Triton kernel; they change speed, never the result."""

    block_rows: int = 32
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        rows = self.block_rows
        if not isinstance(rows, int) or rows < 1 or rows & (rows - 1):
            raise ValueError(f"{self.block_rows=} must be a power of two")
        checks.check_triton_launch(self.num_warps, self.num_stages)


def _rms_norm(x, w, eps: float):
    """f32 RMSNorm over the last axis, rounded to the input dtype."""
    xf = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf * inv * w.astype(jnp.float32)).astype(x.dtype)


def _rope_pairs(y0, y1, cos, sin):
    """Rotate interleaved pairs ``(y0, y1)`` by the angle with ``cos``/``sin`` (all f32)."""
    return y0 * cos - y1 * sin, y0 * sin + y1 * cos


def qk_norm_rope_reference(
    q: Float[Array, "B N E"],
    k: Float[Array, "B N E"],
    q_weight: Float[Array, " E"],
    k_weight: Float[Array, " E"],
    cos: Float[Array, "N D2"],
    sin: Float[Array, "N D2"],
    *,
    num_heads: int,
    eps: float = 1e-6,
) -> tuple[Float[Array, "B N H D"], Float[Array, "B N H D"]]:
    """Oracle (and the unfused XLA path): RMSNorm over ``E``, split ``E = H·D``, interleaved RoPE."""
    cos = cos.astype(jnp.float32)[None, :, None, :]  # [1, N, 1, D/2]
    sin = sin.astype(jnp.float32)[None, :, None, :]  # [1, N, 1, D/2]

    def one(x, w):
        b, n, e = x.shape
        y = _rms_norm(x, w, eps).astype(jnp.float32)
        y = y.reshape(b, n, num_heads, e // num_heads // 2, 2)  # [B, N, H, D/2, 2]
        o0, o1 = _rope_pairs(y[..., 0], y[..., 1], cos, sin)
        out = jnp.stack([o0, o1], axis=-1).reshape(b, n, num_heads, e // num_heads)  # [B, N, H, D]
        return out.astype(x.dtype)

    return one(q, q_weight), one(k, k_weight)


def _norm_rope_rows(x_ref, w_ref, o_ref, cos, sin, *, num_heads: int, head_dim: int, eps: float):
    """Normalise one ``[bn, H·D]`` slab over its full width, then rotate each head's pairs."""
    block_rows = x_ref.shape[0]

    def head_slice(h):
        return pl.ds(pl.multiple_of(h * head_dim, head_dim), head_dim)

    def sum_sq(h, acc):
        x = x_ref[:, head_slice(h)].astype(jnp.float32)  # [bn, D]
        return acc + jnp.sum(x * x, axis=-1)

    ss = jax.lax.fori_loop(0, num_heads, sum_sq, jnp.zeros((block_rows,), jnp.float32))
    inv = jax.lax.rsqrt(ss / (num_heads * head_dim) + eps)[:, None]  # [bn, 1]

    def rotate(h, carry):
        sl = head_slice(h)
        x = x_ref[:, sl].astype(jnp.float32)  # [bn, D]
        w = w_ref[sl].astype(jnp.float32)  # [D]
        y = (x * inv * w[None, :]).astype(o_ref.dtype).astype(jnp.float32)
        y0, y1 = jnp.unstack(y.reshape(block_rows, head_dim // 2, 2), axis=-1)  # [bn, D/2] each
        o0, o1 = _rope_pairs(y0, y1, cos, sin)
        o_ref[:, sl] = jnp.stack([o0, o1], axis=-1).reshape(block_rows, head_dim).astype(o_ref.dtype)
        return carry

    jax.lax.fori_loop(0, num_heads, rotate, 0)


def _kernel(
    q_ref,
    k_ref,
    wq_ref,
    wk_ref,
    cos_ref,
    sin_ref,
    oq_ref,
    ok_ref,
    *,
    num_heads: int,
    head_dim: int,
    eps: float,
):
    cos = cos_ref[...].astype(jnp.float32)  # [bn, D/2]
    sin = sin_ref[...].astype(jnp.float32)  # [bn, D/2]
    for x_ref, w_ref, o_ref in ((q_ref, wq_ref, oq_ref), (k_ref, wk_ref, ok_ref)):
        _norm_rope_rows(x_ref, w_ref, o_ref, cos, sin, num_heads=num_heads, head_dim=head_dim, eps=eps)


def _call(
    q,
    k,
    wq,
    wk,
    cos,
    sin,
    *,
    num_heads: int,
    eps: float,
    block_rows: int,
    config: QKNormRopeConfig,
    interpret: bool,
):
    """Launch on q/k ``[B, Np, E]`` with ``Np`` a multiple of ``block_rows``; tables ``[Np, D/2]``."""
    b, n_pad, e = q.shape
    half = cos.shape[1]
    x_spec = pl.BlockSpec((None, block_rows, e), lambda i, bi: (bi, i, 0))
    w_spec = pl.BlockSpec((e,), lambda i, bi: (0,))
    t_spec = pl.BlockSpec((block_rows, half), lambda i, bi: (i, 0))
    kernel = functools.partial(_kernel, num_heads=num_heads, head_dim=e // num_heads, eps=eps)
    return pl.pallas_call(
        kernel,
        grid=(n_pad // block_rows, b),
        in_specs=[x_spec, x_spec, w_spec, w_spec, t_spec, t_spec],
        out_specs=[x_spec, x_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype)],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="qk_norm_rope",
    )(q, k, wq, wk, cos, sin)


def _check(q, k, q_weight, k_weight, cos, sin, num_heads: int) -> None:
    if q.ndim != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must both have shape [B, N, E]; got {q.shape=}, {k.shape=}")
    if q.dtype != k.dtype or q.dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"q and k must share a float dtype (f32, bf16, f16); got {q.dtype}, {k.dtype}")
    b, n, e = q.shape
    if not isinstance(num_heads, int) or num_heads < 1 or e % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of E={e}; got {num_heads!r}")
    d = e // num_heads
    if d % 2:
        raise ValueError(f"head dim E/num_heads must be even for RoPE pairs; got {d}")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (e,):
            raise ValueError(f"{name} must have shape ({e},) (the full inner dim); got {w.shape}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape != (n, d // 2):
            raise ValueError(f"{name} must have shape [N, D/2] = ({n}, {d // 2}); got {t.shape}")


def qk_norm_rope(
    q: Float[Array, "B N E"],
    k: Float[Array, "B N E"],
    q_weight: Float[Array, " E"],
    k_weight: Float[Array, " E"],
    cos: Float[Array, "N D2"],
    sin: Float[Array, "N D2"],
    *,
    num_heads: int,
    eps: float = 1e-6,
    implementation: str = "auto",
    interpret: bool | None = None,
    config: QKNormRopeConfig | None = None,
) -> tuple[Float[Array, "B N H D"], Float[Array, "B N H D"]]:
    """Wan-style QK-norm + RoPE on projected q, k ``[B, N, E]``; returns heads ``[B, N, H, D]``.

    ``q_weight``/``k_weight`` are the RMSNorm scales over ``E = H·D``; ``cos``/``sin`` are the per-token,
    per-pair angle tables (pair ``i`` = elements ``2i, 2i+1`` of each head). ``implementation``:
    ``"xla"`` (the reference), ``"pallas_triton"`` or ``"auto"`` (Triton on GPU, XLA on CPU).
    """
    _check(q, k, q_weight, k_weight, cos, sin, num_heads)
    impl = resolve_implementation(implementation)
    if impl == "xla":
        return qk_norm_rope_reference(q, k, q_weight, k_weight, cos, sin, num_heads=num_heads, eps=eps)

    b, n, e = q.shape
    d = e // num_heads
    if d < 2 or d & (d - 1):
        raise NotImplementedError(f"the Triton kernel needs a power-of-two head dim; got {d} (use 'xla')")
    interpret = (jax.default_backend() != "gpu") if interpret is None else interpret
    config = config or QKNormRopeConfig()
    block_rows = config.block_rows
    n_pad = -(-n // block_rows) * block_rows  # ragged N costs one padding copy
    cos32, sin32 = (pad_axis(t.astype(jnp.float32), 0, n_pad) for t in (cos, sin))
    oq, ok = _call(
        pad_axis(q, 1, n_pad),
        pad_axis(k, 1, n_pad),
        q_weight,
        k_weight,
        cos32,
        sin32,
        num_heads=num_heads,
        eps=float(eps),
        block_rows=block_rows,
        config=config,
        interpret=interpret,
    )
    oq = oq[:, :n].reshape(b, n, num_heads, d)  # [B, N, H, D]
    ok = ok[:, :n].reshape(b, n, num_heads, d)  # [B, N, H, D]
    return oq, ok
