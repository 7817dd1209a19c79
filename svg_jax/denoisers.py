"""How each model family is called in a denoising step: its conditioning, token layout and attention.

:func:`svg_jax.sampling.sample` drives any of the ported transformers through these few functions, so the
loop itself (phases, guidance, scheduler, attention state) is shared:

* **Wan 2.1** (``WanTransformer3DModel``): text enters by cross-attention only, so self-attention sees
  video tokens alone; ``prompt`` is the UMT5 output ``[B, L, 4096]``. No embedded guidance.
* **HunyuanVideo** (``HunyuanVideoTransformer3DModel``): joint attention over ``[video, text]`` (text
  last), so SVG's layout holds the text tokens and the padded ones are masked from each prompt's valid
  length; ``prompt`` is a :class:`HunyuanPrompt` (LLaVA-Llama-3 states, their mask, the CLIP pooled
  vector). The guidance-distilled model takes ``embedded_guidance_scale·1000`` as an input (diffusers'
  ``guidance_scale``, 6.0 by default there); classifier-free guidance (diffusers' ``true_cfg_scale``)
  is the sampler's ``guidance_scale`` as for Wan.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Real

from svg_jax.layout import TextTokens, VideoLayout
from svg_jax.models import HunyuanVideoTransformer3DModel, WanTransformer3DModel

FAMILIES = (WanTransformer3DModel, HunyuanVideoTransformer3DModel)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HunyuanPrompt:
    """HunyuanVideo's text conditioning for one pass (diffusers' names in brackets).

    ``embeds`` [``prompt_embeds``]: the LLaVA-Llama-3 hidden states ``[B, L, 4096]``, right-padded;
    ``mask`` [``prompt_attention_mask``]: ``[B, L]``, 1/True on real tokens; ``pooled``
    [``pooled_prompt_embeds``]: the CLIP-L pooled output ``[B, 768]``.
    """

    embeds: Float[Array, "B L Dt"]
    mask: Real[Array, "B L"]
    pooled: Float[Array, "B Dp"]

    def valid_len(self) -> jax.Array:
        """Real prompt tokens per batch row (int32 ``[B]``)."""
        return jnp.sum(self.mask != 0, axis=1, dtype=jnp.int32)

    def cast(self, dtype) -> "HunyuanPrompt":
        return HunyuanPrompt(
            jnp.asarray(self.embeds, dtype), jnp.asarray(self.mask), jnp.asarray(self.pooled, dtype)
        )


def is_hunyuan(model) -> bool:
    return isinstance(model, HunyuanVideoTransformer3DModel)


def attention_dims(model) -> tuple[int, int, int]:
    """``(layers, heads, head_dim)`` of the injected self-attention (Hunyuan: double then single blocks)."""
    cfg = model.config
    layers = cfg.num_layers + (cfg.num_single_layers if is_hunyuan(model) else 0)
    return layers, cfg.num_attention_heads, cfg.attention_head_dim


def video_layout(model, latent_shape: tuple[int, ...], prompt: Any = None) -> VideoLayout:
    """The self-attention token layout of ``model`` on latents ``[B, C, F, H, W]`` (and ``prompt``)."""
    cfg = model.config
    pt, ph, pw = cfg.patch_sizes if is_hunyuan(model) else cfg.patch_size
    _, _, f, h, w = latent_shape
    grid = dict(num_frames=f // pt, tokens_per_frame=(h // ph) * (w // pw))
    if is_hunyuan(model):
        return VideoLayout(**grid, text_placement="last", num_text_tokens=prompt.embeds.shape[1])
    return VideoLayout(**grid)


def check_prompt(model, name: str, prompt: Any, batch: int) -> None:
    """Raise with the expected form when ``prompt`` does not suit ``model``."""
    if is_hunyuan(model):
        if not isinstance(prompt, HunyuanPrompt):
            raise ValueError(
                f"{name} must be a svg_jax.HunyuanPrompt(embeds [B, L, Dt], mask [B, L], pooled [B, Dp]) for "
                f"HunyuanVideo; got {type(prompt).__name__}"
            )
        cfg = model.config
        e, m, p = (jnp.shape(x) for x in (prompt.embeds, prompt.mask, prompt.pooled))
        want = (
            f"[{batch}, L, {cfg.text_embed_dim}]",
            f"[{batch}, L]",
            f"[{batch}, {cfg.pooled_projection_dim}]",
        )
        if (
            len(e) != 3
            or e[0] != batch
            or e[2] != cfg.text_embed_dim
            or m != e[:2]
            or p != (batch, cfg.pooled_projection_dim)
        ):
            raise ValueError(
                f"{name}: embeds, mask and pooled must be {', '.join(want)}; got {e}, {m} and {p}"
            )
        return
    if jnp.ndim(prompt) != 3 or jnp.shape(prompt)[0] != batch:
        raise ValueError(f"{name} must be [B={batch}, L, D]; got shape {jnp.shape(prompt)}")


def check_guidance(model, embedded_guidance_scale: float | None) -> None:
    """The embedded guidance scale is needed exactly when the model takes one."""
    takes = is_hunyuan(model) and model.config.guidance_embeds
    if takes and embedded_guidance_scale is None:
        raise ValueError(
            "embedded_guidance_scale is required: this HunyuanVideo model is guidance-distilled "
            "(guidance_embeds=True); diffusers' default is 6.0"
        )
    if not takes and embedded_guidance_scale is not None:
        raise ValueError(
            f"embedded_guidance_scale={embedded_guidance_scale!r} given, but {type(model).__name__} takes no "
            "embedded guidance: leave it None (classifier-free guidance is guidance_scale)"
        )
    if takes and (not isinstance(embedded_guidance_scale, (int, float)) or embedded_guidance_scale < 0):
        raise ValueError(
            f"embedded_guidance_scale must be a non-negative float; got {embedded_guidance_scale!r}"
        )


def denoise(
    model,
    x: jax.Array,
    t: jax.Array,
    prompt: Any,
    image: jax.Array | None,
    *,
    attn_fn_for: Callable[[TextTokens | None], Any],
    attn_state: Any,
    guidance: jax.Array | None,
) -> tuple[jax.Array, Any, Any]:
    """One transformer call: ``(output, new attention state, attention stats)``. ``attn_fn_for(text)``
    builds the attention function for the call's text tokens (``None`` when self-attention has none)."""
    if is_hunyuan(model):
        text = TextTokens("last", prompt.embeds.shape[1], prompt.valid_len())
        return model(
            x,
            t,
            prompt.embeds,
            prompt.mask,
            prompt.pooled,
            guidance,
            attn_fn=attn_fn_for(text),
            attn_state=attn_state,
            return_attention=True,
        )
    return model(x, t, prompt, image, attn_fn=attn_fn_for(None), attn_state=attn_state, return_attention=True)
