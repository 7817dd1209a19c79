"""Timestep and text embeddings shared by the video DiTs (diffusers ``embeddings.py`` equivalents)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Real


def timestep_sinusoid(
    timesteps: Real[Array, " B"],
    dim: int,
    *,
    max_period: float = 10000.0,
) -> Float[Array, "B {dim}"]:
    """``[cos | sin]`` of ``t · exp(-ln(max_period) · i / (dim/2))`` in float32.

    diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``. The exponent is formed in
    float32 in torch's order (bit-identical); the exp is evaluated in float64 and rounded, which matches
    torch's float32 exp on all but 2 of Wan's 128 frequencies (XLA's float32 exp differs on 17). A 1-ulp
    frequency difference moves the angle by up to ``t·2⁻²⁴`` (6e-5 rad at t=1000).
    """
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even; got {dim=}")
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))  # [dim/2], a constant
    angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, dim/2]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedding(nnx.Module):
    """``linear_2(silu(linear_1(x)))`` (diffusers ``TimestepEmbedding`` with default arguments)."""

    def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        self.linear_1 = nnx.Linear(in_dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.linear_2 = nnx.Linear(dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: Float[Array, "*batch Ei"]) -> Float[Array, "*batch E"]:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextProjection(nnx.Module):
    """``linear_2(gelu_tanh(linear_1(x)))``: diffusers ``PixArtAlphaTextProjection(act_fn="gelu_tanh")``."""

    def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        self.linear_1 = nnx.Linear(in_dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.linear_2 = nnx.Linear(dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: Float[Array, "*batch Ei"]) -> Float[Array, "*batch E"]:
        return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=True))
