"""Wan 2.1 transformer (diffusers ``WanTransformer3DModel``) in Flax NNX.

Attribute names are diffusers' checkpoint keys (``blocks.attn1.to_q.kernel`` ↔
``blocks.N.attn1.to_q.weight``), so conversion is renames and transposes only. The blocks are built with
a vmapped init and run under ``lax.scan``: every block parameter carries a leading ``num_layers`` axis,
and compile time does not grow with depth.

Numerics follow diffusers, including its float32 islands (``_keep_in_fp32_modules``): RoPE tables (float64
→ float32), the time embedder, the modulation tables and math (``scale_shift_table``), all LayerNorms and
the gated residual adds run in float32; everything else runs in ``dtype`` (bfloat16 by default). With
``dtype=float32`` the whole model is float32 (the parity-test mode).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PyTree, Real

from .attention import AttnFn, dense_attention, sdpa
from .layers import FeedForward, LayerNorm, PatchEmbed3D, RMSNorm
from .rope import apply_rope, wan_rope
from .stack import block_view, check_layer_axis, stacked_blocks
from .wan_config import WAN_TEXT_LEN, WanConfig
from .wan_embeddings import WanConditionEmbedder


class WanAttention(nnx.Module):
    """Projections of one Wan attention (``attn1`` self, ``attn2`` cross; ``add_*`` only for I2V cross)."""

    def __init__(
        self, config: WanConfig, *, image_kv: bool, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim, self.heads = config.inner_dim, config.num_attention_heads

        def linear(d_in: int) -> nnx.Linear:
            return nnx.Linear(d_in, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        def norm() -> RMSNorm:  # qk-norm across heads: RMSNorm over the full width, before the head split
            return RMSNorm(dim, eps=config.eps, rngs=rngs, param_dtype=param_dtype)

        self.to_q, self.to_k, self.to_v = linear(dim), linear(dim), linear(dim)
        self.to_out = nnx.List([linear(dim)])  # key "to_out.0"; diffusers' to_out.1 is a weightless dropout
        self.norm_q, self.norm_k = norm(), norm()
        self.add_k_proj = linear(config.added_kv_proj_dim) if image_kv else None
        self.add_v_proj = linear(config.added_kv_proj_dim) if image_kv else None
        self.norm_added_k = norm() if image_kv else None

    def _heads(self, x: Float[Array, "B N E"]) -> Float[Array, "B N H D"]:
        b, n, e = x.shape
        return x.reshape(b, n, self.heads, e // self.heads)  # [B, N, H, D]

    def _out(self, x: Float[Array, "B N H D"]) -> Float[Array, "B N E"]:
        b, n, h, d = x.shape
        return self.to_out[0](x.reshape(b, n, h * d))  # [B, N, E] → to_out.0

    def self_attention(
        self,
        x: Float[Array, "B N E"],
        rope: tuple[Float[Array, "N D2"], Float[Array, "N D2"]],
        *,
        attn_fn: AttnFn,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B N E"], PyTree[Any] | None, PyTree[Any]]:
        """qk-norm → heads → RoPE on q, k → injected ``attn_fn`` → ``to_out.0``."""
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(x)))
        v = self._heads(self.to_v(x))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out, new_state, stats = attn_fn(q, k, v, layer=layer, state=state)
        return self._out(out.astype(x.dtype)), new_state, stats

    def cross_attention(
        self,
        x: Float[Array, "B N E"],
        text: Float[Array, "B L E"],
        image: Float[Array, "B Li E"] | None,
    ) -> Float[Array, "B N E"]:
        """Dense attention to the text tokens, plus (I2V) a separate attention to the image tokens."""
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(text)))
        out = sdpa(q, k, self._heads(self.to_v(text)))
        if image is not None:
            assert (
                self.add_k_proj is not None and self.add_v_proj is not None and self.norm_added_k is not None
            )
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            out = out + sdpa(q, k_img, self._heads(self.add_v_proj(image)))
        return self._out(out.astype(x.dtype))


class WanTransformerBlock(nnx.Module):
    """Modulated self-attention, cross-attention and gelu-tanh FFN (diffusers ``WanTransformerBlock``)."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = LayerNorm(dim, eps=config.eps, affine=False, rngs=rngs)
        self.attn1 = WanAttention(config, image_kv=False, **kw)
        self.attn2 = WanAttention(config, image_kv=config.is_i2v, **kw)
        # fp32 island: the affine cross-attention norm keeps float32 parameters.
        self.norm2 = (
            LayerNorm(dim, eps=config.eps, affine=True, rngs=rngs) if config.cross_attn_norm else None
        )
        self.ffn = FeedForward(dim, config.ffn_dim, dim, approximate=True, **kw)
        self.norm3 = LayerNorm(dim, eps=config.eps, affine=False, rngs=rngs)
        # fp32 island: per-block modulation table, randn/sqrt(dim) like diffusers.
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 6, dim), jnp.float32) / math.sqrt(dim)
        )

    def __call__(
        self,
        x: Float[Array, "B N E"],
        text: Float[Array, "B L E"],
        image: Float[Array, "B Li E"] | None,
        timestep_proj: Float[Array, "B 6 E"],
        rope: tuple[Float[Array, "N D2"], Float[Array, "N D2"]],
        *,
        attn_fn: AttnFn,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B N E"], PyTree[Any] | None, PyTree[Any]]:
        f32, dtype = jnp.float32, x.dtype
        mod = self.scale_shift_table[...] + timestep_proj.astype(f32)  # [B, 6, E], float32
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, i : i + 1] for i in range(6))  # [B, 1, E]

        # 1. Self-attention (modulation and residual add in float32).
        n = (self.norm1(x.astype(f32)) * (1 + scale) + shift).astype(dtype)
        attn, new_state, stats = self.attn1.self_attention(n, rope, attn_fn=attn_fn, layer=layer, state=state)
        x = (x.astype(f32) + attn * gate).astype(dtype)

        # 2. Cross-attention (residual add in the compute dtype, as diffusers does).
        n = self.norm2(x.astype(f32)).astype(dtype) if self.norm2 is not None else x
        x = x + self.attn2.cross_attention(n, text, image)

        # 3. Feed-forward.
        n = (self.norm3(x.astype(f32)) * (1 + c_scale) + c_shift).astype(dtype)
        x = (x.astype(f32) + self.ffn(n).astype(f32) * c_gate).astype(dtype)
        return x, new_state, stats


