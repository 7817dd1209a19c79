"""The k-means (Lloyd) update: XLA segment-sum scatter against the sorted, atomic-free Pallas kernel.

    python benchmarks/kmeans_update.py --out benchmarks/results/kmeans_update_h200.json
    python benchmarks/kmeans_update.py --tiny --out /tmp/kmeans_update_tiny.json  # CPU smoke test

Shape: SVG2 on Wan 720p, token-major ``[B, N, H, D]`` = B1 N75600 H40 D128 bf16, K in (300, 1000) (the
preset's query / key cluster counts). Labels come from ``kmeans_assign`` of Gaussian-mixture tokens
against K random tokens (``kmeans`` labels), or are uniform at random (``random`` labels).

For each (K, labels) case it checks the Pallas update against the XLA one (centroids, sizes equal, and
the kernel's sums against ``cluster_sums_reference`` relative to each cluster's ``Σ|x|``), then times,
as loops of back-to-back calls (``harness.time_loop``), alternating so that clock drift hits all alike:
* ``xla_update``: ``update_centroids(implementation="xla")``, the float32 ``segment_sum`` scatters;
* ``pallas_update``: ``update_centroids(implementation="pallas_triton")``: sort + bounds + kernel + mean;
* ``sort_bounds``: ``sort_by_cluster`` + ``cluster_bounds`` alone;
* ``kernel``: ``cluster_sums`` alone on a precomputed order (with its effective read bandwidth);
and, on k-means labels, sweeps the kernel's launch config (clusters per program, rows per chunk, warps,
stages). On a GPU each update is also profiled kernel by kernel (``harness.device_op_times``).
"""

import argparse
import itertools
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import device_info, device_op_times, time_loop, write_json  # noqa: E402
from svg2 import mixture_qkv  # noqa: E402

from svg_jax.kmeans import cluster_bounds, random_init, sort_by_cluster, update_centroids  # noqa: E402
from svg_jax.pallas_kernels import (  # noqa: E402
    ClusterSumsConfig,
    cluster_sums,
    cluster_sums_reference,
    kmeans_assign,
)


def sweep_configs(tiny: bool) -> list[ClusterSumsConfig]:
    if tiny:
        return [ClusterSumsConfig(), ClusterSumsConfig(clusters_per_program=1, block_rows=16)]
    grid = itertools.product((1, 2, 4, 8), (16, 32, 64), (2, 4, 8))
    configs = [ClusterSumsConfig(clusters_per_program=c, block_rows=r, num_warps=w) for c, r, w in grid]
    return configs + [ClusterSumsConfig(num_stages=s) for s in (1, 3)]


def make_labels(kind: str, x, num_clusters: int, key):
    """``[B, H, N]`` labels: nearest of K random tokens (``kmeans``) or uniform (``random``)."""
    b, n, h, _ = x.shape
    if kind == "random":
        return jax.random.randint(key, (b, h, n), 0, num_clusters, jnp.int32)
    return kmeans_assign(x, random_init(x, num_clusters, key))[0]


def check(x, labels, num_clusters: int) -> dict:
    """Pallas vs XLA update, and the kernel's sums vs the oracle (error / Σ|x| of the cluster)."""
    b, n, h, d = x.shape
    init = jnp.zeros((b, h, num_clusters, d), jnp.float32)
    c_new, s_new = jax.jit(lambda *a: update_centroids(*a, implementation="pallas_triton"))(x, labels, init)
    c_old, s_old = jax.jit(lambda *a: update_centroids(*a, implementation="xla"))(x, labels, init)
    order, sorted_labels = sort_by_cluster(labels, num_clusters)
    bounds = cluster_bounds(sorted_labels, num_clusters)
    sums = jax.jit(lambda *a: cluster_sums(*a, implementation="pallas_triton"))(x, order, bounds)
    ref = jax.jit(cluster_sums_reference)(x, order, bounds)
    scale = jax.jit(cluster_sums_reference)(jnp.abs(x), order, bounds)
    err = np.asarray(jnp.abs(sums - ref)) / np.maximum(np.asarray(scale), 1e-30)
    sizes = np.asarray(s_new)
    return {
        "sizes_equal": bool((sizes == np.asarray(s_old)).all()),
        "sums_max_err_over_abs_sum": float(err.max()),
        "centroids_max_abs_err": float(jnp.max(jnp.abs(c_new - c_old))),
        "centroids_max_abs": float(jnp.max(jnp.abs(c_old))),
        "empty_clusters": int((sizes == 0).sum()),
        "largest_cluster": int(sizes.max()),
    }


