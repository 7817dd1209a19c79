"""svg-jax demo: the whole pipeline on a tiny Wan-architecture model, on a CPU in about a minute.

    make demo          # or: .venv/bin/python examples/demo.py [--out demo_out --steps 10]

1. writes a deterministic tiny Wan 2.1 checkpoint in diffusers format (random weights, seed 0);
2. converts it with ``svg-jax convert`` (the same command as for a downloaded checkpoint);
3. samples the same clip (same noise, same random "prompt embeddings") with ``svg-jax generate`` three
   times: dense, SVG1 and SVG2 attention, UniPC, classifier-free guidance, dense warm-up then sparse;
4. prints per-step attention density, the final latents' error against the dense run and the time, and
   writes PNG plots: SVG2's cluster map and the token-level mask it implies for one layer (permuted and
   in video order), and SVG1's spatial/temporal classification of every head at every step.

Honest labelling: the weights are random, so the "video" is noise and the densities say nothing about a
trained model's sparsity (trained Wan attention is far more concentrated: SVG2 keeps ~10–30% there). The
point is that the real pipeline runs end to end and where the sparsity goes. On a CPU every kernel runs
its XLA implementation; GPU speed comes from ``benchmarks/``.
"""

import argparse
import contextlib
import io
import json
import pathlib
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from svg_jax import SVG2Cache, SVG2Config, load
from svg_jax.cli import main as svg_jax_cli
from svg_jax.convert.synthetic import write_random_diffusers_checkpoint
from svg_jax.models import WanConfig
from svg_jax.svg2 import svg2_plan

# A Wan 2.1 block stack, shrunk: 4 layers, 4 heads × 32, 16 latent channels as the real VAE has.
TINY_WAN = WanConfig(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    text_dim=64,
    ffn_dim=256,
    num_layers=4,
    rope_max_seq_len=64,
)
TEXT_TOKENS = 24
QK_SCALE = 3.0  # query/key norm gain of the random weights: sharper attention than N(0, 1) weights give


def cli(*argv: str) -> None:
    with contextlib.redirect_stdout(
        io.StringIO()
    ):  # each command prints a JSON summary; keep the table clean
        code = svg_jax_cli([str(a) for a in argv])
    if code:
        sys.exit(f"demo: `svg-jax {' '.join(map(str, argv))}` failed with exit code {code}")


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def read_run(folder: pathlib.Path) -> tuple[np.ndarray, list[dict], dict]:
    latents = load_file(folder / "latents.safetensors")["latents"]
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return latents, log, json.loads((folder / "run.json").read_text())


def plot_svg1_heads(log: list[dict], path: pathlib.Path) -> None:
    """Heat map: rows = (layer, head), columns = steps; dense / spatial / temporal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    steps = len(log)
    grid = np.array([[np.asarray(layer["head_choice"])[0, 0] for layer in rec["layers"]] for rec in log])
    grid = grid.reshape(steps, -1).T  # [L·H, S] (conditional pass, batch 0)
    heads = grid.shape[0] // len(log[0]["layers"])
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = ListedColormap(["#bbbbbb", "#1f77b4", "#ff7f0e"])
    ax.imshow(grid + 1, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer · head")
    ax.set_yticks(np.arange(0, grid.shape[0], heads), [f"L{i}" for i in range(len(log[0]["layers"]))])
    ax.set_title("SVG1 head classification (grey dense, blue spatial, orange temporal)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capture_qk(checkpoint: pathlib.Path, latents: np.ndarray, prompt: np.ndarray, timestep: float):
    """q and k of every layer's self-attention ``[L, B, N, H, D]`` (dense forward at ``timestep``)."""
    model, _ = load(checkpoint, dtype=jnp.float32)

    def attn(q, k, v, *, layer, state):
        return jax.nn.dot_product_attention(q, k, v), state, {"q": q, "k": k}

    _, _, caught = model(
        jnp.asarray(latents),
        jnp.full((latents.shape[0],), timestep),
        jnp.asarray(prompt),
        attn_fn=attn,
        return_attention=True,
    )
    return model, caught["q"], caught["k"]


