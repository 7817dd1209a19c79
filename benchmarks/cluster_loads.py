"""Where the Mosaic cluster kernel's masked path loses time: per-chunk global loads against mask code.

    python benchmarks/cluster_loads.py --out benchmarks/results/cluster_loads_h200.json

On the Wan 720p SVG2 plan of ``mosaic_steps.py`` (B1 H40 N75600 D128 bf16), kernel time (GPU, profiled):

* ablations (timing only; they compute something else): the shipped mask with its key-label vector load
  replaced by a made-up vector (``no label load``); only the chunk code loaded per chunk, no packed word,
  first key cluster or labels (``codes only``); every chunk uniform (``uniform``); no mask. Shipped minus
  ``codes only`` is what the compute warpgroups' per-chunk loads cost; ``codes only`` minus ``no mask``
  is what the mask code costs on the chunks that skip it;
* options that must keep the output bitwise (checked here at full scale): how chunks without a mask skip
  its passes (``mask_skip``: one 0/1-trip loop around them all, the default, a ``lax.cond`` instead, or
  each pass in its own loop, ``"flat"``), and masks decided per warpgroup (``per_warpgroup_mask``: no
  mask or a column mask where a warpgroup's rows lie in one query cluster).

Timed on 2026-12-01 and removed (raw JSON ``cluster_loads_*_h200_2026-12-01.json``): stage-1 scalars
loaded two or four steps ahead, the mask applied before the logit scale (34.76 / 36.37 / 34.73 ms against
34.30, the last not bitwise; ``options``); the chunk scalars copied by the producer into shared memory
beside each K tile (33.83 against 33.56 with the per-chunk word table; ``records``); the key-label vector
loaded only for mixed chunks (33.5 / 33.8 against 31.9 loading it for all, with nested passes; ``nested``);
the run's edges masked by a column bias (38.6 flat, 34.3 nested; ``edge``, ``nested``).
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
from cluster_mask import as_uniform, no_mask  # noqa: E402
from harness import print_table, write_report  # noqa: E402
from mosaic_steps import B, D, H, N, kernel_ms, svg2_problem  # noqa: E402

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
    "flat passes": dict(mask_skip="flat"),
    "cond skip": dict(mask_skip="cond"),
    "per_warpgroup_mask": dict(per_warpgroup_mask=True),
    "per_warpgroup_mask, cond skip": dict(per_warpgroup_mask=True, mask_skip="cond"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    qkv, plan, _ = svg2_problem(jax.random.key(0))
    operands = (*qkv, plan)  # the plan as an argument, not a constant XLA would fold at compile time
    make = lambda **o: jax.jit(functools.partial(cluster_sparse_attention_mosaic, sm_scale=D**-0.5, **o))
    shipped = make()
    ref = np.asarray(shipped(*operands))
    rows = [{"variant": "shipped", "kind": "shipped", "ms": kernel_ms(shipped, *operands)}]
    for name, opts in OPTIONS.items():
        fn = make(**opts)
        same = bool(np.array_equal(np.asarray(fn(*operands)), ref))
        ms = kernel_ms(fn, *operands)
        rows.append({"variant": name, "kind": "option", "ms": ms, "bitwise_equal": same})
    for name, mask in ABLATIONS.items():
        rows.append({"variant": name, "kind": "ablation", "ms": kernel_ms(make(make_mask=mask), *operands)})
    rows.append({"variant": "shipped (again)", "kind": "shipped", "ms": kernel_ms(shipped, *operands)})
    print_table(rows, ["variant", "kind", "ms", "bitwise_equal"])
    write_report(args.out, "cluster_loads", argv, shape=dict(B=B, N=N, H=H, D=D), results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
