"""What the Mosaic cluster kernel's masks cost: the shipped kernel against ablations, and the chunk mix.

    python benchmarks/cluster_mask.py --out benchmarks/results/cluster_mask_h200.json

Same problems as ``mosaic_steps.py`` (B1 H40 N75600 D128 bf16: the SVG2 preset's seriated plan, random
300 × 1000 maps at 0.13). Per problem:

* the chunk mix: the share of chunks that need no mask (a uniform chunk inside its run), only the run's column
  mask (a run's first or last chunk), the packed-bit mask of mixed chunks, or the rectangle loop; and per
  (warpgroup, chunk) the passes the mask runs, decided for the whole tile and per warpgroup
  (``per_warpgroup_mask``, the default);
* the kernel time (GPU, profiled) of the shipped kernel, of the variant that applies the packed mask to every
  chunk instead of branching, and of ablations that compute something else (timing only):
  the slow path replaced by the packed-bit mask, every chunk treated as uniform (no per-row mask), and no
  mask at all. Their gaps bound what a cheaper mask could win;
* ``--baseline MODULE``: also time ``MODULE.cluster_mask`` (or ``_cluster_mask``), e.g. an older mask
  kept in a scratch file, against the shipped one (with the relative error between their outputs). It
  must read the same tables as the shipped mask;
* ``--layout-without-sizes``: also the SVG2 plan laid out as before empty clusters went last.
"""

import argparse
import functools
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import attention_flops, print_table, rel_error, time_cudnn_dense, write_report  # noqa: E402
from mosaic_steps import B, D, H, N, kernel_ms, random_problem, svg2_problem  # noqa: E402

from svg_jax import svg2  # noqa: E402
from svg_jax.pallas_kernels.cluster_plan import SPAN_UNIT, decode_chunk, decode_span  # noqa: E402
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import (  # noqa: E402
    FAST_K,
    FAST_Q,
    chunk_words,
    cluster_mask,
    cluster_sparse_attention_mosaic,
    mask_passes,
    warpgroup_flags,
)
from svg_jax.pallas_kernels.mosaic_flash import WG_ROWS, TileMask  # noqa: E402


def chunk_mix(plan) -> dict:
    """Shares of the listed chunks by the mask they take."""
    width = plan.chunk_codes.shape[-1]
    listed = jnp.arange(width) < plan.chunk_counts[..., None]
    lead, valid, uniform = decode_chunk(plan.chunk_codes)
    edge = (lead > 0) | (valid < plan.block_k)
    lo = plan.q_labels[:, :, :: plan.block_q]
    hi = plan.q_labels[:, :, plan.block_q - 1 :: plan.block_q]
    fits = ((hi - lo) < FAST_Q)[..., None] & (decode_span(plan.chunk_codes) < FAST_K)
    total = jnp.sum(listed)
    share = lambda m: float(jnp.sum(listed & m) / total)
    mixed = uniform == 0
    slow = listed & mixed & ~fits
    empty = lambda bounds: float(jnp.mean(jnp.sum(jnp.diff(bounds[..., :-1], axis=-1) == 0, axis=-1)))
    return {
        "empty_q_clusters_per_head": empty(plan.q_bounds),
        "empty_k_clusters_per_head": empty(plan.k_bounds),
        "rectangle_chunks_max_per_tile": int(jnp.max(jnp.sum(slow, axis=-1))),
        "chunks": int(total),
        "no_mask": share(~edge & ~mixed),
        "column_mask_only": share(edge & ~mixed),
        "packed_bits": share(mixed & fits),
        "rectangles": share(mixed & ~fits),
        "edge": share(edge),
        "warpgroup_passes": warpgroup_mix(plan),
    }


def warpgroup_mix(plan) -> dict:
    """Shares of (warpgroup, listed chunk) pairs by the passes the mask runs, decided tile-wide and per
    warpgroup (:func:`mask_passes`): none, the column pass, the packed per-element pass, the slow pass."""
    width = plan.chunk_codes.shape[-1]
    listed = (jnp.arange(width) < plan.chunk_counts[..., None])[..., None]  # [B, H, nqt, C, 1]
    lab = plan.q_labels.reshape(*plan.q_labels.shape[:2], -1, 2, WG_ROWS)  # [B, H, nqt, 2, 64]
    flags = warpgroup_flags(lab[..., 0], lab[..., -1], lab[..., :1, 0])  # [B, H, nqt, 2] each
    flags = {k: f[:, :, :, None, :] for k, f in flags.items()}  # against chunks [B, H, nqt, C, 1]
    bits = chunk_words(plan)[..., None]
    code = plan.chunk_codes[..., None]
    total = jnp.sum(listed) * 2
    mix = {}
    for name, per_wg in (("tile_wide", False), ("per_warpgroup", True)):
        col, packed, slow, _, _ = mask_passes(code, bits, **flags, block_k=plan.block_k, per_warpgroup=per_wg)
        col, packed, slow = (jnp.broadcast_to(x, listed.shape[:-1] + (2,)) == 1 for x in (col, packed, slow))
        share = lambda m: float(jnp.sum(m & listed) / total)
        mix[name] = {
            "no_mask": share(~(col | packed | slow)),
            "column": share(col),
            "packed": share(packed),
            "slow": share(slow),
        }
    return mix


