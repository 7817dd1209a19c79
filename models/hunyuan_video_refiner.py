"""HunyuanVideo's token refiner (key ``context_embedder``): text embeddings → model width.

Mirrors diffusers ``HunyuanVideoTokenRefiner`` / ``HunyuanVideoIndividualTokenRefiner(Block)``. Its
self-attention is a plain masked attention inside the model (never injected): the text is short.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Bool, Float, Real

from .embeddings import TimestepEmbedding
from .hunyuan_video_config import EPS, TIMESTEP_FREQ_DIM, HunyuanVideoConfig
from .hunyuan_video_embeddings import hunyuan_sinusoid
from .layers import LayerNorm
from .stack import stacked_blocks


class SiluProjection(nnx.Module):
    """``silu(proj(x))``: diffusers' ``LinearActivation(activation="silu")``, FeedForward's ``net.0``."""

    def __init__(
        self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        self.proj = nnx.Linear(dim_in, dim_out, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch F"]:
        return jax.nn.silu(self.proj(x))


class SiluFeedForward(nnx.Module):
    """diffusers ``FeedForward(activation_fn="linear-silu")``: ``net.2(silu(net.0.proj(x)))``."""

    def __init__(self, dim: int, inner_dim: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.net = nnx.List(
            [
                SiluProjection(dim, inner_dim, **kw),
                nnx.Dropout(0.0),  # index 1 holds no weights; kept so that indices match the checkpoint keys
                nnx.Linear(inner_dim, dim, **kw),
            ]
        )

    def __call__(self, x: Float[Array, "*batch E"]) -> Float[Array, "*batch E"]:
        return self.net[2](self.net[0](x))


class RefinerAttention(nnx.Module):
    """Biased q/k/v/out projections with no qk-norm (diffusers ``Attention(bias=True)``)."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim, self.heads = config.inner_dim, config.num_attention_heads

        def linear() -> nnx.Linear:
            return nnx.Linear(dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.to_q, self.to_k, self.to_v = linear(), linear(), linear()
        self.to_out = nnx.List([linear()])  # key "to_out.0"; diffusers' to_out.1 is a weightless dropout

    def __call__(self, x: Float[Array, "B L E"], mask: Bool[Array, "B 1 L L"]) -> Float[Array, "B L E"]:
        b, n, e = x.shape

        def heads(y: Array) -> Array:
            return y.reshape(b, n, self.heads, e // self.heads)  # [B, L, H, D]

        out = jax.nn.dot_product_attention(
            heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)), mask=mask
        )
        return self.to_out[0](out.astype(x.dtype).reshape(b, n, e))  # [B, L, E] → to_out.0


class HunyuanVideoIndividualTokenRefinerBlock(nnx.Module):
    """Pre-norm attention and SiLU MLP, each gated by ``norm_out.linear(silu(temb))`` (no shift/scale)."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        # fp32 islands: the affine LayerNorms keep float32 parameters and compute in float32.
        self.norm1 = LayerNorm(dim, eps=EPS, affine=True, rngs=rngs)
        self.attn = RefinerAttention(config, **kw)
        self.norm2 = LayerNorm(dim, eps=EPS, affine=True, rngs=rngs)
        self.ff = SiluFeedForward(dim, config.mlp_dim, **kw)
        self.norm_out = _AdaNorm(dim, 2, **kw)

    def __call__(
        self, x: Float[Array, "B L E"], temb: Float[Array, "B E"], mask: Bool[Array, "B 1 L L"]
    ) -> Float[Array, "B L E"]:
        f32, dtype = jnp.float32, x.dtype
        gate_msa, gate_mlp = self.norm_out(temb)  # [B, 1, E] each, float32
        x = (x.astype(f32) + self.attn(self.norm1(x), mask).astype(f32) * gate_msa).astype(dtype)
        return (x.astype(f32) + self.ff(self.norm2(x)).astype(f32) * gate_mlp).astype(dtype)


class _AdaNorm(nnx.Module):
    """``linear(silu(temb))`` split into ``chunks`` float32 ``[B, 1, E]`` modulation vectors."""

    def __init__(self, dim: int, chunks: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        self.chunks = chunks
        self.linear = nnx.Linear(dim, chunks * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, temb: Float[Array, "B E"]) -> tuple[Float[Array, "B 1 E"], ...]:
        mod = self.linear(jax.nn.silu(temb)).astype(jnp.float32)  # [B, chunks·E]
        return tuple(m[:, None, :] for m in jnp.split(mod, self.chunks, axis=-1))


class HunyuanVideoIndividualTokenRefiner(nnx.Module):
    """The stacked refiner blocks (key ``token_refiner.refiner_blocks``), run under ``lax.scan``."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        self.refiner_blocks = stacked_blocks(  # every leaf: [num_refiner_layers, ...]
            lambda r: HunyuanVideoIndividualTokenRefinerBlock(
                config, rngs=r, dtype=dtype, param_dtype=param_dtype
            ),
            config.num_refiner_layers,
            rngs,
        )

    def __call__(
        self, x: Float[Array, "B L E"], temb: Float[Array, "B E"], text_mask: Bool[Array, "B L"]
    ) -> Float[Array, "B L E"]:
        # Query i may see key j iff both are valid; key 0 is always visible so that no row is empty.
        mask = text_mask[:, None, :, None] & text_mask[:, None, None, :]  # [B, 1, L, L]
        mask = mask.at[:, :, :, 0].set(True)
        graphdef, params = nnx.split(self.refiner_blocks)

        def body(carry, block_params):
            return nnx.merge(graphdef, block_params)(carry, temb, mask), None

        x, _ = jax.lax.scan(body, x, params)
        return x


class HunyuanVideoTokenRefiner(nnx.Module):
    """``proj_in`` then the refiner blocks, conditioned on ``t`` and the masked mean of the raw text.

    The condition is the refiner's own ``time_text_embed`` (timestep + pooled text, no guidance).
    """

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.time_text_embed = _RefinerCondition(config, **kw)
        self.proj_in = nnx.Linear(config.text_embed_dim, dim, **kw)
        self.token_refiner = HunyuanVideoIndividualTokenRefiner(config, **kw)

    def __call__(
        self, text: Float[Array, "B L Ct"], timestep: Real[Array, " B"], text_mask: Bool[Array, "B L"]
    ) -> Float[Array, "B L E"]:
        text = text.astype(self.dtype)
        # Masked mean in float32 (torch promotes text · mask_float to float32), cast back.
        weights = text_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
        pooled = ((text.astype(jnp.float32) * weights).sum(axis=1) / weights.sum(axis=1)).astype(self.dtype)
        temb = self.time_text_embed(timestep, pooled)
        return self.token_refiner(self.proj_in(text), temb, text_mask)


class _RefinerCondition(nnx.Module):
    """diffusers ``CombinedTimestepTextProjEmbeddings``: ``timestep_embedder(sin(t)) + text_embedder(p)``."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_FREQ_DIM, config.inner_dim, **kw)
        self.text_embedder = TimestepEmbedding(config.text_embed_dim, config.inner_dim, **kw)

    def __call__(self, timestep: Real[Array, " B"], pooled: Float[Array, "B Ct"]) -> Float[Array, "B E"]:
        temb = self.timestep_embedder(hunyuan_sinusoid(timestep).astype(self.dtype))
        return temb + self.text_embedder(pooled)
