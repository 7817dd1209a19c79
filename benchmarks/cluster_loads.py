"""Where the Mosaic cluster kernel's masked path loses time: per-chunk global loads against mask code.

    python benchmarks/cluster_loads.py --out benchmarks/results/cluster_loads_h200.json

On the Wan 720p SVG2 plan of ``mosaic_steps.py`` (B1 H40 N75600 D128 bf16), or with ``--problem random``
its random 300 × 1000 maps at density 0.13, kernel time (GPU, profiled):

* ablations (timing only; they compute something else): the shipped mask with its key-label vector load
  replaced by a made-up vector (``no label load``); only the chunk code loaded per chunk, no packed word,
  first key cluster or labels (``codes only``); every chunk uniform (``uniform``); no mask. Shipped minus
  ``codes only`` is what the compute warpgroups' per-chunk loads cost; ``codes only`` minus ``no mask``
  is what the mask code costs on the chunks that skip it;
* options that must keep the output bitwise (checked here at full scale): the packed pass run on every
  masked chunk, and the mask decided for the whole tile (``per_warpgroup_mask=False``) instead of per
  warpgroup;
* the chunk mix of the plan (``cluster_mask.chunk_mix``). ``--only NAME ...`` times a subset.

Timed on 2026-12-01 and removed (raw JSON ``cluster_loads_*_h200_2026-12-01.json``): stage-1 scalars
loaded two or four steps ahead, the mask applied before the logit scale (34.76 / 36.37 / 34.73 ms against
34.30, the last not bitwise; ``options``); the chunk scalars copied by the producer into shared memory
beside each K tile (33.83 against 33.56 with the per-chunk word table; ``records``); the key-label vector
loaded only for mixed chunks (33.5 / 33.8 against 31.9 loading it for all, with nested passes; ``nested``);
the run's edges masked by a column bias (38.6 flat, 34.3 nested; ``edge``, ``nested``); walking every
chunk through the mask's branch instead of the masked chunks first (32.8 / 31.5 against 31.2 / 29.4;
``split``, ``chunkuniform``); how masked chunks skip the passes, a ``lax.cond`` or one loop per pass
instead of one loop around them (29.16 / 29.28 against 29.39 / 29.52, then 30.05 against 28.11 / 28.76;
``chunkuniform``, ``perwg``).
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_mask import as_uniform, chunk_mix, no_mask  # noqa: E402
from harness import print_table, rel_error, write_report  # noqa: E402
from mosaic_steps import B, D, H, N, kernel_ms, random_problem, svg2_problem  # noqa: E402

from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import (  # noqa: E402
    cluster_mask,
    cluster_sparse_attention_mosaic,
)
from svg_jax.pallas_kernels.mosaic_flash import COL, TileMask  # noqa: E402


def no_label_load(tables, at, row0, *, block_k):
    """Ablation: the key-label vector made up from the chunk's first key cluster (no vector load)."""
    m = cluster_mask(tables, at, row0, block_k=block_k)
    fake = lambda j, first: plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL) // 16 + first[2]
    return TileMask(m.stage1, fake, m.apply)


def codes_only(tables, at, row0, *, block_k):
    """Ablation: one scalar load per chunk (its code); start, first key cluster and packed word made up."""
    m = cluster_mask(tables, at, row0, block_k=block_k)
    codes = tables[1]
    b, h, t = at
    width = codes.shape[-1]
    stage1 = lambda j: (jnp.int32(0), codes[b, h, t, jnp.minimum(j, width - 1)], jnp.int32(0), jnp.int32(-1))
    fake = lambda j, first: plgpu.broadcasted_iota(jnp.int32, (block_k,), 0, layout=COL) // 16
    return TileMask(stage1, fake, m.apply)


ABLATIONS = {
    "no label load": no_label_load,
    "codes only": codes_only,
    "uniform": as_uniform,
    "no mask": no_mask,
}
OPTIONS = {
    "tile-wide mask": dict(per_warpgroup_mask=False),
    "packed pass unbranched on masked chunks": dict(make_mask=functools.partial(cluster_mask, branch=False)),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="+", default=None, help="options and ablations to time (default: all)")
    p.add_argument(
        "--problem",
        choices=("svg2", "random"),
        default="svg2",
        help="the SVG2 preset's seriated plan, or random 300 x 1000 maps at density 0.13 (mosaic_steps.py)",
    )
    args = p.parse_args(argv)
    unknown = set(args.only or ()) - set(OPTIONS) - set(ABLATIONS)
    if unknown:
        p.error(f"--only: unknown variants {sorted(unknown)}; choose from {[*OPTIONS, *ABLATIONS]}")
    chosen = lambda table: {k: v for k, v in table.items() if args.only is None or k in args.only}
    problem = svg2_problem if args.problem == "svg2" else random_problem
    qkv, plan, _ = problem(jax.random.key(0))
    operands = (*qkv, plan)  # the plan as an argument, not a constant XLA would fold at compile time
    make = lambda **o: jax.jit(functools.partial(cluster_sparse_attention_mosaic, sm_scale=D**-0.5, **o))
    shipped = make()
    ref = np.asarray(shipped(*operands))
    rows = [{"variant": "shipped", "kind": "shipped", "ms": kernel_ms(shipped, *operands)}]
    for name, opts in chosen(OPTIONS).items():
        fn = make(**opts)
        out = np.asarray(fn(*operands))
        same, err = bool(np.array_equal(out, ref)), rel_error(out.astype(np.float32), ref.astype(np.float32))
        ms = kernel_ms(fn, *operands)
        rows.append({"variant": name, "kind": "option", "ms": ms, "bitwise_equal": same, "rel_err": err})
    for name, mask in chosen(ABLATIONS).items():
        rows.append({"variant": name, "kind": "ablation", "ms": kernel_ms(make(make_mask=mask), *operands)})
    rows.append({"variant": "shipped (again)", "kind": "shipped", "ms": kernel_ms(shipped, *operands)})
    print_table(rows, ["variant", "kind", "ms", "bitwise_equal", "rel_err"])
    mix = chunk_mix(plan)
    print(mix)
    report = dict(problem=args.problem, shape=dict(B=B, N=N, H=H, D=D), chunk_mix=mix, results=rows)
    write_report(args.out, "cluster_loads", argv, **report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
