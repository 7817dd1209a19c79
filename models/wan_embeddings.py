"""Wan's condition embedder: timestep, text and (I2V) CLIP-image embeddings.

Mirrors diffusers ``WanTimeTextImageEmbedding`` / ``WanImageEmbedding``; the attribute names are the
checkpoint keys under ``condition_embedder``.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Real

from .embeddings import TextProjection, TimestepEmbedding, timestep_sinusoid
from .layers import FeedForward, LayerNorm
from .wan_config import WanConfig

# torch.nn.LayerNorm's default eps, which diffusers' WanImageEmbedding norms keep (not config.eps).
_IMAGE_NORM_EPS = 1e-5


class WanImageEmbedding(nnx.Module):
    """CLIP image tokens → model width: ``norm2(ff(norm1(x [+ pos_embed])))``.

    ``ff`` uses exact GELU; both norms are affine float32 LayerNorms. With ``pos_embed_seq_len`` (FLF2V)
    the two images' tokens are first joined per sample and a learned position embedding is added.
    """

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        assert config.image_dim is not None
        image_dim, dim = config.image_dim, config.inner_dim
        self.norm1 = LayerNorm(image_dim, eps=_IMAGE_NORM_EPS, affine=True, rngs=rngs)
        self.ff = FeedForward(
            image_dim, image_dim, dim, approximate=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )
        self.norm2 = LayerNorm(dim, eps=_IMAGE_NORM_EPS, affine=True, rngs=rngs)
        self.pos_embed = (
            nnx.Param(jnp.zeros((1, config.pos_embed_seq_len, image_dim), param_dtype))
            if config.pos_embed_seq_len is not None
            else None
        )

    def __call__(self, x: Float[Array, "Bi L Ci"]) -> Float[Array, "B Li E"]:
        if self.pos_embed is not None:
            bi, seq, ci = x.shape
            x = x.reshape(bi // 2, 2 * seq, ci)  # [B, 2·L, Ci]: first and last frame of each sample
            x = x + self.pos_embed[...].astype(x.dtype)
        return self.norm2(self.ff(self.norm1(x)))


class WanConditionEmbedder(nnx.Module):
    """Timestep → ``(temb, timestep_proj)``; text and image contexts → model width.

    fp32 island: ``time_embedder`` keeps float32 parameters and runs in float32 (diffusers
    ``_keep_in_fp32_modules``); its output is cast to the compute dtype before ``time_proj``.
    """

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        dim = config.inner_dim
        self.freq_dim = config.freq_dim
        self.dtype = dtype
        self.time_embedder = TimestepEmbedding(
            config.freq_dim, dim, rngs=rngs, dtype=jnp.float32, param_dtype=jnp.float32
        )
        self.time_proj = nnx.Linear(dim, 6 * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.text_embedder = TextProjection(
            config.text_dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )
        self.image_embedder = (
            WanImageEmbedding(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
            if config.image_dim is not None
            else None
        )

    def __call__(
        self,
        timestep: Real[Array, " B"],
        text: Float[Array, "B L Ct"],
        image: Float[Array, "Bi Li Ci"] | None,
    ) -> tuple[
        Float[Array, "B E"], Float[Array, "B E6"], Float[Array, "B L E"], Float[Array, "B Lo E"] | None
    ]:
        temb = self.time_embedder(timestep_sinusoid(timestep, self.freq_dim)).astype(self.dtype)
        timestep_proj = self.time_proj(jax.nn.silu(temb))
        text = self.text_embedder(text.astype(self.dtype))
        if image is not None:
            assert self.image_embedder is not None
            image = self.image_embedder(image.astype(self.dtype))
        return temb, timestep_proj, text, image
