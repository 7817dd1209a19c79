"""SVG2 benchmark (issue #3): k-means, the SVG2 overhead, and svg2_attention against cuDNN dense attention.

Default shape: Wan2.1-14B 720p self-attention, B1 H40 N75600 D128 bf16, 300 query / 1000 key clusters
(the official preset). Run on the GPU machine from the repository root:

    python benchmarks/svg2.py --out benchmarks/results/svg2_h100.json

``--small`` runs tiny shapes (CPU smoke test; the XLA paths stand in for the kernels there).

What is timed (median of ``--reps`` runs after ``--warmup``, each ended by ``block_until_ready``):
* k-means on Q (``num_q_clusters``) and K (``num_k_clusters``): cold (``kmeans_init_iters`` from random
  points) and warm (``kmeans_warm_iters`` from converged centroids), fixed iteration counts (no tol);
  the assignment kernel alone (with its effective TFLOP/s, 2·G·N·K·D per call) and one Lloyd update;
* the SVG2 plan (warm k-means of Q and K + centroid scores + top-p map + argsorts), the permutations
  (gather q, k, v and the inverse gather of the output) and the cluster-sparse attention alone;
* the whole warm ``svg2_attention`` against ``jax.nn.dot_product_attention(implementation="cudnn")``.
Overhead = (plan + permutations) / dense. Effective TFLOP/s of the attention part counts
4·D·Σ n_q·n_k·map, i.e. only the pairs it computes.

Inputs come from a Gaussian mixture (tokens of a few "semantic" components with correlated Q and K), so
the top-p selection has structure to find; ``--data random`` uses i.i.d. normals instead (near-dense maps).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from svg_jax import svg2
from svg_jax.kmeans import cluster_order, kmeans, update_centroids
from svg_jax.pallas_kernels import (
    KMeansAssignConfig,
    cluster_sparse_attention,
    cluster_tile_plan,
    kmeans_assign,
    permute_tokens,
)
from svg_jax.pallas_kernels.cluster_plan import default_width
from svg_jax.pallas_kernels.kmeans import to_groups
from svg_jax.svg2 import SVG2Cache, SVG2Config, svg2_attention, svg2_plan
from svg_jax.topp import cluster_probabilities, top_p_cluster_map

ASSIGN_SWEEP = [
    KMeansAssignConfig(block_n=bn, block_k=bk, num_warps=w, num_stages=st)
    for bn, bk, w, st in (
        (128, 64, 4, 2),
        (128, 64, 8, 2),
        (128, 128, 8, 2),
        (64, 64, 4, 3),
        (128, 32, 4, 3),
        (256, 64, 8, 2),
        (64, 128, 4, 2),
    )
]


def timeit(fn, *args, warmup: int, reps: int) -> dict:
    """Median/min wall time in ms of ``fn(*args)`` (jitted by the caller), after compilation and warm-up."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": reps}


def mixture_qkv(key, b: int, n: int, h: int, d: int, comps: int, dtype):
    """Q, K, V ``[B, N, H, D]``; Q and K share ``comps`` Gaussian components per head."""
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    mu = jax.random.normal(k1, (b, comps, h, d), jnp.float32)
    q = jnp.take_along_axis(mu, jax.random.randint(k2, (b, n, h, 1), 0, comps), axis=1)  # [B, N, H, D]
    k = jnp.take_along_axis(mu, jax.random.randint(k3, (b, n, h, 1), 0, comps), axis=1)
    q = q + jax.random.normal(k4, q.shape)
    k = k + jax.random.normal(k5, k.shape)
    v = jax.random.normal(k6, q.shape)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def random_qkv(key, b: int, n: int, h: int, d: int, dtype):
    keys = jax.random.split(key, 3)
    return tuple(jax.random.normal(kk, (b, n, h, d), jnp.float32).astype(dtype) for kk in keys)


