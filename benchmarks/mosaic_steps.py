"""Engine variants of the Mosaic kernels: key tiles per softmax step, ring depth, intra-warpgroup overlap.

    python benchmarks/mosaic_steps.py --out benchmarks/results/mosaic_steps_h200.json
    python benchmarks/mosaic_steps.py --only block svg2 --steps 1,2,0 1,2,1 --rounds 3 \
        --block-densities 0.1 0.2 0.3 --out …   # overlap off / on

The Mosaic kernels (``pallas_kernels/mosaic_flash.py``) run one online-softmax update per key tile. With
64-row tiles (what the cluster kernel walks: short run tails) that update's fixed costs (barriers, row
max and sum, the accumulator rescale) are paid twice as often as with 128-row tiles.
``tiles_per_step=2`` multiplies Q by two tiles per step instead; ``overlap`` issues a step's ``Q Kᵀ``
with the previous step's ``P V`` and runs the softmax while the latter is in flight; ``fold_scale``
applies the softmax scale inside the exponent (one fused multiply-add per logit, not a multiply and a
subtract). A variant is ``tiles_per_step,num_stages,overlap[,fold_scale]`` (``--steps``; fold_scale 0 if
left out). Timed here, all at B1 H40 N75600 D128 bf16 (Wan
720p), each variant against the first one's output (relative error):

* ``svg2``: the cluster kernel on the SVG2 preset's seriated plan (Gaussian-mixture tokens, 300 × 1000
  clusters, the plan ``svg2_attention`` builds);
* ``random``: the cluster kernel on random 300 × 1000 maps (each pair with probability 0.13, what random
  weights look like);
* ``aligned``: the cluster kernel with the edge-only mask on those random maps laid out in aligned query
  tiles (what SVG2's ``"auto"`` ran on the random-weight Wan 14B layers);
* ``paged``: the paged kernel (16-row key pages) on the same aligned layout (``tiles_per_step`` must be 1);
* ``block``: the block kernel on random lists of 64-row and 128-row key blocks (density 0.15, and
  ``--block-densities`` more for 128-row blocks).

"ms" is the GPU time of the attention kernel alone (profiled), "loop_ms" the jitted call (with the
operand padding). Effective TFLOP/s count the computed tiles.
"""

import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import random_block_lists, random_clusters  # noqa: E402
from harness import (  # noqa: E402
    attention_flops,
    device_op_times,
    print_table,
    rel_error,
    time_cudnn_dense,
    time_loop,
    write_report,
)
from svg2 import mixture_qkv, mosaic_chunk_plan  # noqa: E402

from svg_jax import svg2  # noqa: E402
from svg_jax.pallas_kernels import cluster_tile_plan  # noqa: E402
from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic  # noqa: E402
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic  # noqa: E402
from svg_jax.pallas_kernels.page_plan import page_plan  # noqa: E402
from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import paged_sparse_attention_mosaic  # noqa: E402
from svg_jax.pallas_kernels.tile_aligned import align_plan  # noqa: E402
from svg_jax.svg2 import SVG2Cache, svg2_plan  # noqa: E402

B, N, H, D = 1, 75600, 40, 128
# (tiles_per_step, num_stages, overlap, fold_scale); (1, 4) separates the deeper ring's share
STEPS = (
    (1, 2, False, False, False),
    (2, 4, False, False, False),
    (1, 4, False, False, False),
    (1, 2, True, False, False),
)


def kernel_ms(fn, *args) -> float:
    prof = device_op_times(fn, *args, reps=3)
    return sum(op["ms"] for op in prof["ops"] if "sparse_flash" in op["name"])


def ab(name, make_fn, args, computed_flops, useful_flops, dense_ms, rounds, steps=STEPS) -> list[dict]:
    """Time the step variants of one problem, alternating them ``rounds`` times."""
    fns = {cfg: jax.jit(make_fn(*cfg)) for cfg in steps}
    base = np.asarray(fns[steps[0]](*args).astype(jnp.float32))
    errs = {cfg: rel_error(fn(*args).astype(jnp.float32), base) for cfg, fn in fns.items()}
    loops = {cfg: [] for cfg in steps}
    for _ in range(rounds):
        for cfg, fn in fns.items():
            loops[cfg].append(time_loop(fn, *args, calls=5, rounds=1)["median_ms"])
    rows = []
    for cfg, fn in fns.items():
        ms = kernel_ms(fn, *args)
        rows.append(
            {
                "problem": name,
                "tiles_per_step": cfg[0],
                "num_stages": cfg[1],
                "overlap": cfg[2],
                "fold_scale": cfg[3],
                "half_tiles": cfg[4],
                "ms": ms,
                "loop_ms": statistics.median(loops[cfg]),
                "loop_samples_ms": loops[cfg],
                "eff_tflops": computed_flops / (ms * 1e-3) / 1e12,
                "useful_tflops": useful_flops / (ms * 1e-3) / 1e12,
                "tile_density": computed_flops / attention_flops(B, H, N, N, D),
                "density": useful_flops / attention_flops(B, H, N, N, D),
                "ideal_ms": useful_flops / attention_flops(B, H, N, N, D) * dense_ms,
                "rel_err_vs_first": errs[cfg],
            }
        )
    columns = [
        "problem",
        "tiles_per_step",
        "num_stages",
        "overlap",
        "fold_scale",
        "ms",
        "loop_ms",
        "eff_tflops",
        "useful_tflops",
    ]
    print_table(rows, columns + ["tile_density", "rel_err_vs_first"])
    return rows


