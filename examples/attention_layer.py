"""Both sparse-attention kernels on a small synthetic video-like attention layer (CPU-sized).

    .venv/bin/python examples/attention_layer.py [--frames 6 --height 8 --width 12]

The queries and keys are made to look like a video DiT's: each token carries a smooth function of its
(frame, row, column) position plus a per-token "semantic" component shared by tokens of the same object,
so attention concentrates on nearby frames (spatial heads), on the same position across frames
(temporal heads), and on semantically similar tokens. On that layer the demo runs:

* SVG1 (``svg1_attention``): per-head spatial/temporal profiling, layout permutation and the fixed-block
  band kernel ``block_sparse_attention``;
* SVG2 (``svg2_attention``): k-means of Q and K, top-p cluster selection and the cluster kernel
  ``cluster_sparse_attention``;

and prints, per method, the attention density, the share of the dense attention mass the sparse mask
keeps, the error against dense attention (the approximation the method makes), the kernel's error
against its exact masked oracle (must be ~1e-7 in float32), and the time. On a CPU the Pallas kernels
run in interpret mode (the grid steps one by one), so the times only show that everything runs; GPU
speed comes from ``benchmarks/`` (see the README).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from svg_jax import VideoLayout
from svg_jax.pallas_kernels import masked_attention_reference
from svg_jax.svg1 import SVG1Config, svg1_attention, svg1_attention_reference, svg1_mask_reference
from svg_jax.svg2 import SVG2Cache, SVG2Config, apply_svg2_plan, svg2_plan


def video_like_qkv(key, *, frames: int, height: int, width: int, heads: int, head_dim: int):
    """q, k, v ``[1, T·Hp·Wp, H, D]`` with spatial, temporal and semantic structure (frame-major order)."""
    t, y, x = jnp.meshgrid(jnp.arange(frames), jnp.arange(height), jnp.arange(width), indexing="ij")
    pos = jnp.stack([t, y, x], -1).reshape(-1, 3).astype(jnp.float32)  # [N, 3]
    n = pos.shape[0]
    k_freq, k_obj, k_proj, k_noise, k_v = jax.random.split(key, 5)
    freqs = jax.random.normal(k_freq, (heads, 3, head_dim // 2)) * jnp.array([0.9, 0.35, 0.35])[None, :, None]
    # Half of the heads favour same-frame tokens (spatial), half the same position (temporal).
    head_kind = (jnp.arange(heads) % 2)[:, None, None]  # [H, 1, 1]
    scale = jnp.where(
        head_kind == 0, jnp.array([3.0, 0.3, 0.3])[:, None], jnp.array([0.1, 2.0, 2.0])[:, None]
    )
    angles = jnp.einsum("nc,hcd->hnd", pos, freqs * scale)  # [H, N, D/2]
    positional = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], -1)  # [H, N, D]
    objects = jax.random.randint(k_obj, (n,), 0, 6)  # semantic label of each token
    semantic = jax.random.normal(k_proj, (6, heads, head_dim))[objects].transpose(1, 0, 2)  # [H, N, D]
    base = 2.0 * positional + 0.8 * semantic  # [H, N, D]
    noise = 0.3 * jax.random.normal(k_noise, (2, heads, n, head_dim))
    q = (base + noise[0]).transpose(1, 0, 2)[None]  # [1, N, H, D]
    k = (base + noise[1]).transpose(1, 0, 2)[None]  # [1, N, H, D]
    v = jax.random.normal(k_v, (1, n, heads, head_dim))
    return q, k, v


def kept_mass(probs, mask) -> float:
    """Mean over query rows of the dense attention probability inside the sparse mask."""
    return float(jnp.mean(jnp.sum(jnp.where(mask, probs, 0.0), axis=-1)))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, (time.perf_counter() - t0) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=6, help="latent frames T")
    parser.add_argument("--height", type=int, default=8, help="latent rows per frame")
    parser.add_argument("--width", type=int, default=12, help="latent columns per frame")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("frames", "height", "width", "heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.head_dim < 16:
        parser.error("--head-dim must be >= 16")

    layout = VideoLayout(num_frames=args.frames, tokens_per_frame=args.height * args.width)
    key = jax.random.PRNGKey(args.seed)
    q, k, v = video_like_qkv(
        key,
        frames=args.frames,
        height=args.height,
        width=args.width,
        heads=args.heads,
        head_dim=args.head_dim,
    )
    n = layout.seq_len
    print(
        f"svg-jax demo on {jax.default_backend().upper()}: B=1 N={n} "
        f"(T={args.frames} × F={layout.tokens_per_frame}) H={args.heads} D={args.head_dim}, float32"
    )
    if jax.default_backend() != "gpu":
        print("(Pallas kernels run in interpret mode here: times show the pipeline runs, not GPU speed)")

    dense, t_dense = timed(lambda: masked_attention_reference(q, k, v))
    probs = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(args.head_dim), axis=-1)  # [B,H,N,N]
    rows = [("dense (XLA oracle)", 1.0, 1.0, 0.0, None, t_dense, "")]

    for density in (0.5, 0.3):
        cfg = SVG1Config(
            density=density,
            num_sampled_rows=32,
            dense_steps=0,
            dense_layers=0,
            first_frame_sink=False,
            block_size=32,
        )
        (out, stats), ms = timed(
            lambda cfg=cfg: svg1_attention(
                q,
                k,
                v,
                config=cfg,
                layout=layout,
                key=jax.random.fold_in(key, 1),
                implementation="pallas_triton",
            )
        )
        oracle = svg1_attention_reference(q, k, v, stats.head_choice, config=cfg, layout=layout)
        kinds = "".join("ST"[int(c)] for c in np.asarray(stats.head_choice[0]))
        mask = svg1_mask_reference(cfg, layout, stats.head_choice)  # [B, H, N, N]
        rows.append(
            (
                f"SVG1 band, density {density}",
                float(stats.density.mean()),
                kept_mass(probs, mask),
                rel_err(out, dense),
                rel_err(out, oracle),
                ms,
                f"heads {kinds} (S=spatial, T=temporal)",
            )
        )

    for top_p in (0.9, 0.75):
        cfg = SVG2Config(
            num_q_clusters=8,
            num_k_clusters=24,
            top_p=top_p,
            min_k_cluster_ratio=0.1,
            kmeans_init_iters=20,
            kmeans_warm_iters=2,
            dense_steps=0,
            dense_layers=0,
        )
        cache = SVG2Cache.create(1, 1, args.heads, cfg, args.head_dim).layer(0)
        plan, _, stats = svg2_plan(q, k, config=cfg, cache=cache, key=jax.random.fold_in(key, 2))
        out, ms = timed(lambda plan=plan: apply_svg2_plan(q, k, v, plan, implementation="pallas_triton"))
        oracle = apply_svg2_plan(q, k, v, plan, implementation="xla")
        # Element mask in original token order: query i sees key j iff map[label_q(i), label_k(j)].
        row_maps = jnp.take_along_axis(plan.cluster_map, plan.q_labels[..., None], axis=2)  # [B, H, N, Ck]
        mask = jnp.take_along_axis(row_maps, plan.k_labels[:, :, None, :], axis=3)  # [B, H, N, N]
        rows.append(
            (
                f"SVG2 clusters, top_p {top_p}",
                float(stats.density.mean()),
                kept_mass(probs, mask),
                rel_err(out, dense),
                rel_err(out, oracle),
                ms,
                f"recall est. {float(stats.estimated_recall.mean()):.3f}",
            )
        )

    header = (
        f"{'method':<28} {'density':>8} {'mass kept':>10} {'err vs dense':>13} {'kernel vs oracle':>17}"
        f" {'time ms':>9}  notes"
    )
    print(header)
    print("-" * len(header))
    for name, dens, mass, err, kerr, ms, note in rows:
        kcol = "" if kerr is None else f"{kerr:.1e}"
        print(f"{name:<28} {dens:>8.3f} {mass:>10.3f} {err:>13.4f} {kcol:>17} {ms:>9.1f}  {note}")
    print(
        "mass kept = dense attention probability inside the sparse mask (mean over rows); this synthetic"
        " layer attends ~4 keys per query, so every dropped key shows in the error vs dense."
    )
    worst = max(r[4] for r in rows if r[4] is not None)
    if worst > 1e-5:
        print(f"FAILED: a kernel differs from its exact oracle by {worst:.2e} (> 1e-5)")
        return 1
    print("All kernels match their exact oracles (float32, ≤ 1e-5); the error vs dense is the sparsity's.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
