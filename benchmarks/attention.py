"""Benchmark the sparse-attention kernels against cuDNN dense attention (run it on the GPU).

    python benchmarks/attention.py --out benchmarks/results/attention_h100.json
    python benchmarks/attention.py --small          # CPU smoke run (interpreted kernels, tiny shapes)

For each shape: cuDNN dense, ``block_sparse_attention`` at densities 1.0 / 0.5 / 0.3 / 0.13 (random block
lists with exactly that fraction of key blocks per query block), and ``cluster_sparse_attention`` with
300 query × 1000 key clusters and ~30% / ~13% of cluster pairs selected at random. Reports the median
time after warm-up, effective TFLOP/s (FLOPs of the tiles actually computed / time), the speedup over
dense, and the relative error against the float32 oracle on a slice of query rows.
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import attention_flops, device_info, print_table, rel_error, time_fn, write_json  # noqa: E402

from svg_jax.pallas_kernels import (  # noqa: E402
    TritonConfig,
    block_sparse_attention,
    block_sparse_attention_reference,
    cluster_labels,
    cluster_sparse_attention,
    cluster_sparse_attention_from_plan,
    cluster_tile_plan,
    masked_attention_reference,
)

FULL_SHAPES = [(1, 12, 32760, 128), (1, 40, 75600, 128)]  # (B, H, N, D)
SMALL_SHAPES = [(1, 2, 700, 64)]
DENSITIES = (1.0, 0.5, 0.3, 0.13)
PAIR_DENSITIES = (0.3, 0.13)
CHECK_ROWS = 512


def random_block_lists(key, b, h, nqb, nkb, density):
    """Exactly ``round(density·nkb)`` random key blocks per query block, ascending."""
    count = max(1, round(density * nkb))
    scores = jax.random.uniform(key, (b, h, nqb, nkb))
    _, idx = jax.lax.top_k(scores, count)  # [B, H, nqb, count]
    idx = jnp.sort(idx, axis=-1).astype(jnp.int32)
    return idx, jnp.full((b, h, nqb), count, jnp.int32)


def random_clusters(rng, b, h, n, num):
    """Cluster sizes around n/num (×0.5–1.5), summing to n."""
    w = rng.uniform(0.5, 1.5, size=(b, h, num))
    sizes = np.floor(w / w.sum(-1, keepdims=True) * n).astype(np.int32)
    sizes[..., 0] += n - sizes.sum(-1)
    return jnp.asarray(sizes)


def block_rows(args, key, b, h, n, d, dtype, dense_ms, interpret, configs):
    q, k, v = args
    rows = []
    bq, bk = 128, 64
    nqb, nkb = -(-n // bq), -(-n // bk)
    for density in DENSITIES:
        idx, cnt = random_block_lists(jax.random.fold_in(key, int(density * 1000)), b, h, nqb, nkb, density)
        for block_q, block_k, warps, stages in configs:
            if (block_q, block_k) != (bq, bk):
                idx_c, cnt_c = random_block_lists(key, b, h, -(-n // block_q), -(-n // block_k), density)
            else:
                idx_c, cnt_c = idx, cnt
            fn = jax.jit(
                functools.partial(
                    block_sparse_attention,
                    block_q=block_q,
                    block_k=block_k,
                    implementation="pallas_triton",
                    interpret=interpret,
                    config=TritonConfig(num_warps=warps, num_stages=stages),
                )
            )
            t = time_fn(fn, q, k, v, idx_c, cnt_c, iters=5 if interpret else 20)
            computed = float(jnp.sum(cnt_c)) * block_q * block_k * 4 * d
            out = fn(q, k, v, idx_c, cnt_c)
            # Oracle on CHECK_ROWS query rows from the middle of the sequence, first two heads.
            qb0 = (n // 2) // block_q
            nb = max(1, CHECK_ROWS // block_q)
            sl = slice(qb0 * block_q, min(n, (qb0 + nb) * block_q))
            ref = jax.jit(
                functools.partial(block_sparse_attention_reference, block_q=block_q, block_k=block_k)
            )(
                q[:, sl, :2],
                k[:, :, :2],
                v[:, :, :2],
                idx_c[:, :2, qb0 : qb0 + nb],
                cnt_c[:, :2, qb0 : qb0 + nb],
            )
            rows.append(
                {
                    "kernel": "block_sparse",
                    "density": density,
                    "block_q": block_q,
                    "block_k": block_k,
                    "num_warps": warps,
                    "num_stages": stages,
                    **t,
                    "eff_tflops": computed / (t["median_ms"] * 1e-3) / 1e12,
                    "speedup_vs_dense": dense_ms / t["median_ms"],
                    "rel_err": rel_error(out[:, sl, :2], ref),
                }
            )
        configs = configs[:1]  # sweep launch configs at the first density only
    return rows


def cluster_rows(args, key, b, h, n, d, dtype, dense_ms, interpret, num_q_clusters, num_k_clusters):
    q, k, v = args
    rng = np.random.default_rng(0)
    qs = random_clusters(rng, b, h, n, num_q_clusters)
    ks = random_clusters(rng, b, h, n, num_k_clusters)
    rows = []
    for pair_density in PAIR_DENSITIES:
        cmap = jax.random.bernoulli(
            jax.random.fold_in(key, int(pair_density * 1000)),
            pair_density,
            (b, h, num_q_clusters, num_k_clusters),
        )
        useful = float(jnp.sum(qs[..., :, None] * ks[..., None, :] * cmap, dtype=jnp.float32)) * 4 * d
        for block_q, block_k in ((128, 64), (64, 64), (128, 32)):
            plan_fn = jax.jit(
                functools.partial(cluster_tile_plan, num_q=n, num_k=n, block_q=block_q, block_k=block_k)
            )
            plan = plan_fn(qs, ks, cmap)
            kern = jax.jit(functools.partial(cluster_sparse_attention_from_plan, interpret=interpret))
            total = jax.jit(
                functools.partial(
                    cluster_sparse_attention,
                    implementation="pallas_triton",
                    interpret=interpret,
                    block_q=block_q,
                    block_k=block_k,
                )
            )
            iters = 5 if interpret else 20
            t_plan = time_fn(plan_fn, qs, ks, cmap, iters=iters)
            t_kern = time_fn(kern, q, k, v, plan, iters=iters)
            t_total = time_fn(total, q, k, v, qs, ks, cmap, iters=iters)
            computed = float(plan.computed_rows()) * block_q * 4 * d
            out = total(q, k, v, qs, ks, cmap)
            r0 = n // 2
            sl = slice(r0, min(n, r0 + CHECK_ROWS))
            q_lab = cluster_labels(qs[:, :2], n)[..., sl]  # [B, 2, rows]
            k_lab = cluster_labels(ks[:, :2], n)  # [B, 2, N]
            rowmap = jnp.take_along_axis(cmap[:, :2], q_lab[..., None], axis=2)  # [B, 2, rows, Ck]
            mask = jnp.take_along_axis(rowmap, k_lab[:, :, None, :], axis=3)  # [B, 2, rows, N]
            ref = jax.jit(masked_attention_reference)(q[:, sl, :2], k[:, :, :2], v[:, :, :2], mask)
            rows.append(
                {
                    "kernel": "cluster_sparse",
                    "density": round(useful / attention_flops(b, h, n, n, d), 4),
                    "pair_density": pair_density,
                    "block_q": block_q,
                    "block_k": block_k,
                    "tile_density": round(computed / attention_flops(b, h, n, n, d), 4),
                    **t_kern,
                    "plan_ms": t_plan["median_ms"],
                    "total_ms": t_total["median_ms"],
                    "eff_tflops": computed / (t_kern["median_ms"] * 1e-3) / 1e12,
                    "useful_tflops": useful / (t_total["median_ms"] * 1e-3) / 1e12,
                    "speedup_vs_dense": dense_ms / t_total["median_ms"],
                    "rel_err": rel_error(out[:, sl, :2], ref),
                }
            )
    return rows


def run_shape(b, h, n, d, dtype, interpret, sweep, clusters, skip_block=False):
    key = jax.random.PRNGKey(0)
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (b, n, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, n, h, d), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (b, n, h, d), jnp.float32).astype(dtype)
    impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
    dense = jax.jit(functools.partial(jax.nn.dot_product_attention, implementation=impl))
    t_dense = time_fn(dense, q, k, v, iters=3 if interpret else 10)
    flops = attention_flops(b, h, n, n, d)
    rows = [
        {
            "kernel": f"dense_{impl}",
            "density": 1.0,
            **t_dense,
            "eff_tflops": flops / (t_dense["median_ms"] * 1e-3) / 1e12,
            "speedup_vs_dense": 1.0,
        }
    ]
    configs = [(128, 64, 4, 2)]
    if sweep:
        configs += [(128, 64, 8, 2), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)]
    if not skip_block:
        rows += block_rows((q, k, v), key, b, h, n, d, dtype, t_dense["median_ms"], interpret, configs)
    rows += cluster_rows((q, k, v), key, b, h, n, d, dtype, t_dense["median_ms"], interpret, *clusters)
    for r in rows:
        r.update(shape=f"B{b} H{h} N{n} D{d}", dtype=jnp.dtype(dtype).name)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small", action="store_true", help="tiny shapes, interpreted kernels (CPU smoke run)"
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep Triton launch configs (first shape)")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--skip-block", action="store_true", help="only the cluster kernel (and dense)")
    args = parser.parse_args(argv)
    interpret = jax.default_backend() != "gpu"
    if not args.small and interpret:
        parser.error("full-size shapes need a GPU; use --small on CPU")
    shapes = SMALL_SHAPES if args.small else FULL_SHAPES
    clusters = (6, 20) if args.small else (300, 1000)
    rows = []
    for i, (b, h, n, d) in enumerate(shapes):
        rows += run_shape(
            b, h, n, d, jnp.bfloat16, interpret, args.sweep and i == 0, clusters, args.skip_block
        )
        print_table(
            rows,
            [
                "shape",
                "kernel",
                "density",
                "tile_density",
                "block_q",
                "block_k",
                "num_warps",
                "num_stages",
                "median_ms",
                "plan_ms",
                "total_ms",
                "eff_tflops",
                "useful_tflops",
                "speedup_vs_dense",
                "rel_err",
            ],
        )
    payload = {
        **device_info(),
        "command": " ".join(["python", "benchmarks/attention.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    if args.out:
        write_json(args.out, payload)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
