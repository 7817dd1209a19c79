"""HunyuanVideo's double-stream and single-stream blocks (diffusers ``HunyuanVideoTransformerBlock`` and
``HunyuanVideoSingleTransformerBlock``) with their joint attention injected.

The joint sequence is ``[video, text]``; q and k get per-head RMSNorm, then RoPE on the video tokens only,
and then go to ``attn_fn`` (see ``models/attention.py``). Modulation (``LN(x)·(1+scale)+shift``) and the
gated residual adds run in float32 and are cast back to the compute dtype.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PyTree

from .attention import AttnFn
from .hunyuan_video_config import EPS, HunyuanVideoConfig
from .layers import FeedForward, LayerNorm, RMSNorm
from .rope import apply_rope

Rope = tuple[Float[Array, "N D2"], Float[Array, "N D2"]]


class AdaLayerNormZero(nnx.Module):
    """``linear(silu(temb))`` split into ``chunks`` float32 modulation vectors, plus a parameterless LN.

    ``chunks=6`` is diffusers' ``AdaLayerNormZero`` (shift, scale, gate, shift_mlp, scale_mlp, gate_mlp),
    ``chunks=3`` its ``AdaLayerNormZeroSingle`` (shift, scale, gate).
    """

    def __init__(self, dim: int, chunks: int, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike):
        self.chunks = chunks
        self.linear = nnx.Linear(dim, chunks * dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = LayerNorm(dim, eps=EPS, affine=False, rngs=rngs)

    def modulation(self, temb: Float[Array, "B E"]) -> tuple[Float[Array, "B 1 E"], ...]:
        mod = self.linear(jax.nn.silu(temb)).astype(jnp.float32)  # [B, chunks·E]
        return tuple(m[:, None, :] for m in jnp.split(mod, self.chunks, axis=-1))


def _modulate(norm: LayerNorm, x: Array, shift: Array, scale: Array) -> Array:
    """``(LN(x)·(1+scale) + shift)`` in float32, cast to ``x.dtype``."""
    return (norm(x.astype(jnp.float32)) * (1 + scale) + shift).astype(x.dtype)


def _gated_add(x: Array, update: Array, gate: Array) -> Array:
    """``x + update·gate`` in float32, cast to ``x.dtype``."""
    return (x.astype(jnp.float32) + update.astype(jnp.float32) * gate).astype(x.dtype)


class HunyuanVideoAttention(nnx.Module):
    """Joint attention projections; ``added=True`` adds the text stream's (double-stream blocks)."""

    def __init__(
        self,
        config: HunyuanVideoConfig,
        *,
        added: bool,
        rngs: nnx.Rngs,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
    ):
        dim, head_dim, self.heads = config.inner_dim, config.attention_head_dim, config.num_attention_heads

        def linear() -> nnx.Linear:
            return nnx.Linear(dim, dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        def norm() -> RMSNorm:  # per-head RMSNorm (after the head split)
            return RMSNorm(head_dim, eps=EPS, rngs=rngs, param_dtype=param_dtype)

        self.to_q, self.to_k, self.to_v = linear(), linear(), linear()
        self.norm_q, self.norm_k = norm(), norm()
        if added:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = linear(), linear(), linear()
            self.norm_added_q, self.norm_added_k = norm(), norm()
            self.to_out = nnx.List([linear()])  # key "to_out.0"
            self.to_add_out = linear()

    def _heads(self, x: Float[Array, "B N E"]) -> Float[Array, "B N H D"]:
        b, n, e = x.shape
        return x.reshape(b, n, self.heads, e // self.heads)  # [B, N, H, D]

    def qkv(self, x: Float[Array, "B N E"]) -> tuple[Array, Array, Array]:
        """Video-stream (or joint) q, k, v as ``[B, N, H, D]``, q and k normed."""
        return (
            self.norm_q(self._heads(self.to_q(x))),
            self.norm_k(self._heads(self.to_k(x))),
            self._heads(self.to_v(x)),
        )

    def added_qkv(self, x: Float[Array, "B L E"]) -> tuple[Array, Array, Array]:
        """Text-stream q, k, v as ``[B, L, H, D]``, q and k normed."""
        return (
            self.norm_added_q(self._heads(self.add_q_proj(x))),
            self.norm_added_k(self._heads(self.add_k_proj(x))),
            self._heads(self.add_v_proj(x)),
        )


def _rope_video(x: Float[Array, "B M H D"], rope: Rope) -> Float[Array, "B M H D"]:
    """RoPE on the leading ``N = len(rope)`` (video) tokens of ``x``; the text tail passes through."""
    n = rope[0].shape[0]
    return jnp.concatenate([apply_rope(x[:, :n], *rope), x[:, n:]], axis=1)


class HunyuanVideoTransformerBlock(nnx.Module):
    """Double-stream block: separate weights per stream, one joint attention over ``[video, text]``."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = AdaLayerNormZero(dim, 6, **kw)
        self.norm1_context = AdaLayerNormZero(dim, 6, **kw)
        self.attn = HunyuanVideoAttention(config, added=True, **kw)
        self.norm2 = LayerNorm(dim, eps=EPS, affine=False, rngs=rngs)
        self.ff = FeedForward(dim, config.mlp_dim, dim, approximate=True, **kw)
        self.norm2_context = LayerNorm(dim, eps=EPS, affine=False, rngs=rngs)
        self.ff_context = FeedForward(dim, config.mlp_dim, dim, approximate=True, **kw)

    def __call__(
        self,
        x: Float[Array, "B N E"],
        text: Float[Array, "B L E"],
        temb: Float[Array, "B E"],
        rope: Rope,
        *,
        attn_fn: AttnFn,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B N E"], Float[Array, "B L E"], PyTree[Any] | None, PyTree[Any]]:
        b, n, e = x.shape
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1.modulation(temb)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context.modulation(temb)

        # 1. Joint attention over [video, text]; RoPE on the video q, k only.
        q, k, v = self.attn.qkv(_modulate(self.norm1.norm, x, shift, scale))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cq, ck, cv = self.attn.added_qkv(_modulate(self.norm1_context.norm, text, c_shift, c_scale))
        q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((q, cq), (k, ck), (v, cv)))  # [B, N+L, H, D]
        out, new_state, stats = attn_fn(q, k, v, layer=layer, state=state)
        out = out.astype(x.dtype).reshape(b, -1, e)  # [B, N+L, E]
        x = _gated_add(x, self.attn.to_out[0](out[:, :n]), gate)
        text = _gated_add(text, self.attn.to_add_out(out[:, n:]), c_gate)

        # 2. Feed-forward per stream.
        x = _gated_add(x, self.ff(_modulate(self.norm2, x, shift_mlp, scale_mlp)), gate_mlp)
        text = _gated_add(
            text, self.ff_context(_modulate(self.norm2_context, text, c_shift_mlp, c_scale_mlp)), c_gate_mlp
        )
        return x, text, new_state, stats


class HunyuanVideoSingleTransformerBlock(nnx.Module):
    """Single-stream block on the joint sequence: parallel attention and MLP, one output projection."""

    def __init__(
        self, config: HunyuanVideoConfig, *, rngs: nnx.Rngs, dtype: DTypeLike, param_dtype: DTypeLike
    ):
        dim = config.inner_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = AdaLayerNormZero(dim, 3, **kw)
        self.attn = HunyuanVideoAttention(config, added=False, **kw)  # pre_only: no to_out
        self.proj_mlp = nnx.Linear(dim, config.mlp_dim, **kw)
        self.proj_out = nnx.Linear(dim + config.mlp_dim, dim, **kw)

    def __call__(
        self,
        h: Float[Array, "B M E"],
        temb: Float[Array, "B E"],
        rope: Rope,
        *,
        attn_fn: AttnFn,
        layer: Int[Array, ""],
        state: PyTree[Any] | None,
    ) -> tuple[Float[Array, "B M E"], PyTree[Any] | None, PyTree[Any]]:
        """``h`` is the joint sequence ``[video, text]``; its first ``len(rope)`` tokens are video."""
        b, m, e = h.shape
        shift, scale, gate = self.norm.modulation(temb)
        n = _modulate(self.norm.norm, h, shift, scale)
        mlp = jax.nn.gelu(self.proj_mlp(n), approximate=True)  # [B, M, mlp_dim]
        q, k, v = self.attn.qkv(n)
        q, k = _rope_video(q, rope), _rope_video(k, rope)
        out, new_state, stats = attn_fn(q, k, v, layer=layer, state=state)
        out = out.astype(h.dtype).reshape(b, m, e)  # [B, M, E]
        h = _gated_add(h, self.proj_out(jnp.concatenate([out, mlp], axis=-1)), gate)
        return h, new_state, stats
