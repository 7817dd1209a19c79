"""Fixed query tiles against tiles aligned to query clusters, on the Mosaic cluster kernel.

    python benchmarks/query_tiles.py --out benchmarks/results/query_tiles_h100.json

At B1 H40 N75600 D128 bf16 (Wan 720p), 300 × 1000 clusters, for each problem:

* ``random d``: Gaussian q, k, v and random maps (each cluster pair with probability ``d``: what random
  weights look like, no structure between neighbouring query clusters);
* ``svg2``: the SVG2 preset's own plan on Gaussian-mixture tokens (structured, seriated).

Each is run with the fixed 128-row tiles of the chunk plan and with every query cluster padded to whole
tiles (:mod:`svg_jax.pallas_kernels.tile_aligned`), the latter with the general cluster mask
(``aligned``, the default) and with the edge-only mask such plans allow (``aligned, edge mask``:
``edge_only=True``, whose output must equal the default's bit for bit), and the aligned rows over key pages
(``paged R``: :mod:`svg_jax.pallas_kernels.paged_sparse_attn_mosaic`, key tiles of R-row pages; its
"chunks" are its key tiles, its masked ones those with an invalid column). Reported: the attention
kernel's GPU time (profiled, median of ``--rounds``), the plan's chunks, its mixed chunks and all chunks
that take a mask (edges too), the work ``query_tiles="auto"`` compares (:func:`fixed_cost` of the fixed
plan, :func:`aligned_cost`'s estimate of the aligned one; for the paged rows :func:`paged_cost`) and which
it picks, and the aligned output
against the fixed one (relative error over the real rows), and the time to build each plan (``plan_ms``,
all its XLA kernels). The times per thousand chunks calibrate
``svg2.MASKED_CHUNK_WEIGHT``.
"""

import argparse
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention import random_clusters  # noqa: E402
from harness import device_op_times, print_table, rel_error, time_cudnn_dense, write_report  # noqa: E402
from mosaic_steps import B, D, H, N, gaussian_qkv, kernel_ms, svg2_sorted  # noqa: E402

from svg_jax.pallas_kernels import cluster_sparse_attention_from_plan, cluster_tile_plan  # noqa: E402
from svg_jax.pallas_kernels.cluster_plan import decode_chunk  # noqa: E402
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import (  # noqa: E402
    cluster_sparse_attention_mosaic,
    needs_mask,
)
from svg_jax.pallas_kernels.page_plan import page_plan, paged_cost  # noqa: E402
from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import (  # noqa: E402
    paged_sparse_attention_mosaic,
    partial_first,
)
from svg_jax.pallas_kernels.tile_aligned import align_plan, aligned_cost, fixed_cost  # noqa: E402
from svg_jax.svg2 import (  # noqa: E402
    ALIGNED_EDGE_WEIGHT,
    MASKED_CHUNK_WEIGHT,
    PAGED_PARTIAL_WEIGHT,
    PAGED_TILE_WEIGHT,
)

BQ, BK, ALIGN = 128, 64, 8


def random_problem(key, density):
    rng = np.random.default_rng(0)
    qs, kc = random_clusters(rng, B, H, N, 300), random_clusters(rng, B, H, N, 1000)
    cmap = jax.random.bernoulli(jax.random.fold_in(key, 13), density, (B, H, 300, 1000))
    return gaussian_qkv(key), qs, kc, cmap


def svg2_problem(key):
    ops, plan = svg2_sorted(key)
    return ops, plan.q_cluster_sizes, plan.k_cluster_sizes, plan.cluster_map


def masked_chunks(plan) -> int:
    _, _, uniform = decode_chunk(plan.chunk_codes)
    listed = jnp.arange(plan.width) < plan.chunk_counts[..., None]
    return int(jnp.sum(listed & (uniform == 0)))


