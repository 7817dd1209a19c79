"""HunyuanVideo's input embeddings: 3D RoPE tables, the patch embedding and the timestep/guidance/pooled-text
condition (diffusers ``HunyuanVideoRotaryPosEmbed``, ``HunyuanVideoPatchEmbed``,
``HunyuanVideoConditionEmbedding``; attribute names are the checkpoint keys).
"""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Real

from .embeddings import TimestepEmbedding
from .hunyuan_video_config import TIMESTEP_FREQ_DIM, HunyuanVideoConfig
from .layers import PatchEmbed3D

# Indices where torch's CPU float32 exp (which diffusers' ``Timesteps`` uses) rounds the 128 sinusoid
# frequencies ``exp(-ln(1e4)·i/128)`` one ulp above the correctly rounded value. Timesteps stay below 1000,
# but the embedded guidance reaches 6000-10000, where a 1-ulp frequency moves the angle by ~2e-4 rad.
_TORCH_EXP_HIGH_ULP = (12, 106)


def _sinusoid_freqs() -> np.ndarray:
    """The 128 float32 frequencies of diffusers' ``Timesteps(256, flip_sin_to_cos=True, shift=0)``,
    bit-identical to torch on CPU (exponent formed in float32 in torch's order, exp rounded as torch does)."""
    half = TIMESTEP_FREQ_DIM // 2
    exponent = np.float32(-math.log(10000.0)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    freqs.view(np.int32)[list(_TORCH_EXP_HIGH_ULP)] += 1
    return freqs


def hunyuan_sinusoid(t: Real[Array, " B"]) -> Float[Array, "B 256"]:
    """``[cos | sin]`` of ``t · freqs`` in float32 (timestep σ·1000 or guidance scale·1000)."""
    angles = t.astype(jnp.float32)[:, None] * jnp.asarray(_sinusoid_freqs())[None, :]  # [B, 128]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _axis_angles_f32(dim: int, num_pos: int, theta: float) -> np.ndarray:
    """Angles ``[num_pos, dim/2]`` in float32, in the order diffusers' ``get_1d_rotary_pos_embed`` forms them.

    HunyuanVideo keeps that function's default ``freqs_dtype=float32`` (Wan uses float64): the inverse
    frequencies and the position·frequency products are rounded to float32 as torch does.
    """
    exponent = np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponent, dtype=np.float32)).astype(np.float32)
    return np.outer(np.arange(num_pos, dtype=np.float32), inv_freq).astype(np.float32)


def hunyuan_rope(
    rope_axes_dim: tuple[int, int, int],
    grid: tuple[int, int, int],
    *,
    theta: float,
) -> tuple[Float[Array, "N D2"], Float[Array, "N D2"]]:
    """Return float32 ``(cos, sin)`` of the pair angles, ``[T·Hp·Wp, D/2]``, tokens frame-major.

    Axis ``a`` (t, h, w) owns ``rope_axes_dim[a]`` channels of the head and rotates interleaved pairs by
    ``pos_a · theta^(-2i/d_a)``; the parts are concatenated ``[t | h | w]``. These are diffusers'
    ``freqs_cos[:, 0::2]`` and ``freqs_sin[:, 1::2]`` (its tables repeat every pair value twice). Built in
    numpy at trace time: constants of the grid.
    """
    t, hp, wp = grid
    parts_cos, parts_sin = [], []
    for axis, (dim, size) in enumerate(zip(rope_axes_dim, grid, strict=True)):
        angles = _axis_angles_f32(dim, size, theta)  # [size, dim/2]
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        for parts, fn in ((parts_cos, np.cos), (parts_sin, np.sin)):
            table = fn(angles.astype(np.float64)).astype(np.float32).reshape(shape)
            parts.append(jnp.broadcast_to(jnp.asarray(table), (t, hp, wp, dim // 2)))
    n, half = t * hp * wp, sum(rope_axes_dim) // 2
    cos = jnp.concatenate(parts_cos, axis=-1).reshape(n, half)  # [N, D/2]
    sin = jnp.concatenate(parts_sin, axis=-1).reshape(n, half)  # [N, D/2]
    return cos, sin


class HunyuanVideoPatchEmbed(nnx.Module):
    """Conv3d patchify (key ``x_embedder.proj``), tokens frame-major."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        self.proj = PatchEmbed3D(
            config.in_channels,
            config.inner_dim,
            config.patch_sizes,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def __call__(self, x: Float[Array, "B C F H W"]) -> Float[Array, "B N E"]:
        return self.proj(x)


class HunyuanVideoConditionEmbedding(nnx.Module):
    """``temb = timestep_embedder(sin(t)) + guidance_embedder(sin(g)) + text_embedder(pooled)``.

    Each embedder is ``linear_2(silu(linear_1(x)))``: diffusers' ``TimestepEmbedding`` and, for the pooled
    CLIP projection, ``PixArtAlphaTextProjection(act_fn="silu")`` (the same math). The sinusoid is computed
    in float32 and cast to the compute dtype, as diffusers casts it to the pooled projection's dtype.
    """

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_FREQ_DIM, dim, **kw)
        self.text_embedder = TimestepEmbedding(config.pooled_projection_dim, dim, **kw)
        self.guidance_embedder = (
            TimestepEmbedding(TIMESTEP_FREQ_DIM, dim, **kw) if config.guidance_embeds else None
        )

    def __call__(
        self,
        timestep: Real[Array, " B"],
        pooled_projections: Float[Array, "B Cp"],
        guidance: Real[Array, " B"] | None,
    ) -> Float[Array, "B E"]:
        temb = self.timestep_embedder(hunyuan_sinusoid(timestep).astype(self.dtype))
        pooled = self.text_embedder(pooled_projections.astype(self.dtype))
        if self.guidance_embedder is None:
            return temb + pooled
        assert guidance is not None
        guidance_emb = self.guidance_embedder(hunyuan_sinusoid(guidance).astype(self.dtype))
        return temb + guidance_emb + pooled  # diffusers' summation order
