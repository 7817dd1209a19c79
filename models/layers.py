"""Shared NNX layers whose attribute names mirror diffusers' checkpoint keys.

Norms compute in float32 whatever the input dtype and cast the result back (diffusers' ``FP32LayerNorm``
and torch's fused ``RMSNorm``); their learned gain is called ``scale`` (checkpoint key ``weight``).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x²) + eps) · scale`` over the last axis, computed in float32 (torch.nn.RMSNorm)."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs, param_dtype: DTypeLike = jnp.float32):
        del rngs  # initialised to ones, like torch
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch E"]:
        xf = x.astype(jnp.float32)
        ms = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
        out = xf * jax.lax.rsqrt(ms + self.eps) * self.scale[...].astype(jnp.float32)
        return out.astype(x.dtype)


class LayerNorm(nnx.Module):
    """Biased-variance LayerNorm over the last axis in float32 (diffusers ``FP32LayerNorm``).

    ``affine=False`` has no parameters (diffusers' ``norm1``/``norm3``/``norm_out``).
    """

    def __init__(
        self, dim: int, *, eps: float, affine: bool, rngs: nnx.Rngs, param_dtype: DTypeLike = jnp.float32
    ):
        del rngs  # initialised to ones/zeros, like torch
        self.eps = eps
        self.affine = affine
        if affine:
            self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
            self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch E"]:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        out = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return out.astype(x.dtype)


class GELU(nnx.Module):
    """``gelu(proj(x))``: diffusers' ``GELU`` activation module, whose projection is ``net.0.proj``."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        *,
        approximate: bool,
        rngs: nnx.Rngs,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
    ):
        self.approximate = approximate
        self.proj = nnx.Linear(dim_in, dim_out, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch F"]:
        return jax.nn.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nnx.Module):
    """diffusers ``FeedForward``: ``net.0`` (GELU with ``proj``), ``net.1`` (dropout), ``net.2`` (Linear).

    ``approximate=True`` is ``activation_fn="gelu-approximate"`` (tanh), ``False`` is exact ``"gelu"``.
    """

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        dim_out: int,
        *,
        approximate: bool,
        rngs: nnx.Rngs,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
    ):
        self.net = nnx.List(
            [
                GELU(
                    dim, inner_dim, approximate=approximate, rngs=rngs, dtype=dtype, param_dtype=param_dtype
                ),
                nnx.Dropout(0.0),  # index 1 holds no weights; kept so that indices match the checkpoint keys
                nnx.Linear(inner_dim, dim_out, rngs=rngs, dtype=dtype, param_dtype=param_dtype),
            ]
        )

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch Eo"]:
        return self.net[2](self.net[0](x))


class PatchEmbed3D(nnx.Module):
    """Conv3d with ``kernel_size == stride == patch`` as patchify + matmul (diffusers ``patch_embedding``).

    ``kernel`` is ``[pt, ph, pw, C, E]``: torch's Conv3d weight ``[E, C, pt, ph, pw]`` permuted by
    ``(2, 3, 4, 1, 0)``. Tokens come out frame-major, as ``conv(x).flatten(2).transpose(1, 2)`` does.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch_size: tuple[int, int, int],
        *,
        rngs: nnx.Rngs,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
    ):
        self.patch_size = tuple(patch_size)
        self.dtype = dtype
        fan_in = in_channels * int(np.prod(patch_size))
        shape = (*self.patch_size, in_channels, dim)
        self.kernel = nnx.Param(
            (jax.random.normal(rngs.params(), shape) / np.sqrt(fan_in)).astype(param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: Float[Array, "B C F H W"]) -> Float[Array, "B N E"]:
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch_size
        x = x.astype(self.dtype).reshape(
            b, c, f // pt, pt, h // ph, ph, w // pw, pw
        )  # [B,C,T,pt,Hp,ph,Wp,pw]
        x = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)  # [B, T, Hp, Wp, pt, ph, pw, C]
        x = x.reshape(b, -1, pt * ph * pw * c)  # [B, N, pt·ph·pw·C]
        kernel = self.kernel[...].astype(self.dtype).reshape(pt * ph * pw * c, -1)  # [pt·ph·pw·C, E]
        return x @ kernel + self.bias[...].astype(self.dtype)
