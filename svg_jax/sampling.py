"""Jitted denoising loop: transformer, classifier-free guidance, SVG attention and scheduler, per phase.

:func:`sample` runs ``num_steps`` denoising steps in two compiled loops: the dense warm-up (the first
``attention.dense_steps`` steps, every layer dense) and the sparse phase (the method in every layer but the
first ``dense_layers``). Each phase is one ``lax.scan`` over traced step indices inside one ``jax.jit``, so
no step recompiles and nothing syncs with the host inside a phase (an optional ``callback`` is a
``jax.debug.callback`` per step, for progress bars). The carry holds the latents (float32), the
scheduler's multistep state and the :class:`~svg_jax.attention.AttentionState`, whose SVG2 centroid cache
thus flows from step to step and from the conditional to the unconditional pass (the official sharing,
see ``svg_jax/attention.py``).

Classifier-free guidance runs the conditional and the unconditional pass as two separate forwards and
blends ``uncond + g·(cond − uncond)`` (diffusers' ``WanPipeline``, and ``HunyuanVideoPipeline``'s
``true_cfg_scale``); it is on when ``guidance_scale > 1``, as in diffusers. How each model family is called
(its conditioning, token layout, embedded guidance) is :mod:`svg_jax.denoisers`: Wan 2.1 and HunyuanVideo.
"""

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from svg_jax import denoisers
from svg_jax.attention import AttentionConfig, AttentionStats, init_attention_state, make_attn_fn
from svg_jax.denoisers import HunyuanPrompt, video_layout
from svg_jax.models import HunyuanVideoTransformer3DModel, WanTransformer3DModel
from svg_jax.schedulers import Scheduler

log = logging.getLogger(__name__)

StepCallback = Callable[[int, float, float], Any]  # (step index, timestep, mean density) -> ignored


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingResult:
    """What :func:`sample` returns.

    ``stats`` are the per-call :class:`AttentionStats` stacked as ``[S, P, L, ...]``: ``S`` steps, ``P``
    passes per step (2 with guidance: index 0 conditional, 1 unconditional; 1 without), ``L`` layers.
    ``timesteps`` are the values the transformer saw; ``dense_steps`` counts the warm-up steps.
    """

    latents: Float[Array, "B C F H W"]  # float32 final latents
    stats: AttentionStats
    timesteps: Float[Array, " S"]
    dense_steps: int = dataclasses.field(metadata=dict(static=True))

    def mean_density(self) -> Float[Array, " S"]:
        """Per step: the fraction of the self-attention score matrices computed, over passes/layers/heads."""
        return jnp.mean(self.stats.density, axis=tuple(range(1, self.stats.density.ndim)))


