"""SVG2's top-p cluster selection: the threshold-search kernel's launch configs against the sort oracle.

    python benchmarks/top_p.py --out benchmarks/results/top_p_h200.json

Wan 720p preset shape: 40 heads × 300 query clusters × 1000 key clusters of float32 softmax rows
(N(0, 4²) logits), top_p 0.9 with a floor of 100 clusters (the official ``min_kc_ratio`` 0.1). Per-call
time: median of 5 rounds of 20 back-to-back calls after a warm-up round, and the GPU kernel time from a
profile. Every config's mask is compared with the oracle's (``differ``: entries that disagree, which may
only sit within float32 rounding of top_p; see ``pallas_kernels/top_p.py``).
"""

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
from harness import device_info, device_op_times, print_table, time_loop, write_json

from svg_jax.pallas_kernels import TopPConfig, top_p_mask, top_p_mask_reference

CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 4), (4, 4), (8, 8))  # (block_rows, num_warps); the first is default


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    opts = dict(top_p=0.9, min_clusters=100)
    logits = 4 * jax.random.normal(jax.random.key(2), (1, 40, 300, 1000))
    probs = jax.nn.softmax(logits, axis=-1)
    oracle = jax.jit(functools.partial(top_p_mask_reference, **opts))
    ref = oracle(probs)
    rows = [
        {"impl": "xla sort (oracle)", **time_loop(oracle, probs), **_kernel_ms(oracle, probs), "differ": 0}
    ]
    for block_rows, warps in CONFIGS:
        cfg = TopPConfig(block_rows=block_rows, num_warps=warps)
        fn = jax.jit(functools.partial(top_p_mask, **opts, implementation="pallas_triton", config=cfg))
        differ = int(jnp.sum(fn(probs) != ref))
        rows.append(
            {
                "impl": f"triton br{block_rows} w{warps}",
                **time_loop(fn, probs),
                **_kernel_ms(fn, probs),
                "differ": differ,
            }
        )
        print_table(rows[-1:], ["impl", "median_ms", "kernel_ms", "differ"])
    print_table(rows, ["impl", "median_ms", "kernel_ms", "differ"])
    write_json(
        args.out,
        {
            **device_info(),
            "benchmark": "top_p",
            "command": " ".join(sys.argv),
            "shape": {"B": 1, "H": 40, "Cq": 300, "Ck": 1000, **opts},
            "results": rows,
        },
    )
    return 0


def _kernel_ms(fn, *args) -> dict:
    return {"kernel_ms": device_op_times(fn, *args)["total_ms"]}


if __name__ == "__main__":
    sys.exit(main())