def as_uniform(tables, at, row0, *, block_k):
    """Ablation: every chunk treated as uniform (the run's column mask only)."""
    m = cluster_mask(tables, at, row0, block_k=block_k)
    return TileMask(m.stage1, m.stage2, lambda f, sec, s: m.apply((f[0], f[1] | 1, *f[2:]), sec, s))


def packed_everywhere(tables, at, row0, *, block_k):
    """Ablation: mixed chunks never take the rectangle loop (span read as 0: the packed-bit mask)."""
    m = cluster_mask(tables, at, row0, block_k=block_k)
    span_off = lambda f: (f[0], f[1] % SPAN_UNIT, *f[2:])
    return TileMask(m.stage1, m.stage2, lambda f, sec, s: m.apply(span_off(f), sec, s))


def no_mask(tables, at, row0, *, block_k):
    """Ablation: no mask at all (the engine's unmasked path)."""
    return None


def run(name, plan, operands, useful, dense_ms, baseline) -> list[dict]:
    variants = {
        "shipped": None,
        "packed mask on every chunk": functools.partial(cluster_mask, branch=False),
        "packed bits everywhere (ablation)": packed_everywhere,
    }
    variants |= {"uniform (ablation)": as_uniform, "no mask (ablation)": no_mask}
    if baseline is not None:
        variants["baseline"] = getattr(baseline, "cluster_mask", None) or baseline._cluster_mask
    computed = float(plan.computed_rows()) * plan.block_q * 4 * D
    ref = None
    rows = []
    for label, mask in variants.items():
        fn = jax.jit(
            lambda q, k, v, plan, mask=mask: cluster_sparse_attention_mosaic(
                q, k, v, plan, sm_scale=D**-0.5, make_mask=mask
            )
        )  # the plan as an argument: closed over, XLA folds it as a constant at compile time (slow)
        out = fn(*operands, plan).astype(jnp.float32)
        ref = np.asarray(out) if ref is None else ref
        ms = kernel_ms(fn, *operands, plan)
        rows.append(
            {
                "problem": name,
                "variant": label,
                "ms": ms,
                "eff_tflops": computed / (ms * 1e-3) / 1e12,
                "useful_tflops": useful / (ms * 1e-3) / 1e12,
                "ideal_ms": useful / attention_flops(B, H, N, N, D) * dense_ms,
                "rel_err_vs_shipped": rel_error(out, ref),
            }
        )
    print_table(
        rows, ["problem", "variant", "ms", "eff_tflops", "useful_tflops", "ideal_ms", "rel_err_vs_shipped"]
    )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--baseline", default=None, help="module with an older cluster_mask to time against")
    p.add_argument(
        "--layout-without-sizes", action="store_true", help="also the layout with empty clusters inside"
    )
    p.add_argument("--skip-random", action="store_true")
    args = p.parse_args(argv)
    baseline = importlib.import_module(args.baseline) if args.baseline else None
    key = jax.random.key(0)
    dense = time_cudnn_dense(key, B, H, N, D)
    operands, plan, useful = svg2_problem(key)
    mixes = {"svg2": chunk_mix(plan)}
    rows = run("svg2", plan, operands, useful, dense["median_ms"], baseline)
    if args.layout_without_sizes:  # the layout before empty clusters went last
        seriate = svg2.seriate
        svg2.seriate = lambda cmap, sweeps, *sizes: seriate(cmap, sweeps)
        operands, plan, useful = svg2_problem(key)
        svg2.seriate = seriate
        mixes["svg2 (empty clusters inside)"] = chunk_mix(plan)
        rows += run("svg2 (empty clusters inside)", plan, operands, useful, dense["median_ms"], None)
    if not args.skip_random:
        operands, plan, useful = random_problem(key)
        mixes["random 0.13"] = chunk_mix(plan)
        rows += run("random 0.13", plan, operands, useful, dense["median_ms"], baseline)
    print("chunk mix", mixes)
    shape = dict(B=B, N=N, H=H, D=D)
    write_report(
        args.out, "cluster_mask", argv, shape=shape, dense_cudnn=dense, chunk_mix=mixes, results=rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