def _check_args(
    *,
    model,
    latents,
    prompt_embeds,
    negative_embeds,
    guidance_scale,
    num_steps,
    scheduler,
    attention,
    seed,
    condition,
    image_embeds,
    embedded_guidance_scale,
    **_,
) -> None:
    if not isinstance(model, denoisers.FAMILIES):
        names = " or ".join(f.__name__ for f in denoisers.FAMILIES)
        raise ValueError(f"model must be a {names}; got {type(model).__name__}")
    denoisers.check_guidance(model, embedded_guidance_scale)
    if denoisers.is_hunyuan(model) and (condition is not None or image_embeds is not None):
        raise ValueError(
            "condition / image_embeds are for Wan I2V; the HunyuanVideo port is text-to-video: pass None"
        )
    if not isinstance(attention, AttentionConfig):
        raise ValueError(f"attention must be an AttentionConfig; got {type(attention).__name__}")
    for name in ("set_timesteps", "init_state", "step"):
        if not callable(getattr(scheduler, name, None)):
            raise ValueError(
                f"scheduler must be a svg_jax.schedulers scheduler (set_timesteps/init_state/step); "
                f"got {type(scheduler).__name__}"
            )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a non-negative float; got {guidance_scale!r}")
    if jnp.ndim(latents) != 5 or not jnp.issubdtype(jnp.result_type(latents), jnp.floating):
        raise ValueError(
            f"latents must be a float array [B, C, F, H, W]; got {jnp.result_type(latents)} of shape "
            f"{jnp.shape(latents)}"
        )
    b = latents.shape[0]
    expected_c = model.config.in_channels - (0 if condition is None else condition.shape[1])
    if latents.shape[1] != expected_c:
        raise ValueError(
            f"latents must have {expected_c} channels (in_channels={model.config.in_channels} minus the "
            f"condition's channels); got {latents.shape[1]}"
        )
    if condition is not None and (
        condition.ndim != 5 or condition.shape[0] != b or condition.shape[2:] != latents.shape[2:]
    ):
        raise ValueError(
            f"condition must be [B={b}, Cc, {', '.join(map(str, latents.shape[2:]))}] (concatenated to the "
            f"latents on the channel axis); got shape {condition.shape}"
        )
    denoisers.check_prompt(model, "prompt_embeds", prompt_embeds, b)
    if guidance_scale > 1.0:
        if negative_embeds is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} > 1 runs classifier-free guidance and needs "
                "negative_embeds (the text-encoder output of the negative prompt; diffusers uses '' by "
                "default); pass them, or guidance_scale=1 to sample without guidance"
            )
        denoisers.check_prompt(model, "negative_embeds", negative_embeds, b)
        shape = lambda p: jax.tree.map(jnp.shape, p)
        if shape(negative_embeds) != shape(prompt_embeds):
            raise ValueError(
                f"negative_embeds must have the shapes of prompt_embeds {shape(prompt_embeds)}; got "
                f"{shape(negative_embeds)} (zero-pad both to the same length)"
            )


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "scheduler", "attention", "phase", "layout", "guided", "callback"),
    donate_argnames=("carry",),
)
def _run_phase(
    params,
    carry,
    steps,
    schedule,
    context,
    *,
    graphdef,
    scheduler,
    attention,
    phase,
    layout,
    guided,
    guidance_scale,
    callback,
):
    """One compiled phase: ``lax.scan`` over the traced step indices ``steps``."""
    prompt, negative, image, condition, guidance = context

    def one_step(carry, i):
        x, sched_state, attn_state = carry
        model = nnx.merge(graphdef, params)
        attn_fn_for = lambda text: make_attn_fn(attention, layout=layout, step=i, phase=phase, text=text)
        t = schedule.timesteps[i]
        xin = x if condition is None else jnp.concatenate([x, condition.astype(x.dtype)], axis=1)
        xin = xin.astype(model.dtype)
        tb = jnp.broadcast_to(t, (x.shape[0],))
        call = functools.partial(
            denoisers.denoise, model, xin, tb, image=image, attn_fn_for=attn_fn_for, guidance=guidance
        )
        out, attn_state, stats = call(prompt, attn_state=attn_state)
        out = out.astype(jnp.float32)
        passes = [stats]
        if guided:
            uncond, attn_state, stats_u = call(negative, attn_state=attn_state)
            out = uncond.astype(jnp.float32) + guidance_scale * (out - uncond.astype(jnp.float32))
            passes.append(stats_u)
        stats = jax.tree.map(lambda *a: jnp.stack(a), *passes)  # [P, L, ...]
        x, sched_state = scheduler.step(schedule, sched_state, i, out, x)
        if callback is not None:
            jax.debug.callback(callback, i, t, jnp.mean(stats.density))
        return (x, sched_state, attn_state), stats

    return jax.lax.scan(one_step, carry, steps)


