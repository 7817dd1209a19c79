"""k-means assignment on Hopper: the Mosaic GPU kernel against the Triton kernel (and a label check).

    python benchmarks/kmeans_mosaic.py --out benchmarks/results/kmeans_mosaic_h100.json

G = B·H = 40 groups of N = 75600 rows, D = 128, bf16 (Wan 720p), K = 300 and 1000 clusters; median of
20 calls after warm-up. Effective TFLOP/s count 2·G·N·K·D per call.
"""

import argparse
import functools
import os
import sys
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import device_info, print_table, time_fn, write_json  # noqa: E402

from svg_jax.pallas_kernels import kmeans_assign  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    g, n, d = 40, 75600, 128
    kx, kc = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (g, n, d), jnp.bfloat16)
    rows = []
    for k in (300, 1000):
        c = jax.random.normal(jax.random.fold_in(kc, k), (g, k, d), jnp.float32)
        out = {}
        for impl in ("pallas_triton", "pallas_mosaic"):
            fn = jax.jit(functools.partial(kmeans_assign, implementation=impl))
            try:
                t = time_fn(fn, x, c, iters=20)
                out[impl] = fn(x, c)
            except Exception as e:
                traceback.print_exc()
                rows.append({"k": k, "impl": impl, "error": repr(e)[:400]})
                continue
            rows.append(
                {"k": k, "impl": impl, **t, "tflops": 2 * g * n * k * d / (t["median_ms"] * 1e-3) / 1e12}
            )
            print_table(rows[-1:], ["k", "impl", "median_ms", "tflops"])
        if len(out) == 2:
            (lt, dt), (lm, dm) = out["pallas_triton"], out["pallas_mosaic"]
            rows[-1]["label_agreement"] = float(jnp.mean(lt == lm))
            rows[-1]["max_dist_diff"] = float(jnp.max(jnp.abs(dt - dm)))
            print("agreement", rows[-1]["label_agreement"], "max dist diff", rows[-1]["max_dist_diff"])
    write_json(args.out, {**device_info(), "command": " ".join(sys.argv), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
