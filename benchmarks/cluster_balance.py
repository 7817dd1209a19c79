"""Load balance of the persistent Mosaic cluster kernel: how the static deal of query tiles to CTAs and the
cost of masked chunks add up, and what cost-aware work orders win.

    python benchmarks/cluster_balance.py --out benchmarks/results/cluster_balance_h200.json
    python benchmarks/cluster_balance.py --run-once shipped   # one call, for a profiler (ncu) to wrap

Problem: the Wan 720p SVG2 plan of ``mosaic_steps.py`` (B1 H40 N75600 D128 bf16, 300 × 1000 clusters).

* Per query tile: its chunk count and how many of its chunks take a mask. From these, the simulated
  per-CTA load (sum of ``count + w · masked`` over the items each CTA is dealt) for every work order and
  weights ``w``: the makespan over the mean says how much the deal loses if that cost model holds.
* Kernel time (GPU, profiled) of the orders ``head_lpt`` and ``head_snake``, ranked by chunk count or by
  count plus ``w`` per masked chunk, for the shipped mask and with no mask (ablation).
"""

import argparse
import ctypes
import functools
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_mask import no_mask  # noqa: E402
from harness import attention_flops, print_table, time_cudnn_dense, write_report  # noqa: E402
from mosaic_steps import B, D, H, N, kernel_ms, svg2_problem  # noqa: E402

from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import (  # noqa: E402
    cluster_sparse_attention_mosaic,
    tile_cost,
)
from svg_jax.pallas_kernels.work_order import work_order  # noqa: E402

WEIGHTS = (0.0, 1.0, 2.4)  # 2.4: the measured extra time of a masked chunk over an unmasked one (~1 µs)
VARIANTS = {  # name: (order, mask_weight, mask)
    "shipped": ("head_lpt", None, None),
    "snake": ("head_snake", None, None),
    "lpt w=2.4": ("head_lpt", 2.4, None),
    "snake w=2.4": ("head_snake", 2.4, None),
    "no mask": ("head_lpt", None, no_mask),
    "no mask, snake": ("head_snake", None, no_mask),
}


def simulate(plan, programs: int) -> list[dict]:
    """Per-CTA load of each order under the cost model ``count + w · masked`` (in chunk times)."""
    rows = []
    for w_rank in (None, 2.4):
        cost_rank = None if w_rank is None else tile_cost(plan, w_rank)
        for order in ("head_lpt", "head_snake", "lpt"):
            seq = np.asarray(work_order(plan.chunk_counts, order, programs=programs, cost=cost_rank))
            for w in WEIGHTS:
                item_cost = np.asarray(tile_cost(plan, w)).reshape(-1)[seq]
                per_cta = np.bincount(np.arange(seq.size) % programs, weights=item_cost, minlength=programs)
                rows.append(
                    {
                        "order": order,
                        "rank_weight": w_rank,
                        "model_weight": w,
                        "makespan_over_mean": float(per_cta.max() / per_cta.mean()),
                        "min_over_mean": float(per_cta.min() / per_cta.mean()),
                    }
                )
    return rows


def make_fn(order, weight, mask):
    """The kernel jitted with the plan as an argument (as a closed-over constant XLA folds it slowly)."""
    return jax.jit(
        functools.partial(
            cluster_sparse_attention_mosaic,
            sm_scale=D**-0.5,
            order=order,
            mask_weight=weight,
            make_mask=mask,
        )
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--run-once", choices=tuple(VARIANTS), default=None, help="one call of this variant")
    args = p.parse_args(argv)
    key = jax.random.key(0)
    operands, plan, useful = svg2_problem(key)
    if args.run_once:  # warm up, then one call inside the CUDA profiler range (ncu --profile-from-start off)
        fn = make_fn(*VARIANTS[args.run_once])
        jax.block_until_ready(fn(*operands, plan))
        cuda = ctypes.CDLL("libcuda.so.1")
        cuda.cuProfilerStart()
        jax.block_until_ready(fn(*operands, plan))
        cuda.cuProfilerStop()
        return 0
    if not args.out:
        p.error("--out is required unless --run-once")
    programs = int(jax.devices()[0].core_count or 132) if jax.default_backend() == "gpu" else 132
    sim = simulate(plan, programs)
    print_table(sim, ["order", "rank_weight", "model_weight", "makespan_over_mean", "min_over_mean"])
    counts = np.asarray(plan.chunk_counts).reshape(-1)
    masked = np.asarray(tile_cost(plan, 1.0) - plan.chunk_counts).reshape(-1)
    tiles = {
        "count_mean": float(counts.mean()),
        "count_max": int(counts.max()),
        "masked_mean": float(masked.mean()),
        "masked_max": float(masked.max()),
        "masked_share": float(masked.sum() / counts.sum()),
    }
    print("tiles", tiles)
    rows = []
    if jax.default_backend() == "gpu":
        dense = time_cudnn_dense(key, B, H, N, D)
        computed = float(plan.computed_rows()) * plan.block_q * 4 * D
        for name, variant in VARIANTS.items():
            ms = kernel_ms(make_fn(*variant), *operands, plan)
            rows.append(
                {
                    "variant": name,
                    "order": variant[0],
                    "mask_weight": variant[1],
                    "ms": ms,
                    "eff_tflops": computed / (ms * 1e-3) / 1e12,
                    "ideal_ms": useful / attention_flops(B, H, N, N, D) * dense["median_ms"],
                }
            )
        print_table(rows, ["variant", "order", "mask_weight", "ms", "eff_tflops", "ideal_ms"])
    else:
        dense = None
    write_report(
        args.out,
        "cluster_balance",
        argv,
        shape=dict(B=B, N=N, H=H, D=D),
        programs=programs,
        dense_cudnn=dense,
        tiles=tiles,
        simulated=sim,
        results=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