def sample(
    model: WanTransformer3DModel | HunyuanVideoTransformer3DModel,
    *,
    latents: Float[Array, "B C F H W"],
    prompt_embeds: Float[Array, "B L Dt"] | HunyuanPrompt,
    negative_embeds: Float[Array, "B L Dt"] | HunyuanPrompt | None = None,
    guidance_scale: float,
    embedded_guidance_scale: float | None = None,
    num_steps: int,
    scheduler: Scheduler,
    attention: AttentionConfig,
    seed: int = 0,
    image_embeds: Float[Array, "Bi Li Di"] | None = None,
    condition: Float[Array, "B Cc F H W"] | None = None,
    callback: StepCallback | None = None,
) -> SamplingResult:
    """Denoise ``latents`` (the initial noise, float32) into final latents.

    ``prompt_embeds`` / ``negative_embeds``: text-encoder outputs (zero-padded to one length; for
    HunyuanVideo a :class:`~svg_jax.denoisers.HunyuanPrompt`). ``guidance_scale > 1`` runs
    classifier-free guidance. ``embedded_guidance_scale``: the guidance-distilled HunyuanVideo's input
    (diffusers' ``guidance_scale``, default 6.0 there; None for Wan). ``scheduler``: a
    ``svg_jax.schedulers`` config (Wan: ``UniPCMultistepScheduler``, HunyuanVideo:
    ``FlowMatchEulerDiscreteScheduler(shift=7.0)``). ``attention``: dense, SVG1 or SVG2 with its dense
    warm-up schedule. ``seed`` seeds SVG1's profiling rows and SVG2's cold-start centroids (the latent
    noise is the caller's). I2V: ``image_embeds`` are the CLIP image tokens and ``condition`` the
    ``[mask, image latents]`` channels concatenated to the latents at every step. ``callback(step,
    timestep, mean_density)`` is called on the host after every step (costs one small device-to-host
    transfer per step).
    """
    _check_args(**locals())  # every argument, by name
    guided = guidance_scale > 1.0
    layout = video_layout(model, latents.shape, prompt_embeds)
    schedule = scheduler.set_timesteps(num_steps)
    latents = jnp.array(latents, jnp.float32, copy=True)  # the loop donates its carry, not the caller's array
    layers, heads, head_dim = denoisers.attention_dims(model)
    attn_state = init_attention_state(
        attention,
        num_layers=layers,
        batch=latents.shape[0],
        heads=heads,
        head_dim=head_dim,
        key=jax.random.key(seed),
    )
    carry = (latents, scheduler.init_state(schedule, latents), attn_state)
    dtype = model.dtype
    cast = lambda p: p.cast(dtype) if isinstance(p, HunyuanPrompt) else jnp.asarray(p, dtype)
    guidance = None  # HunyuanVideo's embedded guidance input, diffusers' guidance_scale·1000
    if embedded_guidance_scale is not None:
        guidance = jnp.full((latents.shape[0],), embedded_guidance_scale * 1000.0, jnp.float32).astype(dtype)
    context = (
        cast(prompt_embeds),
        cast(negative_embeds) if guided else None,
        None if image_embeds is None else jnp.asarray(image_embeds, dtype),
        None if condition is None else jnp.asarray(condition, jnp.float32),
        guidance,
    )
    graphdef, params = nnx.split(model)
    dense_steps = num_steps if attention.method == "dense" else min(attention.dense_steps, num_steps)
    run = functools.partial(
        _run_phase,
        params,
        graphdef=graphdef,
        scheduler=scheduler,
        attention=attention,
        layout=layout,
        guided=guided,
        guidance_scale=jnp.float32(guidance_scale),
        callback=callback,
    )
    phase_stats = []
    for phase, start, stop in (("dense", 0, dense_steps), ("sparse", dense_steps, num_steps)):
        if stop > start:
            log.info("%s phase: steps %d..%d (%s attention)", phase, start, stop - 1, attention.method)
            steps = jnp.arange(start, stop, dtype=jnp.int32)
            carry, stats = run(carry, steps, schedule, context, phase=phase)
            phase_stats.append(stats)
    stats = jax.tree.map(lambda *a: jnp.concatenate(a), *phase_stats)
    return SamplingResult(
        latents=carry[0], stats=stats, timesteps=schedule.timesteps, dense_steps=dense_steps
    )
