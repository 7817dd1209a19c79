"""Mosaic GPU block-sparse kernel: exactness against the oracle, then speed against Triton and cuDNN.

    python benchmarks/block_sparse_mosaic.py --out benchmarks/results/block_sparse_mosaic_h100.json

Checks several shapes (ragged N and M, count-0 query blocks, D 64/128, block_k 64/128, bf16) against
``block_sparse_attention_reference``; then times B1 H40 N75600 D128 (Wan 720p) with random ascending
block lists at densities 1, 0.3 and 0.13: the Mosaic kernel, the Triton kernel (128×64) and cuDNN dense.
"""

import argparse
import functools
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import random_block_lists  # noqa: E402
from harness import (  # noqa: E402
    device_info,
    print_table,
    rel_error,
    run_checks,
    time_cudnn_dense,
    time_fn,
    write_json,
)

from svg_jax.pallas_kernels import block_sparse_attention, block_sparse_attention_reference  # noqa: E402

CHECKS = [  # (B, H, N, M, D, block_k, density)
    (1, 2, 256, 200, 64, 64, 0.6),
    (2, 3, 1000, 777, 128, 64, 0.4),
    (1, 2, 512, 512, 128, 128, 0.5),
    (1, 1, 384, 1000, 128, 64, 0.2),
]
BENCH = (1, 40, 75600, 128)
VARIANTS = (("pallas_mosaic", 128), ("pallas_mosaic", 64), ("pallas_triton", 64))


def check(case, key) -> dict:
    b, h, n, m, d, bk, density = case
    ks = jax.random.split(key, 4)
    q = jax.random.normal(ks[0], (b, n, h, d), jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, m, h, d), jnp.bfloat16)
    v = jax.random.normal(ks[2], (b, m, h, d), jnp.bfloat16)
    nqb, nkb = -(-n // 128), -(-m // bk)
    idx, cnt = random_block_lists(ks[3], b, h, nqb, nkb, density)
    cnt = cnt.at[:, :, 0].set(0)  # a query block with no keys must give zeros
    out = block_sparse_attention(q, k, v, idx, cnt, block_q=128, block_k=bk, implementation="pallas_mosaic")
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, block_q=128, block_k=bk)
    zeros = float(jnp.abs(out[:, :128].astype(jnp.float32)).max())
    return {"case": str(case), "rel_err": rel_error(out, ref), "count0_max_abs": zeros}


def bench(key, dense_ms) -> list[dict]:
    b, h, n, d = BENCH
    ks = jax.random.split(key, 4)
    q, k, v = (jax.random.normal(kk, (b, n, h, d), jnp.bfloat16) for kk in ks[:3])
    rows = []
    for density in (1.0, 0.3, 0.13):
        for impl, bk in VARIANTS:
            nqb, nkb = -(-n // 128), -(-n // bk)
            idx, cnt = random_block_lists(jax.random.fold_in(ks[3], bk), b, h, nqb, nkb, density)
            fn = jax.jit(
                functools.partial(block_sparse_attention, block_q=128, block_k=bk, implementation=impl)
            )
            try:
                t = time_fn(fn, q, k, v, idx, cnt, iters=10)
            except Exception as e:  # report, keep going
                traceback.print_exc()
                rows.append({"impl": impl, "block_k": bk, "density": density, "error": repr(e)[:400]})
                continue
            flops = float(jnp.sum(cnt)) * 128 * bk * 4 * d
            rows.append(
                {
                    "impl": impl,
                    "block_k": bk,
                    "density": density,
                    **t,
                    "eff_tflops": flops / (t["median_ms"] * 1e-3) / 1e12,
                    "speedup_vs_dense": dense_ms / t["median_ms"],
                    "ideal_ms": density * dense_ms,
                }
            )
            print_table(
                rows[-1:], ["impl", "block_k", "density", "median_ms", "eff_tflops", "speedup_vs_dense"]
            )
    return rows


def stage_sweep(key, dense_ms, stages_list) -> list[dict]:
    """The Mosaic kernel (128×128 tiles) at several ring depths."""
    from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic

    b, h, n, d = BENCH
    ks = jax.random.split(key, 4)
    q, k, v = (jax.random.normal(kk, (b, n, h, d), jnp.bfloat16) for kk in ks[:3])
    rows = []
    for density in (0.3, 0.13):
        idx, cnt = random_block_lists(
            jax.random.fold_in(ks[3], 128), b, h, -(-n // 128), -(-n // 128), density
        )
        for stages in stages_list:
            fn = jax.jit(
                functools.partial(
                    block_sparse_attention_mosaic, block_k=128, sm_scale=d**-0.5, num_stages=stages
                )
            )
            try:
                t = time_fn(fn, q, k, v, idx, cnt, iters=10)
            except Exception as e:
                traceback.print_exc()
                rows.append({"stages": stages, "density": density, "error": repr(e)[:400]})
                continue
            flops = float(jnp.sum(cnt)) * 128 * 128 * 4 * d
            rows.append(
                {
                    "stages": stages,
                    "density": density,
                    **t,
                    "eff_tflops": flops / (t["median_ms"] * 1e-3) / 1e12,
                    "speedup_vs_dense": dense_ms / t["median_ms"],
                }
            )
            print_table(rows[-1:], ["stages", "density", "median_ms", "eff_tflops", "speedup_vs_dense"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--stages", type=int, nargs="+", default=None, help="Mosaic ring depths to compare")
    args = parser.parse_args(argv)
    key = jax.random.key(0)
    payload = {**device_info(), "command": " ".join(sys.argv), "checks": [], "bench": []}
    payload["checks"] = run_checks([] if args.skip_checks else CHECKS, check, key)
    write_json(args.out, payload)
    if not args.skip_bench:
        t = payload["dense"] = time_cudnn_dense(key, *BENCH)
        payload["bench"] = (
            bench(key, t["median_ms"]) if not args.stages else stage_sweep(key, t["median_ms"], args.stages)
        )
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