def bench_kmeans(
    x, num_clusters: int, config: SVG2Config, tag: str, *, warmup: int, reps: int, flop_d: int, sweep: bool
):
    """Cold and warm k-means of one token-major ``[B, N, H, D]`` operand (as ``svg2_plan`` runs it), plus
    its assignment and update steps alone, and the assignment on a ``[G, N, D]`` copy for comparison."""
    b, n, h, d = x.shape
    g = b * h
    cold = jax.jit(lambda x, key: kmeans(x, num_clusters, num_iters=config.kmeans_init_iters, key=key))
    warm = jax.jit(lambda x, c: kmeans(x, num_clusters, num_iters=config.kmeans_warm_iters, init_centroids=c))
    assign = jax.jit(lambda x, c: kmeans_assign(x, c))
    update = jax.jit(lambda x, lab, c: update_centroids(x, lab, c))
    key = jax.random.key(0)
    res = cold(x, key)
    rows = {}
    rows[f"kmeans_{tag}_cold_{config.kmeans_init_iters}it"] = timeit(cold, x, key, warmup=warmup, reps=reps)
    rows[f"kmeans_{tag}_warm_{config.kmeans_warm_iters}it"] = timeit(
        warm, x, res.centroids, warmup=warmup, reps=reps
    )
    flops = 2.0 * g * n * num_clusters * flop_d
    t_assign = timeit(assign, x, res.centroids, warmup=warmup, reps=reps)
    t_assign["tflops"] = flops / (t_assign["median_ms"] * 1e-3) / 1e12
    rows[f"kmeans_{tag}_assign"] = t_assign
    xg, cg = to_groups(x), res.centroids.reshape(g, num_clusters, d)
    t_grouped = timeit(assign, xg, cg, warmup=warmup, reps=reps)
    t_grouped["tflops"] = flops / (t_grouped["median_ms"] * 1e-3) / 1e12
    rows[f"kmeans_{tag}_assign_grouped_copy"] = t_grouped
    rows[f"kmeans_{tag}_update"] = timeit(update, x, res.labels, res.centroids, warmup=warmup, reps=reps)
    if jax.default_backend() == "gpu" and sweep:  # tuning data for KMeansAssignConfig's defaults
        for cfg in ASSIGN_SWEEP:
            fn = jax.jit(functools.partial(kmeans_assign, implementation="pallas_triton", config=cfg))
            row = timeit(fn, x, res.centroids, warmup=warmup, reps=reps)
            row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12
            name = f"bn{cfg.block_n}_bk{cfg.block_k}_w{cfg.num_warps}_s{cfg.num_stages}"
            rows[f"kmeans_{tag}_assign_{name}"] = row
    return rows


def mosaic_chunk_plan(plan, n: int):
    """The chunk plan the Mosaic cluster kernel walks (128×64 tiles), built from an SVG2 plan of N tokens
    as ``cluster_plan_for`` builds it (narrow lists first: ``default_width``)."""
    sizes = (plan.q_cluster_sizes, plan.k_cluster_sizes, plan.cluster_map)
    width = default_width(n, plan.k_cluster_sizes.shape[-1], 64, 8)
    return cluster_tile_plan(*sizes, num_q=n, num_k=n, block_q=128, block_k=64, row_align=8, width=width)