def plot_svg2_map(model, q, k, config: SVG2Config, layer: int, path: pathlib.Path) -> dict:
    """One layer's cluster map (head 0) and its token mask, sorted by cluster and in video order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = model.config
    cache = SVG2Cache.create(1, 1, cfg.num_attention_heads, config, cfg.attention_head_dim).layer(0)
    plan, _, stats = svg2_plan(q[layer], k[layer], config=config, cache=cache, key=jax.random.key(0))
    cmap = np.asarray(plan.cluster_map[0, 0, : config.num_q_clusters, : config.num_k_clusters])
    ql, kl = np.asarray(plan.q_labels[0, 0]), np.asarray(plan.k_labels[0, 0])
    mask = cmap[ql][:, kl]  # [N, N] in video (frame-major) order
    qp, kp = np.asarray(plan.q_perm[0, 0]), np.asarray(plan.k_perm[0, 0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    panels = (
        (cmap, "cluster map (query × key cluster)", "key cluster", "query cluster"),
        (mask[qp][:, kp], "token mask, tokens sorted by cluster", "key (permuted)", "query (permuted)"),
        (mask, "same mask in video order", "key token", "query token"),
    )
    for ax, (img, title, xl, yl) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="Greys", interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    density = float(stats.density[0, 0])
    fig.suptitle(
        f"SVG2, layer {layer}, head 0: black = computed, density {density:.3f} (random weights)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"density": density, "recall": float(stats.estimated_recall[0, 0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_out", help="work folder (replaced); default %(default)s")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps; default %(default)s")
    parser.add_argument("--frames", type=int, default=17, help="video frames (4k+1); default %(default)s")
    parser.add_argument(
        "--size", type=int, default=256, help="video height = width in pixels; default %(default)s"
    )
    parser.add_argument("--dense-steps", type=int, default=3, help="dense warm-up steps; default %(default)s")
    parser.add_argument("--no-plots", action="store_true", help="skip the matplotlib PNGs")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.dense_steps < 0 or args.dense_steps >= args.steps:
        parser.error("need --steps >= 1 and 0 <= --dense-steps < --steps")

    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"svg-jax demo on {jax.default_backend().upper()} → {out}/ (random weights: the frames are noise)")

    t0 = time.perf_counter()
    write_random_diffusers_checkpoint(out / "tiny_wan_diffusers", TINY_WAN, seed=0, qk_scale=QK_SCALE)
    cli("convert", out / "tiny_wan_diffusers", out / "tiny_wan", "--dtype", "fp32", "--quiet")
    rng = np.random.default_rng(0)
    np.savez(
        out / "prompt.npz", prompt_embeds=rng.standard_normal((TEXT_TOKENS, TINY_WAN.text_dim), np.float32)
    )
    np.savez(
        out / "negative.npz", negative_prompt_embeds=np.zeros((TEXT_TOKENS, TINY_WAN.text_dim), np.float32)
    )
    print(f"tiny checkpoint written and converted in {time.perf_counter() - t0:.1f} s")

    common = [
        "generate",
        "--checkpoint",
        out / "tiny_wan",
        "--prompt-embeds",
        out / "prompt.npz",
        "--negative-embeds",
        out / "negative.npz",
        "--height",
        args.size,
        "--width",
        args.size,
        "--frames",
        args.frames,
        "--steps",
        args.steps,
        "--guidance",
        5.0,
        "--flow-shift",
        3.0,
        "--seed",
        0,
        "--dtype",
        "fp32",
        "--quiet",
    ]
    num_tokens = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    q_clusters, k_clusters = max(2, num_tokens // 80), max(4, num_tokens // 20)
    methods = {
        "dense": [],
        "svg1": ["--density", 0.3, "--dense-steps", args.dense_steps, "--dense-layers", 1],
        "svg2": [
            "--q-clusters",
            q_clusters,
            "--k-clusters",
            k_clusters,
            "--top-p",
            0.9,
            "--dense-steps",
            args.dense_steps,
            "--dense-layers",
            1,
        ],
    }
    runs = {}
    for method, extra in methods.items():
        cli(*common, "--attention", method, *extra, "--out", out / method)
        runs[method] = read_run(out / method)

    dense_latents = runs["dense"][0]
    print(
        f"\n{num_tokens} video tokens, {TINY_WAN.num_layers} layers × {TINY_WAN.num_attention_heads} heads, "
        f"{args.steps} UniPC steps with CFG 5 ({args.dense_steps} dense warm-up steps, layer 0 always dense)"
    )
    header = (
        f"{'method':<7} {'per-step attention density':<{6 * args.steps}} {'mean sparse':>11} "
        f"{'err vs dense':>12} {'sample s':>9}"
    )
    print(header)
    print("-" * len(header))
    for method, (latents, log, run) in runs.items():
        per_step = " ".join(f"{r['density']:.2f}" for r in log)
        mean = run["summary"]["mean_sparse_density"]
        err = rel_err(latents, dense_latents)
        print(
            f"{method:<7} {per_step:<{6 * args.steps}} {'' if mean is None else f'{mean:.3f}':>11} "
            f"{err:>12.4f} {run['summary']['sample_s']:>9.1f}"
        )
    print(
        "density = fraction of each self-attention score matrix computed (1 = dense); err vs dense = "
        "relative L2 error of the final latents; sample s includes compilation."
    )

    if not args.no_plots:
        svg2_log = runs["svg2"][1]
        first_sparse = args.dense_steps
        model, q, k = capture_qk(
            out / "tiny_wan",
            np.asarray(load_file(out / "svg2" / "latents.safetensors")["latents"]),
            np.load(out / "prompt.npz")["prompt_embeds"][None],
            svg2_log[first_sparse]["timestep"],
        )
        cfg = SVG2Config(
            num_q_clusters=q_clusters,
            num_k_clusters=k_clusters,
            top_p=0.9,
            min_k_cluster_ratio=0.1,
            kmeans_init_iters=50,
            kmeans_warm_iters=2,
            dense_steps=0,
            dense_layers=0,
        )
        info = plot_svg2_map(
            model, q, k, cfg, layer=TINY_WAN.num_layers - 1, path=out / "svg2_cluster_map.png"
        )
        plot_svg1_heads(runs["svg1"][1], out / "svg1_heads.png")
        print(
            f"plots: {out / 'svg2_cluster_map.png'} (last layer, density {info['density']:.3f}), "
            f"{out / 'svg1_heads.png'}"
        )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
