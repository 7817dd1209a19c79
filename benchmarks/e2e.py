"""End-to-end denoising-step benchmark at real Wan 2.1 shapes (random weights): dense vs SVG1 vs SVG2.

    python benchmarks/e2e.py --out benchmarks/results/e2e_h100.json [--models wan2.1-1.3b-480p] [--steps 3]

For each model (Wan2.1-T2V-14B at 720p × 81 frames: 75,600 tokens, 40 layers × 40 heads; Wan2.1-T2V-1.3B at
480p × 81 frames: 32,760 tokens, 30 layers × 12 heads), bf16, random weights built on the device:

* each attention setting runs ``svg_jax.sampling.sample`` for ``--steps`` steps with classifier-free
  guidance (two forwards per step) and UniPC, all steps in the sparse phase (the official dense *layers*
  kept), and the step times are read from the per-step host callback: step ``i``'s time is the gap
  between the callbacks of steps ``i-1`` and ``i``, so compilation and SVG2's cold k-means (step 0) are
  excluded; the median over the remaining steps is reported;
* settings: ``dense`` (cuDNN), ``svg1`` / ``svg2`` with the official preset, and fixed densities 0.3 and
  0.13 for a speed curve (SVG1 ``density``; SVG2 with ``top_p`` → 0 and ``min_k_token_ratio`` = the
  density, so every query cluster keeps its most probable key clusters until they hold that share of the
  keys: the measured density lands just above it);
* the projected 50-step time = preset dense steps × dense step + the rest × sparse step;
* the attention share: one dense forward against the same forward with attention replaced by a no-op.

Random weights make attention nearly uniform, so SVG2's top-p preset keeps far more than on a trained
model; the measured density is reported next to every time.
"""

import argparse
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from harness import device_info, print_table, write_json

from svg_jax import AttentionConfig, presets
from svg_jax.convert.params import param_shapes, with_params
from svg_jax.models import WAN_PRESETS, WanConfig, WanTransformer3DModel
from svg_jax.sampling import sample
from svg_jax.schedulers import UniPCMultistepScheduler
from svg_jax.svg2 import QUERY_TILES, QUERY_TILINGS

MODELS = {
    "wan2.1-14b-720p": ("wan2.1-t2v-14b", "wan2.1-t2v-14b-720p"),
    "wan2.1-1.3b-480p": ("wan2.1-t2v-1.3b", "wan2.1-t2v-1.3b-480p"),
}
TEXT_TOKENS = 512
# `--models tiny`: a CPU smoke test of the script (not a benchmark).
TINY_CONFIG = WanConfig(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    ffn_dim=128,
    num_layers=2,
    rope_max_seq_len=64,
)


def model_and_preset(name: str) -> tuple[WanConfig, presets.GenerationPreset]:
    if name == "tiny":
        base = presets.PRESETS["wan2.1-t2v-1.3b-480p"]
        svg2 = dataclasses.replace(base.svg2, num_q_clusters=8, num_k_clusters=32)
        return TINY_CONFIG, dataclasses.replace(base, height=128, width=128, frames=9, svg2=svg2)
    arch, preset_name = MODELS[name]
    return WAN_PRESETS[arch], presets.PRESETS[preset_name]


FIXED_DENSITIES = (0.3, 0.13)
COLUMNS = [
    "model",
    "setting",
    "step_ms",
    "density_sparse_layers",
    "aligned_tiles_share",
    "paged_share",
    "step_speedup",
    "projected_50_step_s",
    "projected_speedup",
]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, shape, dtype):
    return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)  # compiled once per shape