def plan_pieces(q, k, plan, cache, config: SVG2Config, *, warmup: int, reps: int) -> dict:
    """The parts of ``svg2_plan`` besides k-means, each timed alone (where the overhead goes), and what
    it no longer does (``removed_*``, ``plan_argsort_labels_qk``) for comparison."""
    n, d = q.shape[1], q.shape[-1]

    def transposes(q, k):  # the [G, N, D] copies svg2_plan made before k-means read q, k in place
        return to_groups(q), to_groups(k)

    def argsorts(plan):  # the batched argsort svg2_plan used before cluster_order
        return tuple(jnp.argsort(x, axis=-1, stable=True) for x in (plan.q_labels, plan.k_labels))

    def orders(plan):
        return (
            cluster_order(plan.q_labels, config.num_q_clusters),
            cluster_order(plan.k_labels, config.num_k_clusters),
        )

    def probs(cache, k_sizes):
        return cluster_probabilities(cache.q_centroids, cache.k_centroids, k_sizes, sm_scale=d**-0.5)

    def top_p(p):
        return top_p_cluster_map(p, top_p=config.top_p, min_clusters=config.min_k_clusters)

    def select(cache, k_sizes):
        sm_scale = d**-0.5
        probs = cluster_probabilities(cache.q_centroids, cache.k_centroids, k_sizes, sm_scale=sm_scale)
        return top_p_cluster_map(probs, top_p=config.top_p, min_clusters=config.min_k_clusters)

    opts = dict(warmup=warmup, reps=reps)
    return {
        "removed_transpose_qk": timeit(jax.jit(transposes), q, k, **opts),
        "plan_argsort_labels_qk": timeit(jax.jit(argsorts), plan, **opts),
        "plan_cluster_order_qk": timeit(jax.jit(orders), plan, **opts),
        "plan_probs_top_p": timeit(jax.jit(select), cache, plan.k_cluster_sizes, **opts),
        "plan_probs": timeit(jax.jit(probs), cache, plan.k_cluster_sizes, **opts),
        "plan_top_p": timeit(jax.jit(top_p), plan.probs, **opts),
        "plan_chunk_plan_128x64": timeit(jax.jit(functools.partial(mosaic_chunk_plan, n=n)), plan, **opts),
    }


def run(args) -> dict:
    on_gpu = jax.default_backend() == "gpu"
    dtype = jnp.bfloat16 if on_gpu or args.dtype == "bf16" else jnp.float32
    b, n, h, d = args.batch, args.tokens, args.heads, args.head_dim
    base = svg2.PRESETS[args.preset]
    config = dataclasses.replace(
        base,
        num_q_clusters=args.q_clusters or base.num_q_clusters,
        num_k_clusters=args.k_clusters or base.num_k_clusters,
    )
    key = jax.random.key(args.seed)
    if args.data == "mixture":
        q, k, v = mixture_qkv(key, b, n, h, d, args.components, dtype)
    else:
        q, k, v = random_qkv(key, b, n, h, d, dtype)
    warmup, reps = args.warmup, args.reps
    results: dict[str, dict] = {}

    # 1. k-means on Q and K (token-major [B, N, H, D], as svg2_attention feeds it).
    for tag, x, c in (("q", q, config.num_q_clusters), ("k", k, config.num_k_clusters)):
        results.update(
            bench_kmeans(x, c, config, f"{tag}{c}", warmup=warmup, reps=reps, flop_d=d, sweep=args.sweep)
        )

    # 2. SVG2 pieces on a warm cache.
    cache = SVG2Cache.create(1, b, h, config, d).layer(0)
    full = jax.jit(lambda q, k, v, c, key: svg2_attention(q, k, v, config=config, cache=c, key=key))
    _, cache, _ = full(q, k, v, cache, key)  # cold call: the cache is warm afterwards
    plan_fn = jax.jit(lambda q, k, c, key: svg2_plan(q, k, config=config, cache=c, key=key))
    plan, _, stats = plan_fn(q, k, cache, key)

    def permutations(q, k, v, out, plan):
        (qs,) = permute_tokens([q], plan.q_perm)
        ks, vs = permute_tokens([k, v], plan.k_perm)
        (o,) = permute_tokens([out], svg2.inverse_permutation(plan.q_perm))
        return qs, ks, vs, o

    perm_fn = jax.jit(permutations)
    qs, ks, vs, _ = perm_fn(q, k, v, q, plan)
    attn_fn = jax.jit(
        lambda qs, ks, vs, plan: cluster_sparse_attention(
            qs, ks, vs, plan.q_cluster_sizes, plan.k_cluster_sizes, plan.cluster_map
        )
    )
    dense_impl = "cudnn" if on_gpu else None
    dense_fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=dense_impl))

    results["svg2_plan"] = timeit(plan_fn, q, k, cache, key, warmup=warmup, reps=reps)
    results.update(plan_pieces(q, k, plan, cache, config, warmup=warmup, reps=reps))
    results["svg2_permutations"] = timeit(perm_fn, q, k, v, q, plan, warmup=warmup, reps=reps)
    results["svg2_cluster_attention"] = timeit(attn_fn, qs, ks, vs, plan, warmup=warmup, reps=reps)
    results["svg2_attention_warm"] = timeit(full, q, k, v, cache, key, warmup=warmup, reps=reps)
    results["dense"] = timeit(dense_fn, q, k, v, warmup=warmup, reps=reps)

    density = jnp.mean(stats.density)
    pair_flops = 4.0 * d * float(jnp.sum(stats.density)) * n * n  # Σ over (b, h) of density·N²·4D
    dense_ms = results["dense"]["median_ms"]
    attn_ms = results["svg2_cluster_attention"]["median_ms"]
    summary = {
        "density_mean": float(density),
        "estimated_recall_mean": float(jnp.mean(stats.estimated_recall)),
        "overhead_vs_dense": (results["svg2_plan"]["median_ms"] + results["svg2_permutations"]["median_ms"])
        / dense_ms,
        "speedup_vs_dense": dense_ms / results["svg2_attention_warm"]["median_ms"],
        "attention_effective_tflops": pair_flops / (attn_ms * 1e-3) / 1e12,
        "dense_tflops": 4.0 * b * h * n * n * d / (dense_ms * 1e-3) / 1e12,
    }
    return {
        "benchmark": "svg2",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "dense_implementation": dense_impl or "xla",
        "shape": {"B": b, "N": n, "H": h, "D": d, "dtype": jnp.dtype(dtype).name},
        "data": args.data,
        "config": dataclasses.asdict(config),
        "results": results,
        "summary": summary,
        "published": {
            "flash_kmeans_h100_fp16_40x75600": {
                "K1000_warm1_ms": 4.46,
                "K1000_warm2_ms": 8.13,
                "K1000_cold50_ms": 203,
                "K300_warm1_ms": 2.58,
                "K300_warm2_ms": 4.39,
                "K300_cold50_ms": 98,
            },
            "flash_kmeans_h200_per_iter_b32_k1000_n131072_ms": 5.9,
            "svg2_warm_kmeans_ms": [0.25, 0.5],
        },
    }