def run_problem(name, problem, dense_ms, rounds, page_rows=(8, 16)) -> list[dict]:
    (q, k, v), qs, kc, cmap = problem
    build = functools.partial(cluster_tile_plan, num_k=N, block_q=BQ, block_k=BK, row_align=ALIGN)
    fixed = jax.jit(functools.partial(build, num_q=N))(qs, kc, cmap)
    al, aligned = jax.jit(functools.partial(align_plan, num_q=N))(fixed, qs, cmap)
    src = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, H, N))
    idx = jnp.swapaxes(al.source(src), 1, 2)[..., None]
    qa = jnp.take_along_axis(q, idx, axis=1)  # [B, rows, H, D]
    attn = jax.jit(
        lambda q, k, v, p: cluster_sparse_attention_from_plan(q, k, v, p, implementation="pallas_mosaic")
    )
    edge = jax.jit(functools.partial(cluster_sparse_attention_mosaic, sm_scale=D**-0.5, edge_only=True))
    out_f = attn(q, k, v, fixed)
    out_a = attn(qa, k, v, aligned)
    out_e = edge(qa, k, v, aligned)
    back = jnp.take_along_axis(out_a, jnp.swapaxes(al.dst, 1, 2)[..., None], axis=1)
    err = rel_error(back.astype(jnp.float32), np.asarray(out_f.astype(jnp.float32)))
    same = bool(jnp.array_equal(out_a, out_e))  # the edge mask must give the general mask's bits
    # Key pages over the same aligned query rows, each plan built at full width (no list to overflow).
    pages = {
        r: jax.jit(functools.partial(page_plan, num_q=al.rows, num_k=N, block_q=BQ, block_k=BK, page_rows=r))
        for r in page_rows
    }
    paged_plans = {r: build_pages(al.sizes, kc, al.cluster_map) for r, build_pages in pages.items()}
    paged = jax.jit(functools.partial(paged_sparse_attention_mosaic, sm_scale=D**-0.5))
    err_p = {}
    for r, pp in paged_plans.items():
        back_p = jnp.take_along_axis(paged(qa, k, v, pp), jnp.swapaxes(al.dst, 1, 2)[..., None], axis=1)
        err_p[r] = rel_error(back_p.astype(jnp.float32), np.asarray(out_f.astype(jnp.float32)))
    plan_ms = {  # building each plan from the cluster sizes and map (all its XLA kernels)
        "fixed": device_op_times(jax.jit(functools.partial(build, num_q=N)), qs, kc, cmap)["total_ms"],
        "aligned": device_op_times(jax.jit(functools.partial(align_plan, num_q=N)), fixed, qs, cmap)[
            "total_ms"
        ],
        **{
            f"paged {r}": device_op_times(pages[r], al.sizes, kc, al.cluster_map)["total_ms"]
            for r in page_rows
        },
    }
    times = {"fixed": [], "aligned": [], "aligned, edge mask": [], **{f"paged {r}": [] for r in page_rows}}
    for _ in range(rounds):
        times["fixed"].append(kernel_ms(attn, q, k, v, fixed))
        times["aligned"].append(kernel_ms(attn, qa, k, v, aligned))
        times["aligned, edge mask"].append(kernel_ms(edge, qa, k, v, aligned))
        for r, pp in paged_plans.items():
            times[f"paged {r}"].append(kernel_ms(paged, qa, k, v, pp))
    useful = float(jnp.sum(qs[..., :, None].astype(jnp.float32) * kc[..., None, :] * cmap))
    w = MASKED_CHUNK_WEIGHT
    w_a = ALIGNED_EDGE_WEIGHT  # the aligned plan's masked chunks are run edges (svg2.prefer_aligned_tiles)
    est_a = float(jnp.sum(aligned_cost(qs, kc, cmap, block_q=BQ, block_k=BK, masked_weight=w_a)))
    est_f = float(jnp.sum(fixed_cost(fixed, w)))
    rows = []
    for tiling, plan in (("fixed", fixed), ("aligned", aligned), ("aligned, edge mask", aligned)):
        chunks = int(jnp.sum(plan.chunk_counts))
        ms = statistics.median(times[tiling])
        rows.append(
            {
                "problem": name,
                "tiling": tiling,
                "ms": ms,
                "samples_ms": times[tiling],
                "density": useful / (B * H * float(N) ** 2),
                "ideal_ms": useful / (B * H * float(N) ** 2) * dense_ms,
                "chunks": chunks,
                "masked_chunks": masked_chunks(plan),
                "computed_over_useful": chunks * BK * BQ / useful,
                "us_per_kchunk": ms * 1e3 / (chunks / 1e3),
                "masked_chunks_any": int(jnp.sum(needs_mask(plan))),
                "cost": est_f if tiling == "fixed" else est_a,  # what query_tiles="auto" compares
                "cost_of_built_plan": float(jnp.sum(fixed_cost(plan, w if tiling == "fixed" else w_a))),
                "auto_picks": (tiling == "fixed") == (est_a >= est_f),
                "rel_err_vs_fixed": 0.0 if tiling == "fixed" else err,
                "edge_mask_bitwise_equal": same if tiling != "fixed" else None,
                "plan_ms": plan_ms.get(tiling, plan_ms["aligned"]),
            }
        )
    for r, pp in paged_plans.items():
        tiles = int(jnp.sum(pp.tile_counts()))
        ms = statistics.median(times[f"paged {r}"])
        _, n_partial = partial_first(pp)
        rows.append(
            {
                "problem": name,
                "tiling": f"paged {r}",
                "ms": ms,
                "samples_ms": times[f"paged {r}"],
                "density": useful / (B * H * float(N) ** 2),
                "ideal_ms": useful / (B * H * float(N) ** 2) * dense_ms,
                "chunks": tiles,
                "masked_chunks": 0,
                "computed_over_useful": tiles * BK * BQ / useful,
                "us_per_kchunk": ms * 1e3 / (tiles / 1e3),
                "masked_chunks_any": int(jnp.sum(jnp.take_along_axis(n_partial, pp.tile_cluster, axis=-1))),
                "rel_err_vs_fixed": err_p[r],
                "cost": float(  # the paged work estimate (calibrated for 16-row pages)
                    jnp.sum(
                        paged_cost(
                            al.sizes,
                            kc,
                            al.cluster_map,
                            num_k=N,
                            block_q=BQ,
                            block_k=BK,
                            page_rows=r,
                            tile_weight=PAGED_TILE_WEIGHT,
                            partial_weight=PAGED_PARTIAL_WEIGHT,
                        )
                    )
                ),
                "plan_ms": plan_ms[f"paged {r}"],
                "page_width": pp.width,
                "max_pages_listed": int(jnp.max(pp.counts)),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--densities", type=float, nargs="*", default=[0.13, 0.3])
    p.add_argument("--no-svg2", action="store_true")
    p.add_argument(
        "--page-rows", type=int, nargs="*", default=[8, 16], help="key page sizes of the paged rows"
    )
    args = p.parse_args(argv)
    key = jax.random.key(0)
    dense = time_cudnn_dense(key, B, H, N, D)
    rows = []
    for d in args.densities:
        rows += run_problem(
            f"random {d}", random_problem(key, d), dense["median_ms"], args.rounds, args.page_rows
        )
    if not args.no_svg2:
        rows += run_problem("svg2", svg2_problem(key), dense["median_ms"], args.rounds, args.page_rows)
    cols = ["problem", "tiling", "ms", "ideal_ms", "chunks", "masked_chunks", "computed_over_useful"]
    more = ["masked_chunks_any", "us_per_kchunk", "cost", "auto_picks", "rel_err_vs_fixed"]
    print_table(rows, cols + more + ["edge_mask_bitwise_equal", "plan_ms"])
    write_report(args.out, "query_tiles", argv, dense_ms=dense, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
