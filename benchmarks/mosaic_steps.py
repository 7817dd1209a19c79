"""Tiles per softmax step in the Mosaic engine: one 64-row key tile per step against two.

    python benchmarks/mosaic_steps.py --out benchmarks/results/mosaic_steps_h200.json

The Mosaic kernels (``pallas_kernels/mosaic_flash.py``) run one online-softmax update per key tile. With
64-row tiles (what the cluster kernel walks: short run tails) that update's fixed costs (barriers, row
max and sum, the accumulator rescale) are paid twice as often as with 128-row tiles.
``tiles_per_step=2`` multiplies Q by two tiles per step instead. Timed here, all at B1 H40 N75600 D128
bf16 (Wan 720p), each variant against the one-tile kernel's output (relative error):

* ``svg2``: the cluster kernel on the SVG2 preset's seriated plan (Gaussian-mixture tokens, 300 × 1000
  clusters, the plan ``svg2_attention`` builds);
* ``random``: the cluster kernel on random 300 × 1000 maps (each pair with probability 0.13, what random
  weights look like);
* ``block``: the block kernel on random lists of 64-row key blocks (density 0.15), and 128-row blocks for
  scale.

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
from svg_jax.svg2 import SVG2Cache, svg2_plan  # noqa: E402

B, N, H, D = 1, 75600, 40, 128
STEPS = ((1, 2), (2, 4), (1, 4))  # (tiles_per_step, num_stages); (1, 4) separates the deeper ring's share


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
                "ms": ms,
                "loop_ms": statistics.median(loops[cfg]),
                "loop_samples_ms": loops[cfg],
                "eff_tflops": computed_flops / (ms * 1e-3) / 1e12,
                "useful_tflops": useful_flops / (ms * 1e-3) / 1e12,
                "tile_density": computed_flops / attention_flops(B, H, N, N, D),
                "density": useful_flops / attention_flops(B, H, N, N, D),
                "ideal_ms": useful_flops / attention_flops(B, H, N, N, D) * dense_ms,
                "rel_err_vs_one_tile": errs[cfg],
            }
        )
    columns = ["problem", "tiles_per_step", "num_stages", "ms", "loop_ms", "eff_tflops", "useful_tflops"]
    print_table(rows, columns + ["tile_density", "rel_err_vs_one_tile"])
    return rows


def cluster_fn(per_step, stages):
    """The cluster kernel taking the plan as an argument (closed over, XLA folds it as a constant: slow)."""
    return lambda q, k, v, plan: cluster_sparse_attention_mosaic(
        q, k, v, plan, sm_scale=D**-0.5, num_stages=stages, tiles_per_step=per_step
    )


def svg2_problem(key):
    config = svg2.PRESETS["wan2.1-t2v-14b-720p"]
    q, k, v = mixture_qkv(key, B, N, H, D, 8, jnp.bfloat16)
    cache = SVG2Cache.create(1, B, H, config, D).layer(0)
    plan, _, _ = jax.jit(lambda q, k, c: svg2_plan(q, k, config=config, cache=c, key=key))(q, k, cache)
    sort = lambda x, perm: jnp.take_along_axis(x, jnp.swapaxes(perm, 1, 2)[..., None], axis=1)
    qs, ks, vs = sort(q, plan.q_perm), sort(k, plan.k_perm), sort(v, plan.k_perm)
    tiles = jax.jit(functools.partial(mosaic_chunk_plan, n=N))(plan)
    sizes = plan.q_cluster_sizes.astype(jnp.float32), plan.k_cluster_sizes.astype(jnp.float32)
    useful = jnp.sum(sizes[0][..., :, None] * sizes[1][..., None, :] * plan.cluster_map)
    return (qs, ks, vs), tiles, float(useful) * 4 * D


def random_problem(key, density):
    rng = np.random.default_rng(0)
    qs, kc = random_clusters(rng, B, H, N, 300), random_clusters(rng, B, H, N, 1000)
    cmap = jax.random.bernoulli(key, density, (B, H, 300, 1000))
    plan_fn = functools.partial(cluster_tile_plan, num_q=N, num_k=N, block_q=128, block_k=64, row_align=8)
    tiles = jax.jit(plan_fn)(qs, kc, cmap)  # full width: random maps overflow the narrow lists
    useful = jnp.sum(qs[..., :, None] * kc[..., None, :] * cmap, dtype=jnp.float32)
    return tiles, float(useful) * 4 * D


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", default=["svg2", "random", "block"])
    args = p.parse_args(argv)
    key = jax.random.key(0)
    dense = time_cudnn_dense(key, B, H, N, D)
    rows = []
    if "svg2" in args.only:
        operands, tiles, useful = svg2_problem(key)
        computed = float(tiles.computed_rows()) * 128 * 4 * D
        rows += ab("svg2", cluster_fn, (*operands, tiles), computed, useful, dense["median_ms"], args.rounds)
    q, k, v = (jax.random.normal(kk, (B, N, H, D), jnp.bfloat16) for kk in jax.random.split(key, 3))
    if "random" in args.only:
        tiles, useful = random_problem(jax.random.fold_in(key, 13), 0.13)
        computed = float(tiles.computed_rows()) * 128 * 4 * D
        rows += ab(
            "random 0.13", cluster_fn, (q, k, v, tiles), computed, useful, dense["median_ms"], args.rounds
        )
    if "block" in args.only:
        for bk in (64, 128):
            nqb, nkb = -(-N // 128), -(-N // bk)
            idx, cnt = random_block_lists(jax.random.fold_in(key, bk), B, H, nqb, nkb, 0.15)
            computed = float(jnp.sum(cnt)) * 128 * bk * 4 * D

            def make(per_step, stages, bk=bk, idx=idx, cnt=cnt):
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
                )

            steps = STEPS if bk == 64 else ((1, 2),)  # four 128-row tiles do not fit shared memory
            rows += ab(
                f"block {bk}", make, (q, k, v), computed, computed, dense["median_ms"], args.rounds, steps
            )
    write_report(
        args.out, "mosaic_steps", argv, shape=dict(B=B, N=N, H=H, D=D), dense_cudnn=dense, results=rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
