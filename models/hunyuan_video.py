"""HunyuanVideo T2V transformer (diffusers ``HunyuanVideoTransformer3DModel``) in Flax NNX.

Attribute names are diffusers' checkpoint keys (``transformer_blocks.attn.to_q.kernel`` ↔
``transformer_blocks.N.attn.to_q.weight``), so conversion is renames and transposes only. The three block
stacks (``transformer_blocks``, ``single_transformer_blocks``, ``context_embedder.token_refiner.
refiner_blocks``) are built with a vmapped init and run under ``lax.scan``: every block parameter carries
a leading axis of its stack's depth.

Numerics follow diffusers, which has no float32-kept modules for this model: RoPE tables and rotation,
LayerNorm/RMSNorm statistics, the modulation ``LN(x)·(1+scale)+shift`` and the gated residual adds run in
float32 and are cast back; everything else runs in ``dtype`` (bfloat16 by default). With ``dtype=float32``
the whole model is float32 (the parity-test mode).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Bool, Float, PyTree, Real

from .attention import AttnFn, masked_dense_attention
from .hunyuan_video_blocks import HunyuanVideoSingleTransformerBlock, HunyuanVideoTransformerBlock
from .hunyuan_video_config import EPS, HunyuanVideoConfig
from .hunyuan_video_embeddings import HunyuanVideoConditionEmbedding, HunyuanVideoPatchEmbed, hunyuan_rope
from .hunyuan_video_refiner import HunyuanVideoTokenRefiner
from .layers import LayerNorm
from .stack import block_view, check_layer_axis, stacked_blocks


class AdaLayerNormContinuous(nnx.Module):
    """Output norm: ``scale, shift = linear(silu(temb))`` (**scale first**), ``LN(x)·(1+scale)+shift``."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        self.linear = nnx.Linear(dim, 2 * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = LayerNorm(dim, eps=EPS, affine=False, rngs=rngs)

    def __call__(self, x: Float[Array, "B N E"], temb: Float[Array, "B E"]) -> Float[Array, "B N E"]:
        scale, shift = jnp.split(self.linear(jax.nn.silu(temb)).astype(jnp.float32)[:, None, :], 2, axis=-1)
        return (self.norm(x.astype(jnp.float32)) * (1 + scale) + shift).astype(x.dtype)


