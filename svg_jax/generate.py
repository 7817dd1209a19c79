"""``svg-jax generate``: converted checkpoint + prompt embeddings → final latents and a per-step log.

:class:`GenerateRequest` holds the resolved settings; :func:`prepare` validates everything that can be
checked before any compute (sizes, frame count, files, embedding shapes against the checkpoint's config,
the output folder) and :func:`run` samples and writes ``OUT/`` atomically:

* ``latents.safetensors``: ``latents`` float32 ``[B, C, T, H/8, W/8]`` (decode with the model's VAE);
* ``log.jsonl``: one line per step: timestep, phase, wall time, mean density, and per layer the density,
  whether it ran dense, SVG2's estimated recall and SVG1's per-head choice (``[pass, batch, head]``:
  0 spatial, 1 temporal, -1 dense; pass 0 is the conditional forward);
* ``run.json``: the settings and a summary (times, mean density of the sparse phase).

Step times come from the host callback each step makes; the first step of each phase includes that
phase's compilation and is flagged ``"includes_compile": true``.
"""

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from svg_jax import presets
from svg_jax.attention import AttentionConfig, Method
from svg_jax.convert import read_config
from svg_jax.convert.atomic import StagingDir
from svg_jax.embeddings import read_embeddings
from svg_jax.loading import load
from svg_jax.models import WanConfig
from svg_jax.sampling import SamplingResult, sample
from svg_jax.schedulers import UniPCMultistepScheduler
from svg_jax.svg2 import QUERY_TILINGS

log = logging.getLogger(__name__)

VAE_TEMPORAL = 4  # Wan VAE: 4× in time, 8× in space
VAE_SPATIAL = 8