def random_model(build: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """The model ``build()`` makes (bf16), with N(0, 0.02²) weights and unit norm scales, each leaf drawn
    on the device (the module is only traced abstractly, never built on the host)."""
    abstract = nnx.eval_shape(build)
    arrays = {}
    for i, (path, spec) in enumerate(sorted(param_shapes(abstract).items())):
        if path.endswith(".scale"):
            arrays[path] = jnp.ones(spec.shape, spec.dtype)
            continue
        arrays[path] = _draw(jax.random.key(seed * 100_003 + i), spec.shape, spec.dtype)
    return with_params(abstract, arrays)


def random_wan(config: WanConfig, seed: int = 0) -> WanTransformer3DModel:
    """A bf16 Wan transformer with random weights (:func:`random_model`)."""
    bf16 = jnp.bfloat16
    return random_model(
        lambda: WanTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=bf16, param_dtype=bf16), seed
    )


def settings(preset: presets.GenerationPreset) -> dict[str, AttentionConfig]:
    svg1, svg2 = preset.svg1, preset.svg2
    out = {
        "dense": AttentionConfig(method="dense"),
        "svg1 preset": AttentionConfig(method="svg1", svg1=dataclasses.replace(svg1, dense_steps=0)),
        "svg2 preset": AttentionConfig(method="svg2", svg2=dataclasses.replace(svg2, dense_steps=0)),
    }
    for d in FIXED_DENSITIES:
        out[f"svg1 d={d}"] = AttentionConfig(
            method="svg1", svg1=dataclasses.replace(svg1, density=d, dense_steps=0)
        )
        out[f"svg2 d={d}"] = AttentionConfig(
            method="svg2",
            svg2=dataclasses.replace(
                svg2, top_p=1e-6, min_k_cluster_ratio=0.0, min_k_token_ratio=d, dense_steps=0
            ),
        )
    return out


def with_query_tiles(attention: AttentionConfig, query_tiles: str) -> AttentionConfig:
    return dataclasses.replace(attention, svg2=dataclasses.replace(attention.svg2, query_tiles=query_tiles))


def time_steps(model, inputs, attention: AttentionConfig, steps: int, shift: float) -> dict:
    stamps = []

    def on_step(i, t, density):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    result = sample(
        model,
        **inputs,
        guidance_scale=5.0,
        num_steps=steps,
        scheduler=UniPCMultistepScheduler(flow_shift=shift),
        attention=attention,
        callback=on_step,
    )
    jax.block_until_ready(result.latents)
    total = time.perf_counter() - t0
    step_ms = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    density = jnp.asarray(result.stats.density)  # [S, P, L, B, H]
    sparse_layers = ~jnp.asarray(result.stats.dense)[1:]  # [S-1, P, L]
    layer_density = density[1:].mean(axis=(-1, -2))  # [S-1, P, L]
    n_sparse = int(sparse_layers.sum())
    tiling = result.stats.query_tiling  # SVG2: [S, P, L], the query tiling each layer ran (-1 dense)

    def share(*names):  # of the sparse layers after step 0 (SVG2 only)
        if tiling is None or not n_sparse:
            return None
        ran = jnp.isin(jnp.asarray(tiling)[1:], jnp.asarray([QUERY_TILINGS.index(x) for x in names]))
        return float((ran & sparse_layers).sum() / n_sparse)

    return {
        "step_ms": statistics.median(step_ms),
        "step_ms_all": step_ms,
        "first_call_s": total,  # compile + all steps
        "density_all_layers": float(layer_density.mean()),
        "density_sparse_layers": float((layer_density * sparse_layers).sum() / n_sparse)
        if n_sparse
        else None,
        "aligned_tiles_share": share("aligned", "paged"),  # query tiles aligned to clusters (pages too)
        "paged_share": share("paged"),
    }


