"""End-to-end denoising-step benchmark of HunyuanVideo T2V at 720p × 129 frames (random weights): dense vs
SVG1 vs SVG2.

    python benchmarks/e2e_hunyuan.py --out benchmarks/results/e2e_hunyuan_720p_h200.json [--only dense,...]

The release transformer (20 double-stream + 40 single-stream blocks, 24 heads × 128, bf16, N(0, 0.02²)
weights drawn on the device) on latents ``[1, 16, 33, 90, 160]``: 118,800 video tokens plus 256 text
tokens at the end (``--prompt-tokens`` of them real, the rest padding, as the official pipeline pads).

HunyuanVideo runs embedded guidance (one forward per step, no CFG pass), so a denoising step is one
transformer forward plus a flow-matching Euler update (a few element-wise ops, not timed). For each
setting the forward is jitted once with a traced step (the sparse phase, as the sampler compiles it),
called once cold (compilation; SVG2's cold k-means), then ``--steps`` times warm with the attention state
carried (SVG2's warm k-means from the cached centroids); the median warm forward is the step time.

Settings: ``dense`` (cuDNN, padded text keys masked), SVG1 / SVG2 with the official HunyuanVideo 720p
presets (``svg_jax.svg1`` / ``svg_jax.svg2`` ``HUNYUAN_T2V_720P``), and fixed densities 0.3 / 0.13 (as in
``benchmarks/e2e.py``). The projected 50-step time runs the preset's dense warm-up steps dense. The
attention share compares a dense forward with one whose attention is a no-op. Random weights make
attention nearly uniform, so SVG2's top-p keeps far more than on a trained model: the measured density is
reported next to every time.
"""

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from e2e import COLUMNS, FIXED_DENSITIES, attention_share, random_model
from flax import nnx
from harness import device_info, print_table, write_json

from svg_jax import AttentionConfig, TextTokens, VideoLayout, init_attention_state, make_attn_fn, svg1, svg2
from svg_jax.models import HUNYUAN_PRESETS, HunyuanVideoConfig, HunyuanVideoTransformer3DModel

TEXT_TOKENS = 256  # the official pipeline pads the LLaVA prompt to 256 tokens
STEPS = 50
HEIGHT, WIDTH, FRAMES = 720, 1280, 129
TINY = HunyuanVideoConfig(
    in_channels=16,
    out_channels=16,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=1,
    num_single_layers=2,
    num_refiner_layers=1,
    text_embed_dim=32,
    pooled_projection_dim=8,
    rope_axes_dim=(4, 6, 6),
)


def settings(dense_layers: int | None = None) -> dict[str, AttentionConfig]:
    s1 = dataclasses.replace(svg1.HUNYUAN_T2V_720P, dense_steps=0)
    s2 = dataclasses.replace(svg2.HUNYUAN_T2V_720P, dense_steps=0)
    if dense_layers is not None:
        s1, s2 = (dataclasses.replace(c, dense_layers=dense_layers) for c in (s1, s2))
    out = {
        "dense": AttentionConfig(method="dense"),
        "svg1 preset": AttentionConfig(method="svg1", svg1=s1),
        "svg2 preset": AttentionConfig(method="svg2", svg2=s2),
    }
    for d in FIXED_DENSITIES:
        out[f"svg1 d={d}"] = AttentionConfig(method="svg1", svg1=dataclasses.replace(s1, density=d))
        out[f"svg2 d={d}"] = AttentionConfig(
            method="svg2",
            svg2=dataclasses.replace(s2, top_p=1e-6, min_k_cluster_ratio=0.0, min_k_token_ratio=d),
        )
    return out


def preset_dense_steps(label: str) -> int:
    """Warm-up steps the official preset runs dense (the projection's dense part)."""
    if label == "dense":
        return 0
    return (svg1.HUNYUAN_T2V_720P if label.startswith("svg1") else svg2.HUNYUAN_T2V_720P).dense_steps


def make_forward(config: AttentionConfig, layout: VideoLayout):
    """The jitted forward of one denoising step: ``(model, inputs, state, step) -> (out, state, stats)``."""

    def forward(model, inputs, state, step):
        text = TextTokens("last", TEXT_TOKENS, inputs["valid_len"])
        attn_fn = make_attn_fn(config, layout=layout, step=step, phase="sparse", text=text)
        return model(
            inputs["latents"],
            inputs["timestep"],
            inputs["text"],
            inputs["text_mask"],
            inputs["pooled"],
            inputs["guidance"],
            attn_fn=attn_fn,
            attn_state=state,
            return_attention=True,
        )

    return jax.jit(forward)