class GenerateError(ValueError):
    """Bad arguments to ``generate`` (reported without a traceback by the CLI)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    checkpoint: pathlib.Path
    prompt_embeds: pathlib.Path
    negative_embeds: pathlib.Path | None
    image_inputs: pathlib.Path | None  # I2V: image_embeds + condition
    init_latents: pathlib.Path | None  # initial noise (else drawn from seed)
    out: pathlib.Path
    attention: AttentionConfig
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float
    flow_shift: float
    seed: int
    dtype: str
    force: bool = False
    progress: bool = True

    def latent_shape(self, channels: int) -> tuple[int, int, int, int]:
        """``(C, T, H/8, W/8)`` of the latents of this video size."""
        t = (self.frames - 1) // VAE_TEMPORAL + 1
        return (channels, t, self.height // VAE_SPATIAL, self.width // VAE_SPATIAL)


def resolve(
    *,
    preset: str | None,
    attention: Method,
    height: int | None,
    width: int | None,
    frames: int | None,
    steps: int | None,
    guidance: float | None,
    flow_shift: float | None,
    dense_steps: int | None,
    dense_layers: int | None,
    density: float | None,
    q_clusters: int | None,
    k_clusters: int | None,
    top_p: float | None,
    min_k_token_ratio: float | None = None,
    query_tiles: str | None = None,
    **paths: Any,
) -> GenerateRequest:
    """Fill unset options from ``preset`` (or the defaults) and build the request."""
    p = None
    if preset is not None:
        if preset not in presets.PRESETS:
            raise GenerateError(f"--preset must be one of {sorted(presets.PRESETS)}; got {preset!r}")
        p = presets.PRESETS[preset]
    else:
        missing = [
            n for n, v in (("--height", height), ("--width", width), ("--frames", frames)) if v is None
        ]
        if missing:
            raise GenerateError(
                f"{', '.join(missing)} required without --preset (or pick one of {sorted(presets.PRESETS)})"
            )
    for method, flags in (
        ("svg1", (("--density", density),)),
        (
            "svg2",
            (
                ("--q-clusters", q_clusters),
                ("--k-clusters", k_clusters),
                ("--top-p", top_p),
                ("--min-k-token-ratio", min_k_token_ratio),
                ("--query-tiles", query_tiles),
            ),
        ),
    ):
        given = [flag for flag, value in flags if value is not None]
        if given and attention != method:
            raise GenerateError(
                f"{', '.join(given)} only apply to --attention {method}; got --attention {attention}"
            )
    if attention == "dense" and (dense_steps is not None or dense_layers is not None):
        raise GenerateError("--dense-steps/--dense-layers only apply to --attention svg1 or svg2")
    steps = steps if steps is not None else (p.steps if p else presets.DEFAULT_STEPS)
    if steps < 1:
        raise GenerateError(f"--steps must be >= 1; got {steps}")
    fraction = p.dense_step_fraction if p else presets.DEFAULT_DENSE_STEP_FRACTION
    svg1_cfg = p.svg1 if p else presets.DEFAULT_SVG1
    svg2_cfg = p.svg2 if p else presets.DEFAULT_SVG2
    try:
        if density is not None:
            svg1_cfg = dataclasses.replace(svg1_cfg, density=density)
        overrides = (
            ("num_q_clusters", q_clusters),
            ("num_k_clusters", k_clusters),
            ("top_p", top_p),
            ("min_k_token_ratio", min_k_token_ratio),
            ("query_tiles", query_tiles),
        )
        changes = {k: v for k, v in overrides if v is not None}
        svg2_cfg = dataclasses.replace(svg2_cfg, **changes)
        attn = presets.attention_config(
            attention,
            svg1_config=svg1_cfg,
            svg2_config=svg2_cfg,
            dense_steps=presets.dense_steps_for(fraction, steps) if dense_steps is None else dense_steps,
            dense_layers=dense_layers,
        )
    except ValueError as e:
        raise GenerateError(str(e)) from e
    return GenerateRequest(
        attention=attn,
        height=height if height is not None else p.height,
        width=width if width is not None else p.width,
        frames=frames if frames is not None else p.frames,
        steps=steps,
        guidance_scale=guidance
        if guidance is not None
        else (p.guidance_scale if p else presets.DEFAULT_GUIDANCE),
        flow_shift=flow_shift
        if flow_shift is not None
        else (p.flow_shift if p else presets.DEFAULT_FLOW_SHIFT),
        **paths,
    )


def _check_sizes(req: GenerateRequest, config: WanConfig) -> None:
    multiple = VAE_SPATIAL * config.patch_size[1]
    for name, value in (("--height", req.height), ("--width", req.width)):
        if value < multiple or value % multiple:
            raise GenerateError(
                f"{name} must be a positive multiple of {multiple} (VAE 8× × patch {config.patch_size[1]}); "
                f"got {value}; try {max(multiple, value // multiple * multiple)}"
            )
    if req.frames < 1 or (req.frames - 1) % VAE_TEMPORAL:
        k = max(0, round((req.frames - 1) / VAE_TEMPORAL))
        raise GenerateError(
            f"--frames must be 4k+1 (the VAE packs 4 frames per latent frame after the first); got "
            f"{req.frames}; try {VAE_TEMPORAL * k + 1}"
        )
    if req.guidance_scale < 0:
        raise GenerateError(f"--guidance must be >= 0; got {req.guidance_scale}")
    if req.dtype not in ("bf16", "fp32"):
        raise GenerateError(f"--dtype must be bf16 or fp32; got {req.dtype!r}")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything :func:`run` feeds the sampler, read and checked by :func:`prepare`."""

    config: WanConfig
    latents: np.ndarray
    prompt: np.ndarray
    negative: np.ndarray | None
    image_embeds: np.ndarray | None
    condition: np.ndarray | None


