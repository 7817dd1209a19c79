"""k-means assignment on Hopper: the Mosaic GPU kernel's configs against the Triton kernel.

    python benchmarks/kmeans_mosaic.py --out benchmarks/results/kmeans_mosaic_h200.json [--quick]

Wan 720p shapes: 40 groups of N = 75600 rows, D = 128, bf16, K = 300 and 1000 clusters, both as
``[G, N, D]`` and token-major ``[1, N, 40, D]`` (how SVG2 calls it: q and k read in place). Per-call
device time: median of 5 rounds of 20 back-to-back calls after a warm-up round. Effective TFLOP/s count
2·G·N·K·D per call. Every run's labels are compared with the grouped Triton kernel's (agreement, and for
Mosaic the largest distance difference).
"""

import argparse
import functools
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import device_info, print_table, time_loop, write_json  # noqa: E402

from svg_jax.pallas_kernels import kmeans_assign  # noqa: E402
from svg_jax.pallas_kernels.kmeans_mosaic import default_block_k, kmeans_assign_mosaic  # noqa: E402

# (block_k, num_stages); the first is the default (None: default_block_k, which shares K evenly)
CONFIGS = ((None, 2), (128, 2), (128, 3), (128, 4), (64, 4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="only the default config, token-major")
    args = parser.parse_args(argv)
    g, n, d = 40, 75600, 128
    kx, kc = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (g, n, d), jnp.bfloat16)
    xt = jnp.swapaxes(x, 0, 1)[None]  # [1, N, 40, D]
    layouts = {"token_major": xt} if args.quick else {"groups": x, "token_major": xt}
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows = []
    for k in (300, 1000):
        c = jax.random.normal(jax.random.fold_in(kc, k), (g, k, d), jnp.float32)
        flops = 2 * g * n * k * d
        triton = jax.jit(functools.partial(kmeans_assign, implementation="pallas_triton"))
        ref_labels, ref_dist = triton(x, c)  # the grouped Triton kernel's labels are the comparison
        for layout, xs in layouts.items():
            cs = c if xs.ndim == 3 else c.reshape(1, g, k, d)
            t = time_loop(triton, xs, cs)
            labels, _ = triton(xs, cs)
            agreement = float(jnp.mean(labels.reshape(g, n) == ref_labels))
            rows.append(
                {
                    "k": k,
                    "layout": layout,
                    "impl": "triton",
                    **t,
                    "tflops": flops / t["median_ms"] / 1e9,
                    "label_agreement": agreement,
                }
            )
            print_table(rows[-1:], ["k", "layout", "impl", "median_ms", "tflops", "label_agreement"])
            for block_k, stages in configs:
                fn = jax.jit(functools.partial(kmeans_assign_mosaic, block_k=block_k, num_stages=stages))
                bk = block_k or default_block_k(d, k)
                row = {
                    "k": k,
                    "layout": layout,
                    "impl": f"mosaic bk{bk} s{stages}" + ("" if block_k else " (default)"),
                }
                try:
                    t = time_loop(fn, xs, c)
                    labels, dist = fn(xs, c)
                except Exception as e:  # noqa: BLE001 - a failing config is reported, not fatal
                    traceback.print_exc()
                    rows.append({**row, "error": repr(e)[:400]})
                    continue
                row.update(t, tflops=flops / t["median_ms"] / 1e9)
                row["label_agreement"] = float(jnp.mean(labels == ref_labels))
                row["max_dist_diff"] = float(jnp.max(jnp.abs(dist - ref_dist)))
                rows.append(row)
                print_table([row], ["k", "layout", "impl", "median_ms", "tflops", "label_agreement"])
    write_json(args.out, {**device_info(), "command": " ".join(sys.argv), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