class HunyuanVideoTransformer3DModel(nnx.Module):
    """HunyuanVideo T2V denoiser; input and output ``[B, C, F, H, W]`` like diffusers.

    Attention injection: the joint self-attention of every double-stream block (layers ``0 ..
    num_layers-1``) and single-stream block (layers ``num_layers .. num_layers+num_single_layers-1``) calls
    ``attn_fn(q, k, v, layer=layer, state=state)`` with ``q, k, v: [B, N+L, H, D]``, the sequence being
    ``[N video tokens (frame-major), L text tokens]``, q/k after per-head RMSNorm and (video only) RoPE.

    Text padding: the default (``attn_fn=None``) masks the padded text keys exactly as diffusers does
    (keys at positions ``>= N + encoder_attention_mask.sum(1)``; queries are not masked). An injected
    ``attn_fn`` receives the **unmasked** q/k/v: the caller must apply the same key mask itself, e.g. by
    closing over ``N + encoder_attention_mask.sum(1)`` (see :func:`text_kv_lengths`) or by passing prompts
    without padding. The token refiner's attention is never injected.
    """

    def __init__(
        self,
        config: HunyuanVideoConfig,
        *,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.bfloat16,
        param_dtype: DTypeLike = jnp.float32,
    ):
        self.config = config
        self.dtype = dtype
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.x_embedder = HunyuanVideoPatchEmbed(config, **kw)
        self.context_embedder = HunyuanVideoTokenRefiner(config, **kw)
        self.time_text_embed = HunyuanVideoConditionEmbedding(config, **kw)
        block_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.transformer_blocks = stacked_blocks(  # every leaf: [num_layers, ...]
            lambda r: HunyuanVideoTransformerBlock(config, rngs=r, **block_kw), config.num_layers, rngs
        )
        self.single_transformer_blocks = stacked_blocks(  # every leaf: [num_single_layers, ...]
            lambda r: HunyuanVideoSingleTransformerBlock(config, rngs=r, **block_kw),
            config.num_single_layers,
            rngs,
        )
        self.norm_out = AdaLayerNormContinuous(dim, **kw)
        self.proj_out = nnx.Linear(
            dim, config.out_channels * config.patch_size_t * config.patch_size**2, **kw
        )

    def block(self, index: int) -> HunyuanVideoTransformerBlock:
        """Double-stream block ``index`` as a standalone module (a view of slice ``index``)."""
        return block_view(self.transformer_blocks, index, self.config.num_layers)

    def single_block(self, index: int) -> HunyuanVideoSingleTransformerBlock:
        """Single-stream block ``index`` (0-based within its stack) as a standalone module."""
        return block_view(
            self.single_transformer_blocks, index, self.config.num_single_layers, "single block"
        )

    def rope(self, grid: tuple[int, int, int]) -> tuple[Float[Array, "N D2"], Float[Array, "N D2"]]:
        """float32 ``(cos, sin)`` half tables for a post-patch grid ``(T, Hp, Wp)``."""
        return hunyuan_rope(self.config.rope_axes_dim, grid, theta=self.config.rope_theta)

    def __call__(
        self,
        hidden_states: Float[Array, "B C F H W"],
        timestep: Real[Array, " B"],
        encoder_hidden_states: Float[Array, "B L Ct"],
        encoder_attention_mask: Real[Array, "B L"] | Bool[Array, "B L"],
        pooled_projections: Float[Array, "B Cp"],
        guidance: Real[Array, " B"] | None = None,
        *,
        attn_fn: AttnFn | None = None,
        attn_state: PyTree[Any] | None = None,
        return_attention: bool = False,
    ) -> Float[Array, "B Co F H W"] | tuple[Float[Array, "B Co F H W"], PyTree[Any] | None, PyTree[Any]]:
        """Denoiser output; with ``return_attention=True`` also ``(new_attn_state, stats)``.

        ``timestep`` is ``σ·1000`` (float), ``guidance`` the embedded guidance scale ``·1000`` (required
        when ``guidance_embeds``). ``encoder_attention_mask`` is 1/True for valid, right-padded text tokens.
        ``attn_state`` leaves lead with ``num_layers + num_single_layers`` (double-stream layers first);
        each block gets its layer's slice, and the new states and stats come back stacked the same way.
        """
        cfg = self.config
        self._check_inputs(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance,
        )
        check_layer_axis(attn_state, cfg.num_attention_layers, "num_layers + num_single_layers")
        b, _, f, h, w = hidden_states.shape
        pt, p = cfg.patch_size_t, cfg.patch_size
        grid = (f // pt, h // p, w // p)
        rope = self.rope(grid)
        text_mask = encoder_attention_mask.astype(bool)  # [B, L]

        temb = self.time_text_embed(timestep, pooled_projections, guidance)  # [B, E]
        x = self.x_embedder(hidden_states)  # [B, N, E]
        text = self.context_embedder(encoder_hidden_states, timestep, text_mask)  # [B, L, E]
        if attn_fn is None:
            attn_fn = masked_dense_attention(text_kv_lengths(x.shape[1], encoder_attention_mask))

        state_double, state_single = _split_layers(attn_state, cfg.num_layers)
        x, text, state_double, stats_double = self._run_double(x, text, temb, rope, attn_fn, state_double)
        joint, state_single, stats_single = self._run_single(
            jnp.concatenate([x, text], axis=1), temb, rope, attn_fn, state_single
        )
        x = joint[:, : x.shape[1]]  # [B, N, E]: the text tokens are dropped

        x = self.proj_out(self.norm_out(x, temb))  # [B, N, Co·pt·p·p], channel slowest
        x = x.reshape(b, *grid, cfg.out_channels, pt, p, p)  # [B, T, Hp, Wp, Co, pt, ph, pw]
        x = x.transpose(0, 4, 1, 5, 2, 6, 3, 7)  # [B, Co, T, pt, Hp, ph, Wp, pw]
        out = x.reshape(b, cfg.out_channels, f, h, w)  # [B, Co, F, H, W]
        if not return_attention:
            return out
        return out, _concat_layers(state_double, state_single), _concat_layers(stats_double, stats_single)

    def _run_double(self, x, text, temb, rope, attn_fn, attn_state):
        graphdef, params = nnx.split(self.transformer_blocks)

        def body(carry, xs):
            block_params, layer, layer_state = xs
            x, text = carry
            x, text, new_state, stats = nnx.merge(graphdef, block_params)(
                x, text, temb, rope, attn_fn=attn_fn, layer=layer, state=layer_state
            )
            return (x, text), (new_state, stats)

        layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        (x, text), (new_state, stats) = jax.lax.scan(body, (x, text), (params, layers, attn_state))
        return x, text, new_state, stats

    def _run_single(self, joint, temb, rope, attn_fn, attn_state):
        cfg = self.config
        graphdef, params = nnx.split(self.single_transformer_blocks)

        def body(carry, xs):
            block_params, layer, layer_state = xs
            carry, new_state, stats = nnx.merge(graphdef, block_params)(
                carry, temb, rope, attn_fn=attn_fn, layer=layer, state=layer_state
            )
            return carry, (new_state, stats)

        layers = jnp.arange(cfg.num_layers, cfg.num_attention_layers, dtype=jnp.int32)  # global indices
        joint, (new_state, stats) = jax.lax.scan(body, joint, (params, layers, attn_state))
        return joint, new_state, stats

    def _check_inputs(self, hidden_states, timestep, text, text_mask, pooled, guidance) -> None:
        cfg = self.config
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be [B, C, F, H, W]; got shape {hidden_states.shape}")
        b, c, f, h, w = hidden_states.shape
        if c != cfg.in_channels:
            raise ValueError(f"hidden_states must have in_channels={cfg.in_channels} channels; got {c}")
        for name, size, p in zip(("F", "H", "W"), (f, h, w), cfg.patch_sizes, strict=True):
            if size % p:
                raise ValueError(
                    f"hidden_states {name}={size} must be divisible by the patch size {p} "
                    f"(patch_size_t={cfg.patch_size_t}, patch_size={cfg.patch_size}); crop or pad the latent"
                )
        if jnp.shape(timestep) != (b,):
            raise ValueError(f"timestep must have shape [B] = ({b},); got {jnp.shape(timestep)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_embed_dim:
            raise ValueError(
                f"encoder_hidden_states must be [B={b}, L, text_embed_dim={cfg.text_embed_dim}]; got shape "
                f"{text.shape}"
            )
        if jnp.shape(text_mask) != text.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask must be [B, L] = {text.shape[:2]} (1/True for valid, right-padded "
                f"text tokens); got shape {jnp.shape(text_mask)}"
            )
        if jnp.shape(pooled) != (b, cfg.pooled_projection_dim):
            raise ValueError(
                f"pooled_projections must be [B, pooled_projection_dim] = "
                f"({b}, {cfg.pooled_projection_dim}); got shape {jnp.shape(pooled)}"
            )
        if cfg.guidance_embeds and guidance is None:
            raise ValueError(
                "guidance is required by this guidance-distilled config (guidance_embeds=True): pass "
                "[B] = guidance_scale·1000, e.g. 6000.0 for the default scale 6"
            )
        if not cfg.guidance_embeds and guidance is not None:
            raise ValueError(
                f"guidance must be None for a config without guidance_embeds; got an array of shape "
                f"{jnp.shape(guidance)}"
            )
        if guidance is not None and jnp.shape(guidance) != (b,):
            raise ValueError(f"guidance must have shape [B] = ({b},); got {jnp.shape(guidance)}")


def text_kv_lengths(num_video_tokens: int, encoder_attention_mask: Array) -> Array:
    """Per-sample valid key count ``N + encoder_attention_mask.sum(1)`` of the joint ``[video, text]``
    sequence (diffusers' rule, which assumes right padding): the ``kv_lengths`` an injected ``attn_fn``
    needs to reproduce the default text-padding mask."""
    return num_video_tokens + encoder_attention_mask.astype(jnp.int32).sum(axis=1)


def _split_layers(tree: PyTree[Any] | None, num_double: int) -> tuple[PyTree[Any] | None, PyTree[Any] | None]:
    """Split leaves ``[num_layers + num_single_layers, ...]`` into the double and single stacks."""
    if tree is None:
        return None, None
    return jax.tree.map(lambda a: a[:num_double], tree), jax.tree.map(lambda a: a[num_double:], tree)


def _concat_layers(double: PyTree[Any] | None, single: PyTree[Any] | None) -> PyTree[Any] | None:
    """Re-stack the two stacks' per-layer outputs along the leading layer axis."""
    if double is None and single is None:
        return None
    return jax.tree.map(lambda a, c: jnp.concatenate([a, c], axis=0), double, single)