def prepare(req: GenerateRequest) -> Inputs:
    """Validate the request against the checkpoint and read the inputs (no model weights yet)."""
    if req.out.exists() and not req.force:
        raise GenerateError(f"--out {req.out} exists; pass --force to overwrite it")
    try:
        raw = read_config(req.checkpoint)
    except (OSError, ValueError) as e:
        raise GenerateError(f"--checkpoint {req.checkpoint}: {e}") from e
    family = raw.get("_class_name", "WanTransformer3DModel")
    if family != "WanTransformer3DModel":
        raise GenerateError(
            f"--checkpoint {req.checkpoint} holds a {family}; svg-jax generate runs Wan 2.1 checkpoints "
            "only (HunyuanVideo's text encoders and VAE are not ported: sample it from Python with "
            "svg_jax.sampling.sample and svg_jax.HunyuanPrompt embeddings, see the README)"
        )
    config = WanConfig.from_diffusers_config(raw)
    _check_sizes(req, config)
    c, t, h, w = req.latent_shape(config.out_channels)  # the denoised latents; I2V adds a condition
    try:
        prompt = read_embeddings(
            req.prompt_embeds, "prompt_embeds", dim=config.text_dim, arg="--prompt-embeds"
        )
        negative = None
        if req.guidance_scale > 1.0:
            if req.negative_embeds is None:
                raise GenerateError(
                    f"--guidance {req.guidance_scale} > 1 needs --negative-embeds (the text-encoder output "
                    "of the negative prompt; diffusers uses the empty prompt); or pass --guidance 1 for no "
                    "guidance"
                )
            negative = read_embeddings(
                req.negative_embeds, "negative_prompt_embeds", dim=config.text_dim, arg="--negative-embeds"
            )
            prompt, negative = _pad_to_common_length(prompt, negative)
            if negative.shape[0] != prompt.shape[0]:
                raise GenerateError(
                    f"--negative-embeds has batch {negative.shape[0]} but --prompt-embeds has "
                    f"{prompt.shape[0]}"
                )
        image_embeds = condition = None
        if config.is_i2v or config.image_dim is not None:
            if req.image_inputs is None:
                raise GenerateError(
                    "this checkpoint is image-conditioned (I2V): pass --image-inputs FILE with "
                    f"'image_embeds' [1, 257, {config.image_dim}] and 'condition' "
                    f"[1, {config.in_channels - c}, {t}, {h}, {w}]"
                )
            image_embeds = read_embeddings(
                req.image_inputs, "image_embeds", dim=config.image_dim, arg="--image-inputs"
            )
            condition = read_embeddings(req.image_inputs, "condition", dim=None, arg="--image-inputs", ndim=5)
        b = prompt.shape[0]
        if condition is not None and condition.shape != (b, config.in_channels - c, t, h, w):
            raise GenerateError(
                f"--image-inputs 'condition' must be [{b}, {config.in_channels - c}, {t}, {h}, {w}] for "
                f"{req.frames} frames at {req.height}×{req.width}; got {list(condition.shape)}"
            )
        if req.init_latents is not None:
            latents = read_embeddings(req.init_latents, "latents", dim=None, arg="--init-latents", ndim=5)
            if latents.shape != (b, c, t, h, w):
                raise GenerateError(
                    f"--init-latents must be [{b}, {c}, {t}, {h}, {w}] for {req.frames} frames at "
                    f"{req.height}×{req.width}; got {list(latents.shape)}"
                )
        else:
            latents = np.asarray(jax.random.normal(jax.random.key(req.seed), (b, c, t, h, w), jnp.float32))
    except ValueError as e:
        raise GenerateError(str(e)) from e
    _check_method(req, config, t * (h // config.patch_size[1]) * (w // config.patch_size[2]))
    return Inputs(config, latents, prompt, negative, image_embeds, condition)


def _pad_to_common_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad two ``[B, L, D]`` embeddings to one length (Wan zero-pads every prompt to 512 tokens)."""
    n = max(a.shape[1], b.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0)))
    return pad(a), pad(b)


def _check_method(req: GenerateRequest, config: WanConfig, num_tokens: int) -> None:
    cfg = req.attention
    if cfg.method == "svg2":
        for flag, value in (
            ("--q-clusters", cfg.svg2.num_q_clusters),
            ("--k-clusters", cfg.svg2.num_k_clusters),
        ):
            if value > num_tokens:
                raise GenerateError(
                    f"{flag}={value} exceeds the {num_tokens} video tokens of a {req.frames}-frame "
                    f"{req.height}×{req.width} video; pass {flag} {max(1, num_tokens // 8)} or fewer"
                )
    if cfg.dense_layers > config.num_layers:
        raise GenerateError(
            f"--dense-layers {cfg.dense_layers} exceeds the model's {config.num_layers} layers"
        )


def _step_records(result: SamplingResult, times: list[float], num_steps: int) -> list[dict[str, Any]]:
    stats = jax.tree.map(np.asarray, result.stats)
    timesteps = np.asarray(result.timesteps)
    records = []
    for i in range(num_steps):
        layers = []
        for layer in range(stats.density.shape[2]):
            entry = {
                "layer": layer,
                "dense": bool(stats.dense[i, :, layer].all()),
                "density": float(stats.density[i, :, layer].mean()),
            }
            if stats.estimated_recall is not None:
                entry["estimated_recall"] = float(stats.estimated_recall[i, :, layer].mean())
            if stats.query_tiling is not None:  # SVG2: the query tiling the layer ran (per CFG pass)
                names = ("dense", *QUERY_TILINGS)  # code -1 is a dense layer
                entry["query_tiling"] = [names[c + 1] for c in stats.query_tiling[i, :, layer].tolist()]
            if stats.head_choice is not None:
                choice = stats.head_choice[i, :, layer]
                entry["temporal_heads"] = int((choice == 1).sum())
                entry["spatial_heads"] = int((choice == 0).sum())
                entry["head_choice"] = choice.tolist()  # [P, B, H]: 0 spatial, 1 temporal, -1 dense
            layers.append(entry)
        first_of_phase = i in (0, result.dense_steps)
        records.append(
            {
                "step": i,
                "timestep": float(timesteps[i]),
                "phase": "dense" if i < result.dense_steps else "sparse",
                "time_s": times[i] if i < len(times) else None,
                "includes_compile": first_of_phase,
                "density": float(stats.density[i].mean()),
                "layers": layers,
            }
        )
    return records


def run(req: GenerateRequest, inputs: Inputs | None = None) -> dict[str, Any]:
    """Sample and write ``req.out`` (atomically); returns the summary also stored in ``run.json``."""
    inputs = inputs if inputs is not None else prepare(req)
    dtype = jnp.bfloat16 if req.dtype == "bf16" else jnp.float32
    t0 = time.perf_counter()
    model, _ = load(req.checkpoint, dtype=dtype)
    load_s = time.perf_counter() - t0
    scheduler = UniPCMultistepScheduler(flow_shift=req.flow_shift)

    bar = tqdm(
        total=req.steps, desc=f"generate ({req.attention.method})", unit="step", disable=not req.progress
    )
    stamps: list[float] = []

    def on_step(i, t, density):
        stamps.append(time.perf_counter())
        bar.set_postfix(t=f"{float(t):.0f}", density=f"{float(density):.3f}", refresh=False)
        bar.update(1)

    start = time.perf_counter()
    try:
        result = sample(
            model,
            latents=inputs.latents,
            prompt_embeds=inputs.prompt,
            negative_embeds=inputs.negative,
            guidance_scale=req.guidance_scale,
            num_steps=req.steps,
            scheduler=scheduler,
            attention=req.attention,
            seed=req.seed,
            image_embeds=inputs.image_embeds,
            condition=inputs.condition,
            callback=on_step,
        )
        latents = np.asarray(jax.block_until_ready(result.latents))
    finally:
        bar.close()
    total_s = time.perf_counter() - start
    times = list(np.diff([start, *stamps]))
    records = _step_records(result, times, req.steps)
    sparse = [r["density"] for r in records if r["phase"] == "sparse"]
    summary = {
        "out": str(req.out),
        "attention": req.attention.method,
        "steps": req.steps,
        "dense_steps": result.dense_steps,
        "latent_shape": list(latents.shape),
        "load_s": round(load_s, 3),
        "sample_s": round(total_s, 3),
        "mean_sparse_density": float(np.mean(sparse)) if sparse else None,
        "device": jax.devices()[0].device_kind,
    }
    settings = {
        k: (str(v) if isinstance(v, pathlib.Path) else v)
        for k, v in dataclasses.asdict(req).items()
        if k != "attention"
    }
    settings["attention"] = _describe(req.attention)
    with StagingDir(req.out, force=req.force) as staging:
        save_file({"latents": latents.astype(np.float32)}, staging.path / "latents.safetensors")
        with open(staging.path / "log.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        with open(staging.path / "run.json", "w") as f:
            json.dump({"settings": settings, "summary": summary}, f, indent=2)
        staging.publish()
    return summary


def _describe(cfg: AttentionConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"method": cfg.method}
    if cfg.method_config is not None:
        out.update(dataclasses.asdict(cfg.method_config))
    return out