def time_setting(model, inputs, layout, config: AttentionConfig, steps: int) -> dict:
    cfg = model.config
    layers = cfg.num_layers + cfg.num_single_layers
    state = init_attention_state(
        config,
        num_layers=layers,
        batch=1,
        heads=cfg.num_attention_heads,
        head_dim=cfg.attention_head_dim,
        key=jax.random.key(0),
    )
    fn = make_forward(config, layout)
    t0 = time.perf_counter()
    out, state, stats = fn(model, inputs, state, jnp.int32(0))
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    times = []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        out, state, stats = fn(model, inputs, state, jnp.int32(i))
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) * 1e3)
    dense_layer = jnp.asarray(stats.dense)  # [L]
    layer_density = jnp.asarray(stats.density).mean(axis=(-1, -2))  # [L]
    sparse = ~dense_layer
    return {
        "step_ms": statistics.median(times),
        "step_ms_all": times,
        "first_call_s": first,
        "finite": bool(jnp.isfinite(out).all()),
        "density_all_layers": float(layer_density.mean()),
        "density_sparse_layers": float((layer_density * sparse).sum() / sparse.sum())
        if bool(sparse.any())
        else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file (written atomically after every setting)")
    parser.add_argument("--only", default=None, help="comma-separated subset of the settings")
    parser.add_argument("--steps", type=int, default=2, help="warm forwards timed per setting (>= 1)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="real text tokens of the 256")
    parser.add_argument("--dense-step-ms", type=float, default=None, help="dense step of an earlier run")
    parser.add_argument("--no-share", action="store_true", help="skip the attention-share forwards")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke test on a tiny config (not a benchmark)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or not 1 <= args.prompt_tokens <= TEXT_TOKENS:
        parser.error(f"--steps >= 1 and 1 <= --prompt-tokens <= {TEXT_TOKENS}")
    chosen = settings(dense_layers=0 if args.tiny else None)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(chosen))
        if unknown:
            parser.error(f"unknown --only settings {unknown}; choose from {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    config = TINY if args.tiny else HUNYUAN_PRESETS["hunyuanvideo-t2v"]
    height, width, frames = (64, 64, 9) if args.tiny else (HEIGHT, WIDTH, FRAMES)
    if args.tiny:
        chosen = {
            k: dataclasses.replace(v, svg2=dataclasses.replace(v.svg2, num_q_clusters=8, num_k_clusters=16))
            if v.method == "svg2"
            else v
            for k, v in chosen.items()
        }
    info = device_info()
    print(info)
    bf16 = jnp.bfloat16
    model = random_model(
        lambda: HunyuanVideoTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=bf16, param_dtype=bf16)
    )
    t_lat, h_lat, w_lat = (frames - 1) // 4 + 1, height // 8, width // 8
    layout = VideoLayout(
        num_frames=t_lat // config.patch_size_t,
        tokens_per_frame=(h_lat // config.patch_size) * (w_lat // config.patch_size),
        text_placement="last",
        num_text_tokens=TEXT_TOKENS,
    )
    keys = jax.random.split(jax.random.key(1), 3)
    valid = jnp.asarray([args.prompt_tokens], jnp.int32)
    inputs = dict(
        latents=jax.random.normal(keys[0], (1, config.in_channels, t_lat, h_lat, w_lat), jnp.bfloat16),
        timestep=jnp.asarray([900.0], jnp.float32),
        text=0.1 * jax.random.normal(keys[1], (1, TEXT_TOKENS, config.text_embed_dim), jnp.bfloat16),
        text_mask=(jnp.arange(TEXT_TOKENS)[None, :] < valid[:, None]).astype(jnp.int32),
        pooled=0.1 * jax.random.normal(keys[2], (1, config.pooled_projection_dim), jnp.bfloat16),
        guidance=jnp.asarray([6000.0], jnp.float32),
        valid_len=valid,
    )
    args_in = [inputs[k] for k in ("latents", "timestep", "text", "text_mask", "pooled", "guidance")]
    share = {} if args.no_share else attention_share(model, lambda m, **kw: m(*args_in, **kw), reps=2)
    print(f"{layout.seq_len} tokens; {share}")
    dense_ms, results = args.dense_step_ms, []
    for label, attention in chosen.items():
        row = {"model": "hunyuanvideo-t2v-720p", "tokens": layout.seq_len, "setting": label}
        row.update(time_setting(model, inputs, layout, attention, args.steps))
        if label == "dense":
            dense_ms = row["step_ms"]
            row.update(share)
        if dense_ms is None:
            raise SystemExit("no dense step time: include 'dense' in --only or pass --dense-step-ms")
        warm = preset_dense_steps(label)
        row["projected_50_step_s"] = (warm * dense_ms + (STEPS - warm) * row["step_ms"]) / 1e3
        row["step_speedup"] = dense_ms / row["step_ms"]
        row["projected_speedup"] = STEPS * dense_ms / 1e3 / row["projected_50_step_s"]
        results.append(row)
        print_table([row], COLUMNS)
        write_json(args.out, {**info, "command": " ".join(sys.argv), "results": results})
    print_table(results, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