def bench_case(x, labels, num_clusters: int, configs, rounds: int, calls: int) -> dict:
    b, n, h, d = x.shape
    init = jnp.zeros((b, h, num_clusters, d), jnp.float32)
    order, sorted_labels = sort_by_cluster(labels, num_clusters)
    bounds = cluster_bounds(sorted_labels, num_clusters)

    def sort_bounds(labels):
        order, sorted_labels = sort_by_cluster(labels, num_clusters)
        return order, cluster_bounds(sorted_labels, num_clusters)

    updates = {
        "xla_update": (jax.jit(lambda *a: update_centroids(*a, implementation="xla")), (x, labels, init)),
        "pallas_update": (
            jax.jit(lambda *a: update_centroids(*a, implementation="pallas_triton")),
            (x, labels, init),
        ),
        "sort_bounds": (jax.jit(sort_bounds), (labels,)),
        "kernel": (
            jax.jit(lambda *a: cluster_sums(*a, implementation="pallas_triton")),
            (x, order, bounds),
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(rounds):  # alternate, so clock drift hits every variant alike
        for name, (fn, args) in updates.items():
            samples[name].append(time_loop(fn, *args, calls=calls, rounds=1)["median_ms"])
    rows = {name: {"median_ms": statistics.median(s), "samples_ms": s} for name, s in samples.items()}
    read_bytes = x.size * x.dtype.itemsize + order.size * 4  # every row and its index once
    rows["kernel"]["read_gb_per_s"] = read_bytes / (rows["kernel"]["median_ms"] * 1e-3) / 1e9
    if jax.default_backend() == "gpu":
        for name in ("xla_update", "pallas_update"):
            fn, args = updates[name]
            rows[name]["profile"] = device_op_times(fn, *args)
    sweep = []
    for config in configs:
        fn = jax.jit(
            lambda *a, config=config: cluster_sums(*a, implementation="pallas_triton", config=config)
        )
        t = time_loop(fn, x, order, bounds, calls=calls, rounds=rounds)
        sweep.append({**vars(config), "median_ms": t["median_ms"]})
        print(f"    {config}: {t['median_ms']:.4f} ms")
    rows["sweep"] = sorted(sweep, key=lambda r: r["median_ms"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny shape, interpret mode")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if args.tiny:
        b, n, h, d, cluster_counts, calls = 1, 300, 2, 16, (7, 20), 2
    else:
        b, n, h, d, cluster_counts, calls = 1, 75600, 40, 128, (300, 1000), 20
    key = jax.random.key(0)
    x, _, _ = mixture_qkv(key, b, n, h, d, 8, jnp.bfloat16)  # [B, N, H, D]
    configs = sweep_configs(args.tiny)
    results = []
    for num_clusters, kind in itertools.product(cluster_counts, ("kmeans", "random")):
        labels = make_labels(kind, x, num_clusters, jax.random.fold_in(key, num_clusters))
        case = {"num_clusters": num_clusters, "labels": kind, **check(x, labels, num_clusters)}
        print(case)
        sweep = configs if kind == "kmeans" else []  # the launch sweep on k-means labels only
        case.update(bench_case(x, labels, num_clusters, sweep, args.rounds, calls))
        print({k: v["median_ms"] for k, v in case.items() if isinstance(v, dict)})
        results.append(case)
    write_json(
        args.out,
        {
            **device_info(),
            "benchmark": "kmeans_update",
            "command": "python benchmarks/kmeans_update.py " + " ".join(argv or sys.argv[1:]),
            "shape": dict(B=b, N=n, H=h, D=d, dtype="bfloat16", layout="token-major"),
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