class WanTransformer3DModel(nnx.Module):
    """Wan 2.1 T2V / I2V / FLF2V denoiser; input and output ``[B, C, F, H, W]`` like diffusers."""

    def __init__(
        self,
        config: WanConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.bfloat16,
        param_dtype: DTypeLike = jnp.float32,
    ):
        self.config = config
        self.dtype = dtype
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.patch_embedding = PatchEmbed3D(config.in_channels, dim, config.patch_size, **kw)
        self.condition_embedder = WanConditionEmbedder(config, **kw)
        self.blocks = stacked_blocks(  # every leaf: [num_layers, ...]
            lambda r: WanTransformerBlock(config, rngs=r, dtype=dtype, param_dtype=param_dtype),
            config.num_layers,
            rngs,
        )
        self.norm_out = LayerNorm(dim, eps=config.eps, affine=False, rngs=rngs)
        self.proj_out = nnx.Linear(dim, config.out_channels * math.prod(config.patch_size), **kw)
        # fp32 island: output modulation table (shift, scale).
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 2, dim), jnp.float32) / math.sqrt(dim)
        )

    def block(self, index: int) -> WanTransformerBlock:
        """Block ``index`` as a standalone module (a view of slice ``index`` of the stacked parameters)."""
        return block_view(self.blocks, index, self.config.num_layers)

    def __call__(
        self,
        hidden_states: Float[Array, "B C F H W"],
        timestep: Real[Array, " B"],
        encoder_hidden_states: Float[Array, "B L Ct"],
        encoder_hidden_states_image: Float[Array, "Bi Li Ci"] | None = None,
        *,
        attn_fn: AttnFn | None = None,
        attn_state: PyTree[Any] | None = None,
        return_attention: bool = False,
    ) -> Float[Array, "B Co F H W"] | tuple[Float[Array, "B Co F H W"], PyTree[Any] | None, PyTree[Any]]:
        """Denoiser output; with ``return_attention=True`` also ``(new_attn_state, stats)``.

        ``attn_fn`` (default :func:`dense_attention`) runs every block's self-attention; ``attn_state``
        (leaves ``[num_layers, ...]``) is sliced per layer into it, and the per-layer new states and stats
        come back stacked over layers. See ``models/attention.py`` for the protocol.
        """
        cfg = self.config
        self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = cfg.patch_size
        grid = (f // pt, h // ph, w // pw)
        rope = wan_rope(cfg.attention_head_dim, grid, max_seq_len=cfg.rope_max_seq_len)

        x = self.patch_embedding(hidden_states)  # [B, N, E]
        temb, timestep_proj, text, image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.reshape(b, 6, cfg.inner_dim)  # [B, 6, E]
        if image is not None and not cfg.is_i2v:
            text, image = jnp.concatenate([image, text], axis=1), None  # image tokens join the context

        x, new_state, stats = self._run_blocks(
            x, text, image, timestep_proj, rope, attn_fn or dense_attention, attn_state
        )

        mod = self.scale_shift_table[...] + temb[:, None, :]  # [B, 2, E], float32
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        x = (self.norm_out(x.astype(jnp.float32)) * (1 + scale) + shift).astype(x.dtype)
        x = self.proj_out(x)  # [B, N, pt·ph·pw·Co], channel fastest
        x = x.reshape(b, *grid, pt, ph, pw, cfg.out_channels)  # [B, T, Hp, Wp, pt, ph, pw, Co]
        x = x.transpose(0, 7, 1, 4, 2, 5, 3, 6)  # [B, Co, T, pt, Hp, ph, Wp, pw]
        out = x.reshape(b, cfg.out_channels, f, h, w)  # [B, Co, F, H, W]
        return (out, new_state, stats) if return_attention else out

    def _run_blocks(self, x, text, image, timestep_proj, rope, attn_fn, attn_state):
        num_layers = self.config.num_layers
        check_layer_axis(attn_state, num_layers, "num_layers")
        graphdef, params = nnx.split(self.blocks)

        def body(carry, xs):
            block_params, layer, layer_state = xs
            block = nnx.merge(graphdef, block_params)
            carry, new_state, stats = block(
                carry, text, image, timestep_proj, rope, attn_fn=attn_fn, layer=layer, state=layer_state
            )
            return carry, (new_state, stats)

        layers = jnp.arange(num_layers, dtype=jnp.int32)
        x, (new_state, stats) = jax.lax.scan(body, x, (params, layers, attn_state))
        return x, new_state, stats

    def _check_inputs(self, hidden_states, timestep, text, image) -> None:
        cfg = self.config
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be [B, C, F, H, W]; got shape {hidden_states.shape}")
        b, c, f, h, w = hidden_states.shape
        if c != cfg.in_channels:
            hint = (
                " (I2V input is cat([noisy latents 16, mask 4, image latents 16]) on the channel axis)"
                if cfg.is_i2v
                else ""
            )
            raise ValueError(f"hidden_states must have in_channels={cfg.in_channels} channels; got {c}{hint}")
        for name, size, p in zip(("F", "H", "W"), (f, h, w), cfg.patch_size, strict=True):
            if size % p:
                raise ValueError(
                    f"hidden_states {name}={size} must be divisible by patch_size {cfg.patch_size} "
                    f"(entry {p}); crop or pad the latent to a multiple of {p}"
                )
        if jnp.shape(timestep) != (b,):
            raise ValueError(f"timestep must have shape [B] = ({b},); got {jnp.shape(timestep)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be [B={b}, L, text_dim={cfg.text_dim}]; got shape {text.shape}"
            )
        if cfg.image_dim is None:
            if image is not None:
                raise ValueError(
                    "encoder_hidden_states_image must be None for a model without image_dim "
                    "(a T2V config); got an array of shape "
                    f"{image.shape}"
                )
            return
        if image is None:
            raise ValueError(
                f"encoder_hidden_states_image is required by this image-conditioned config "
                f"(image_dim={cfg.image_dim}): pass the CLIP image tokens [B, 257, {cfg.image_dim}] "
                "(penultimate hidden state of the CLIP vision encoder)"
            )
        images_per_sample = 1 if cfg.pos_embed_seq_len is None else 2
        if image.ndim != 3 or image.shape[0] != images_per_sample * b or image.shape[2] != cfg.image_dim:
            raise ValueError(
                f"encoder_hidden_states_image must be [{images_per_sample}·B={images_per_sample * b}, L, "
                f"image_dim={cfg.image_dim}]; got shape {image.shape}"
            )
        if cfg.pos_embed_seq_len is not None and 2 * image.shape[1] != cfg.pos_embed_seq_len:
            raise ValueError(
                f"encoder_hidden_states_image must have pos_embed_seq_len/2 = {cfg.pos_embed_seq_len // 2} "
                f"tokens per image; got {image.shape[1]}"
            )
        if cfg.is_i2v and text.shape[1] != WAN_TEXT_LEN:
            raise ValueError(
                f"encoder_hidden_states must have exactly {WAN_TEXT_LEN} text tokens for I2V (diffusers "
                f"splits the image tokens off at that length); got {text.shape[1]}: zero-pad the prompt "
                f"embedding to "
                f"{WAN_TEXT_LEN} tokens as the Wan pipeline does"
            )