def cluster_fn(per_step, stages, overlap, fold_scale=False, half=False):
    """The cluster kernel taking the plan as an argument (closed over, XLA folds it as a constant: slow)."""
    opts = dict(num_stages=stages, tiles_per_step=per_step, overlap=overlap, fold_scale=fold_scale)
    return lambda q, k, v, plan: cluster_sparse_attention_mosaic(q, k, v, plan, sm_scale=D**-0.5, **opts)


def svg2_sorted(key):
    """Gaussian-mixture q, k, v sorted by the SVG2 preset's plan, and that plan: ``((qs, ks, vs), plan)``."""
    config = svg2.PRESETS["wan2.1-t2v-14b-720p"]
    q, k, v = mixture_qkv(key, B, N, H, D, 8, jnp.bfloat16)
    cache = SVG2Cache.create(1, B, H, config, D).layer(0)
    plan, _, _ = jax.jit(lambda q, k, c: svg2_plan(q, k, config=config, cache=c, key=key))(q, k, cache)
    sort = lambda x, perm: jnp.take_along_axis(x, jnp.swapaxes(perm, 1, 2)[..., None], axis=1)
    return (sort(q, plan.q_perm), sort(k, plan.k_perm), sort(v, plan.k_perm)), plan


def svg2_problem(key):
    (qs, ks, vs), plan = svg2_sorted(key)
    tiles = jax.jit(functools.partial(mosaic_chunk_plan, n=N))(plan)
    sizes = plan.q_cluster_sizes.astype(jnp.float32), plan.k_cluster_sizes.astype(jnp.float32)
    useful = jnp.sum(sizes[0][..., :, None] * sizes[1][..., None, :] * plan.cluster_map)
    return (qs, ks, vs), tiles, float(useful) * 4 * D


def gaussian_qkv(key):
    return tuple(jax.random.normal(kk, (B, N, H, D), jnp.bfloat16) for kk in jax.random.split(key, 3))


def random_problem(key):
    """Gaussian q, k, v and random 300 x 1000 cluster maps at density 0.13: ``(operands, plan, useful
    FLOPs)``, as :func:`svg2_problem` returns them."""
    return (gaussian_qkv(key), *random_plan(key, 0.13))


def random_maps(key, density):
    """Random 300 x 1000 cluster sizes and maps of this density: ``(q sizes, k sizes, map, useful FLOPs)``."""
    rng = np.random.default_rng(0)
    qs, kc = random_clusters(rng, B, H, N, 300), random_clusters(rng, B, H, N, 1000)
    cmap = jax.random.bernoulli(jax.random.fold_in(key, 13), density, (B, H, 300, 1000))
    useful = jnp.sum(qs[..., :, None] * kc[..., None, :] * cmap, dtype=jnp.float32)
    return qs, kc, cmap, float(useful) * 4 * D


def random_plan(key, density):
    """Random 300 x 1000 cluster maps of this density and their chunk plan: ``(plan, useful FLOPs)``."""
    qs, kc, cmap, useful = random_maps(key, density)
    plan_fn = functools.partial(cluster_tile_plan, num_q=N, num_k=N, block_q=128, block_k=64, row_align=8)
    tiles = jax.jit(plan_fn)(qs, kc, cmap)  # full width: random maps overflow the narrow lists
    return tiles, useful


def aligned_problems(key, q, density, page_rows=16):
    """The random maps in aligned query tiles: ``(aligned q, aligned chunk plan, page plan, the aligned
    layout, useful FLOPs)`` (both plans at full width)."""
    qs, kc, cmap, useful = random_maps(key, density)
    plan_fn = functools.partial(cluster_tile_plan, num_q=N, num_k=N, block_q=128, block_k=64, row_align=8)
    al, aligned = jax.jit(functools.partial(align_plan, num_q=N))(jax.jit(plan_fn)(qs, kc, cmap), qs, cmap)
    src = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, H, N))
    qa = jnp.take_along_axis(q, jnp.swapaxes(al.source(src), 1, 2)[..., None], axis=1)  # [B, rows, H, D]
    pages = functools.partial(page_plan, num_q=al.rows, num_k=N, block_q=128, block_k=64, page_rows=page_rows)
    return qa, aligned, jax.jit(pages)(al.sizes, kc, al.cluster_map), al, useful


def real_rows(out, al):
    """The aligned output's real rows in sorted order (half tiles leave the padding rows unwritten)."""
    return jnp.take_along_axis(out, jnp.swapaxes(al.dst, 1, 2)[..., None], axis=1)