def attention_share(model, forward: Callable[..., jax.Array], reps: int = 3) -> dict:
    """Share of a dense forward spent in self-attention: ``forward(model)`` against
    ``forward(model, attn_fn=no-op)`` (median of ``reps`` timed calls each, after a compiling call)."""

    def no_attention(q, k, v, *, layer, state):
        return v, state, jnp.zeros(())

    dense = jax.jit(lambda m: forward(m))
    skip = jax.jit(lambda m: forward(m, attn_fn=no_attention))
    times = {}
    for name, fn in (("forward_dense_ms", dense), ("forward_no_attention_ms", skip)):
        jax.block_until_ready(fn(model))
        runs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(model))
            runs.append((time.perf_counter() - t0) * 1e3)
        times[name] = statistics.median(runs)
    times["attention_share"] = 1 - times["forward_no_attention_ms"] / times["forward_dense_ms"]
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file (written atomically)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of %(default)s")
    parser.add_argument("--steps", type=int, default=3, help="steps per setting (>= 2; step 0 is not timed)")
    parser.add_argument("--only", default=None, help="comma-separated subset of the settings to run")
    parser.add_argument(
        "--dense-step-ms",
        type=float,
        default=None,
        help="dense step time measured by an earlier run (for speedups when --only leaves dense out)",
    )
    parser.add_argument("--no-share", action="store_true", help="skip the attention-share forwards")
    parser.add_argument(
        "--query-tiles",
        choices=QUERY_TILES,
        default=None,
        help="SVG2Config.query_tiles of the svg2 settings (default: the config's, auto)",
    )
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS and n != "tiny"]
    if unknown or args.steps < 2:
        parser.error(
            f"unknown --models {unknown} (choose from {sorted(MODELS)})" if unknown else "--steps >= 2"
        )
    info = device_info()
    print(info)
    results = []
    for name in names:
        config, preset = model_and_preset(name)
        model = random_wan(config)
        t_lat = (preset.frames - 1) // 4 + 1
        key = jax.random.key(1)
        inputs = dict(
            latents=jax.random.normal(
                key, (1, 16, t_lat, preset.height // 8, preset.width // 8), jnp.float32
            ),
            prompt_embeds=0.1
            * jax.random.normal(jax.random.key(2), (1, TEXT_TOKENS, config.text_dim), jnp.bfloat16),
            negative_embeds=0.1
            * jax.random.normal(jax.random.key(3), (1, TEXT_TOKENS, config.text_dim), jnp.bfloat16),
        )
        tokens = t_lat * (preset.height // 16) * (preset.width // 16)
        x, ctx = inputs["latents"].astype(jnp.bfloat16), inputs["prompt_embeds"]
        t = jnp.full((x.shape[0],), 500.0)
        forward = functools.partial(lambda m, x, t, ctx, **kw: m(x, t, ctx, **kw), x=x, t=t, ctx=ctx)
        share = {} if args.no_share else attention_share(model, forward)
        print(f"{name}: {tokens} tokens; {share}")
        dense_ms = args.dense_step_ms
        chosen = settings(preset)
        if args.only:
            chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
        if args.query_tiles:
            tiled = lambda v: with_query_tiles(v, args.query_tiles) if v.method == "svg2" else v
            chosen = {k: tiled(v) for k, v in chosen.items()}
        for label, attention in chosen.items():
            row = {
                "model": name,
                "tokens": tokens,
                "setting": label,
                "query_tiles": attention.svg2.query_tiles if attention.method == "svg2" else None,
                **time_steps(model, inputs, attention, args.steps, preset.flow_shift),
            }
            if label == "dense":
                dense_ms = row["step_ms"]
                row.update(share)
            dense_steps = (
                0 if label == "dense" else presets.dense_steps_for(preset.dense_step_fraction, preset.steps)
            )
            if dense_ms is None:
                raise SystemExit("no dense step time: include 'dense' in --only or pass --dense-step-ms")
            row["projected_50_step_s"] = (
                dense_steps * dense_ms + (preset.steps - dense_steps) * row["step_ms"]
            ) / 1e3
            row["step_speedup"] = dense_ms / row["step_ms"]
            row["projected_speedup"] = preset.steps * dense_ms / 1e3 / row["projected_50_step_s"]
            results.append(row)
            print_table(
                [row],
                COLUMNS,
            )
            write_json(args.out, {**info, "command": " ".join(sys.argv), "results": results})
        del model
    print_table(
        results,
        COLUMNS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
