"""Mosaic GPU cluster-sparse kernel: exactness against the oracle, then speed against Triton and cuDNN.

    python benchmarks/cluster_mosaic.py --out benchmarks/results/cluster_mosaic_h100.json

Checks several shapes (ragged N and M, zero-size clusters, a query cluster that selects nothing, D 64/128,
key chunks of 64 and 128 rows) against ``cluster_sparse_attention_reference``; then times B1 H40 N75600
D128 (Wan 720p) with 300 query × 1000 key clusters of random sizes (0.5–1.5× the mean) and random maps
(each pair selected with probability 0.3 / 0.13): the chunk plan, the Mosaic kernel (128-row query tiles,
64- or 128-row key chunks) and the Triton kernel (64×64), against cuDNN dense.
"""

import argparse
import functools
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import random_clusters  # noqa: E402
from harness import (  # noqa: E402
    attention_flops,
    device_info,
    print_table,
    rel_error,
    run_checks,
    time_cudnn_dense,
    time_fn,
    write_json,
)

from svg_jax.pallas_kernels import (  # noqa: E402
    cluster_sparse_attention,
    cluster_sparse_attention_from_plan,
    cluster_sparse_attention_reference,
    cluster_tile_plan,
)

CHECKS = [  # (B, H, N, M, D, Cq, Ck, block_k, pair density)
    (1, 2, 300, 260, 64, 5, 7, 64, 0.5),
    (2, 3, 1000, 777, 128, 12, 40, 64, 0.3),
    (1, 2, 700, 900, 128, 9, 25, 128, 0.4),
    (1, 4, 4100, 4100, 128, 30, 100, 64, 0.13),
]
BENCH = (1, 40, 75600, 128, 300, 1000)
VARIANTS = (("pallas_mosaic", 128, 64, 8), ("pallas_mosaic", 128, 128, 8), ("pallas_triton", 64, 64, 1))


def check(case, key) -> dict:
    b, h, n, m, d, cq, ck, bk, density = case
    ks = jax.random.split(key, 4)
    q = jax.random.normal(ks[0], (b, n, h, d), jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, m, h, d), jnp.bfloat16)
    v = jax.random.normal(ks[2], (b, m, h, d), jnp.bfloat16)
    rng = np.random.default_rng(len(str(case)))
    qs, kc = random_clusters(rng, b, h, n, cq), random_clusters(rng, b, h, m, ck)
    qs = qs.at[..., 1].set(0).at[..., 0].add(qs[..., 1])  # a zero-size query cluster
    cmap = jax.random.bernoulli(ks[3], density, (b, h, cq, ck)).at[:, :, 0].set(False)
    fn = functools.partial(cluster_sparse_attention, implementation="pallas_mosaic", block_q=128, block_k=bk)
    out = jax.jit(fn)(q, k, v, qs, kc, cmap)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, kc, cmap)
    zeros = float(jnp.abs(out[0, : int(qs[0, 0, 0]), 0].astype(jnp.float32)).max(initial=0.0))
    return {"case": str(case), "rel_err": rel_error(out, ref), "unselected_rows_max_abs": zeros}


def bench(key, dense_ms, densities) -> list[dict]:
    b, h, n, d, cq, ck = BENCH
    ks = jax.random.split(key, 4)
    q, k, v = (jax.random.normal(kk, (b, n, h, d), jnp.bfloat16) for kk in ks[:3])
    rng = np.random.default_rng(0)
    qs, kc = random_clusters(rng, b, h, n, cq), random_clusters(rng, b, h, n, ck)
    rows = []
    for density in densities:
        cmap = jax.random.bernoulli(jax.random.fold_in(ks[3], int(density * 1000)), density, (b, h, cq, ck))
        useful = float(jnp.sum(qs[..., :, None] * kc[..., None, :] * cmap, dtype=jnp.float32)) * 4 * d
        for impl, bq, bk, align in VARIANTS:
            plan_fn = jax.jit(
                functools.partial(
                    cluster_tile_plan, num_q=n, num_k=n, block_q=bq, block_k=bk, row_align=align
                )
            )
            kern = jax.jit(functools.partial(cluster_sparse_attention_from_plan, implementation=impl))
            try:
                plan = plan_fn(qs, kc, cmap)
                t_plan = time_fn(plan_fn, qs, kc, cmap, iters=10)
                t = time_fn(kern, q, k, v, plan, iters=10)
            except Exception as e:  # report, keep going
                traceback.print_exc()
                rows.append({"impl": impl, "block_k": bk, "pair_density": density, "error": repr(e)[:400]})
                continue
            computed = float(plan.computed_rows()) * bq * 4 * d
            total = t["median_ms"] + t_plan["median_ms"]
            rows.append(
                {
                    "impl": impl,
                    "block_q": bq,
                    "block_k": bk,
                    "pair_density": density,
                    "density": round(useful / attention_flops(b, h, n, n, d), 4),
                    "tile_density": round(computed / attention_flops(b, h, n, n, d), 4),
                    **t,
                    "plan_ms": t_plan["median_ms"],
                    "eff_tflops": computed / (t["median_ms"] * 1e-3) / 1e12,
                    "useful_tflops": useful / (t["median_ms"] * 1e-3) / 1e12,
                    "speedup_vs_dense": dense_ms / total,
                    "ideal_ms": useful / attention_flops(b, h, n, n, d) * dense_ms,
                }
            )
            print_table(
                rows[-1:],
                ["impl", "block_k", "density", "tile_density", "median_ms", "plan_ms", "eff_tflops",
                 "useful_tflops", "speedup_vs_dense"],
            )  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.13])
    args = parser.parse_args(argv)
    key = jax.random.key(0)
    payload = {**device_info(), "command": " ".join(sys.argv), "checks": [], "bench": []}
    payload["checks"] = run_checks([] if args.skip_checks else CHECKS, check, key)
    write_json(args.out, payload)
    if not args.skip_bench:
        t = payload["dense"] = time_cudnn_dense(key, *BENCH[:4])
        payload["bench"] = bench(key, t["median_ms"], args.densities)
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