def edge_fn(per_step, stages, overlap, fold_scale=False, half=False, *, al):
    """The cluster kernel with the edge-only mask on an aligned plan, its real rows; ``half``: tiles of at
    most 64 real rows on one warpgroup (``al.tile_rows``)."""
    opts = dict(num_stages=stages, tiles_per_step=per_step, overlap=overlap, fold_scale=fold_scale)
    opts["tile_rows"] = al.tile_rows if half else None
    return lambda q, k, v, plan: real_rows(
        cluster_sparse_attention_mosaic(q, k, v, plan, sm_scale=D**-0.5, edge_only=True, **opts), al
    )


def paged_fn(per_step, stages, overlap, fold_scale=False, half=False, *, al):
    """The paged kernel (one key tile per step only), its real rows; ``half`` as :func:`edge_fn`."""
    if per_step != 1:
        raise SystemExit(f"the paged kernel walks one key tile per step; got tiles_per_step={per_step}")
    opts = dict(num_stages=stages, overlap=overlap, fold_scale=fold_scale)
    opts["tile_rows"] = al.tile_rows if half else None
    return lambda q, k, v, plan: real_rows(
        paged_sparse_attention_mosaic(q, k, v, plan, sm_scale=D**-0.5, **opts), al
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--only",
        nargs="+",
        default=["svg2", "random", "block"],
        choices=["svg2", "random", "aligned", "paged", "block"],
    )
    p.add_argument(
        "--steps", nargs="+", default=None, help="engine variants as tiles_per_step,num_stages,overlap (0/1)"
    )
    p.add_argument("--block-densities", type=float, nargs="*", default=[], help="more 128-row block runs")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = list(STEPS)
    else:
        args.steps = [tuple(int(x) for x in s.split(",")) for s in args.steps]
        if any(len(s) not in (3, 4, 5) for s in args.steps):
            p.error(
                "--steps takes tiles_per_step,num_stages,overlap[,fold_scale[,half_tiles]], e.g. 1,2,1 or "
                "1,4,1,0,1"
            )
        args.steps = [(*s[:2], *(bool(x) for x in (*s[2:], 0, 0)[:3])) for s in args.steps]
    key = jax.random.key(0)
    dense = time_cudnn_dense(key, B, H, N, D)
    rows = []
    problems = []  # (name, kernel factory, operands with the plan last, useful FLOPs); half tiles: aligned

    if "svg2" in args.only:
        operands, tiles, useful = svg2_problem(key)
        problems.append(("svg2", cluster_fn, (*operands, tiles), useful))
    q, k, v = gaussian_qkv(key)
    if "random" in args.only:
        tiles, useful = random_plan(key, 0.13)
        problems.append(("random 0.13", cluster_fn, (q, k, v, tiles), useful))
    if "aligned" in args.only or "paged" in args.only:
        qa, aligned, pages, al, useful = aligned_problems(key, q, 0.13)
        if "aligned" in args.only:
            edge = functools.partial(edge_fn, al=al)
            problems.append(("aligned 0.13", edge, (qa, k, v, aligned), useful))
        if "paged" in args.only:
            paged = functools.partial(paged_fn, al=al)
            problems.append(("paged16 0.13", paged, (qa, k, v, pages), useful))
    for name, make_fn, operands, useful in problems:
        computed = float(operands[-1].computed_rows()) * 128 * 4 * D  # key rows x query tiles x 128 rows
        steps = args.steps if make_fn is not cluster_fn else [s for s in args.steps if not s[4]]
        rows += ab(name, make_fn, operands, computed, useful, dense["median_ms"], args.rounds, steps)
    if "block" in args.only:
        for bk, density in [(64, 0.15), (128, 0.15)] + [(128, d) for d in args.block_densities]:
            nqb, nkb = -(-N // 128), -(-N // bk)
            idx, cnt = random_block_lists(jax.random.fold_in(key, bk), B, H, nqb, nkb, density)
            computed = float(jnp.sum(cnt)) * 128 * bk * 4 * D

            def make(per_step, stages, overlap, fold_scale, half, bk=bk, idx=idx, cnt=cnt):
                return lambda q, k, v: block_sparse_attention_mosaic(
                    q,
                    k,
                    v,
                    idx,
                    cnt,
                    block_k=bk,
                    sm_scale=D**-0.5,
                    num_stages=stages,
                    tiles_per_step=per_step,
                    overlap=overlap,
                    fold_scale=fold_scale,
                )

            steps = [s for s in args.steps if not s[4] and (bk == 64 or (s[0] == 1 and s[1] <= 3))]
            rows += ab(  # (four 128-row tiles do not fit shared memory)
                f"block {bk} d={density}",
                make,
                (q, k, v),
                computed,
                computed,
                dense["median_ms"],
                args.rounds,
                steps,
            )
    write_report(
        args.out, "mosaic_steps", argv, shape=dict(B=B, N=N, H=H, D=D), dense_cudnn=dense, results=rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
