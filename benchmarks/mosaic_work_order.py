"""Persistent-grid work orders of the Mosaic GPU engine: block and cluster kernels at the Wan 720p shape.

    python benchmarks/mosaic_work_order.py --out benchmarks/results/mosaic_work_order_h200.json

B1 H40 N75600 D128 bf16. Block kernel: 128×128 tiles, random ascending block lists with exactly
``round(density·nkb)`` key blocks per query tile (densities 1.0, 0.3, 0.13). Cluster kernel: 300 × 1000
clusters of random sizes and random maps (pair densities 0.13, 0.3), 128×64 tiles. Each is timed with
one CTA per work item (``programs = items``: the non-persistent launch, in head-interleaved or head-major
order) and with one persistent CTA per SM under every order of :func:`work_order`. cuDNN dense is the
baseline; effective TFLOP/s count the tiles (block) or chunk rows (cluster) computed.
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
from attention import random_block_lists, random_clusters  # noqa: E402
from harness import device_info, print_table, time_cudnn_dense, time_fn, write_json  # noqa: E402

from svg_jax.pallas_kernels import cluster_tile_plan  # noqa: E402
from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic  # noqa: E402
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic  # noqa: E402

B, H, N, D = 1, 40, 75600, 128
ORDERS = ("head_lpt", "head", "lpt", "interleave")


QUICK = False  # --quick: only the per-item launch (interleave) and the default persistent order


def modes(n_items: int) -> list[tuple[str, int | None]]:
    """``(order, programs)``: one CTA per item in two orders, then one per SM (None) in every order."""
    if QUICK:
        return [("interleave", n_items), ("head_lpt", None)]
    return [("interleave", n_items), ("head", n_items)] + [(o, None) for o in ORDERS]


def sweep(make_fn, args, *, flops: float, n_items: int, skip=(), **tags) -> list[dict]:
    """Time ``make_fn(order, programs)(*args)`` in every mode of :func:`modes` but the orders in ``skip``."""
    rows = []
    for order, programs in modes(n_items):
        if order in skip:
            continue
        row = {**tags, "order": order, "programs": programs or "sms"}
        try:
            row.update(time_fn(jax.jit(make_fn(order, programs)), *args, iters=10))
            row["eff_tflops"] = flops / row["median_ms"] / 1e9
        except Exception as e:  # record, keep going
            traceback.print_exc()
            row["error"] = repr(e)[:300]
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_block(q, k, v, key, densities) -> list[dict]:
    nqt, bk = -(-N // 128), 128
    rows = []
    for density in densities:
        idx, cnt = random_block_lists(jax.random.fold_in(key, bk), B, H, nqt, -(-N // bk), density)

        def make(order, programs):
            opts = dict(block_k=bk, sm_scale=D**-0.5, num_programs=programs, order=order)
            return functools.partial(block_sparse_attention_mosaic, **opts)

        flops = float(jnp.sum(cnt)) * 128 * bk * 4 * D
        skip = ("lpt",) if density == 1.0 else ()  # equal lists: "lpt" is "head"
        rows += sweep(make, (q, k, v, idx, cnt), flops=flops, n_items=B * H * nqt, skip=skip,
                      kernel="block", density=density)
    return rows


def bench_cluster(q, k, v, key, densities) -> list[dict]:
    rng = np.random.default_rng(0)
    qs, kc = random_clusters(rng, B, H, N, 300), random_clusters(rng, B, H, N, 1000)
    rows = []
    for density in densities:
        cmap = jax.random.bernoulli(jax.random.fold_in(key, int(density * 1000)), density, (B, H, 300, 1000))
        plan_fn = functools.partial(cluster_tile_plan, num_q=N, num_k=N, block_q=128, block_k=64, row_align=8)
        plan = jax.jit(plan_fn)(qs, kc, cmap)

        def make(order, programs):
            opts = dict(sm_scale=D**-0.5, num_programs=programs, order=order)
            return functools.partial(cluster_sparse_attention_mosaic, **opts)

        flops = float(plan.computed_rows()) * 128 * 4 * D
        rows += sweep(make, (q, k, v, plan), flops=flops, n_items=plan.chunk_counts.size,
                      kernel="cluster", density=density)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=("block", "cluster"), default=None)
    p.add_argument("--quick", action="store_true", help="per-item launch vs default persistent order only")
    args = p.parse_args(argv)
    global QUICK
    QUICK = args.quick
    key = jax.random.key(0)
    ks = jax.random.split(key, 4)
    q, k, v = (jax.random.normal(kk, (B, N, H, D), jnp.bfloat16) for kk in ks[:3])
    report = {**device_info(), "benchmark": "mosaic_work_order", "shape": dict(B=B, H=H, N=N, D=D)}
    report["command"] = "python benchmarks/mosaic_work_order.py " + " ".join(argv or sys.argv[1:])
    report["dense"] = time_cudnn_dense(key, B, H, N, D)
    rows = []
    if args.only in (None, "block"):
        rows += bench_block(q, k, v, ks[3], (1.0, 0.3, 0.13))
    if args.only in (None, "cluster"):
        rows += bench_cluster(q, k, v, ks[3], (0.13, 0.3))
    report["rows"] = rows
    print_table(rows, ["kernel", "density", "order", "programs", "median_ms", "eff_tflops"])
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