def print_table(report: dict) -> None:
    s = report["shape"]
    print(
        f"SVG2 benchmark on {report['device']} ({report['backend']}), B{s['B']} H{s['H']} N{s['N']} "
        f"D{s['D']} {s['dtype']}, data={report['data']}"
    )
    print(f"{'measurement':<34} {'median ms':>10} {'min ms':>10} {'TFLOP/s':>8}")
    for name, row in report["results"].items():
        tf = f"{row['tflops']:.3g}" if "tflops" in row else ""
        print(f"{name:<34} {row['median_ms']:>10.3f} {row['min_ms']:>10.3f} {tf:>8}")
    for name, value in report["summary"].items():
        print(f"{name:<34} {value:>10.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON path (default: benchmarks/results/)")
    p.add_argument("--small", action="store_true", help="tiny shapes for a CPU smoke test")
    p.add_argument("--preset", default="wan2.1-t2v-14b-720p", choices=sorted(svg2.PRESETS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--tokens", type=int, default=75600)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--q-clusters", type=int, default=None, help="override the preset")
    p.add_argument("--k-clusters", type=int, default=None, help="override the preset")
    p.add_argument("--data", choices=("mixture", "random"), default="mixture")
    p.add_argument("--components", type=int, default=8, help="mixture components per head")
    p.add_argument("--dtype", choices=("bf16", "f32"), default="bf16", help="CPU only; the GPU uses bf16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also sweep the assignment kernel's launch configs")
    args = p.parse_args(argv)
    if args.small:
        args.heads, args.tokens, args.head_dim = 2, 1024, 64
        args.q_clusters, args.k_clusters = args.q_clusters or 16, args.k_clusters or 64
        args.warmup, args.reps, args.dtype = 1, 3, "f32"
    report = run(args)
    print_table(report)
    device = report["device"].replace(" ", "_")
    name = f"svg2_{'small_' if args.small else ''}{device}_{report['date'][:10]}.json"
    out = args.out or pathlib.Path("benchmarks/results") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
