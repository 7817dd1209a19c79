"""Where SVG2's per-call overhead goes: the plan timed back to back and profiled kernel by kernel.

    python benchmarks/svg2_overhead.py --out benchmarks/results/svg2_overhead_h200.json

Times, on the Wan 720p preset's shapes (B1 H40 N75600 D128 bf16, 300 / 1000 clusters, warm cache,
Gaussian-mixture tokens):
* ``plan``: the whole warm ``svg2_plan`` as shipped;
* ``chunk_plan``: the Mosaic kernel's chunk plan built from the SVG2 plan (part of the attention call);
* ``svg2_attention_warm``: the whole warm call, clusters laid out by seriation (the default);
* ``svg2_attention_warm_label_order``: the same call with ``layout_sweeps=0`` (k-means label order, the
  official layout), for the A/B of the cluster layout; the tile densities of both layouts are reported.
Each is timed as a loop of back-to-back calls (``harness.time_loop``) and profiled with ``jax.profiler``
(GPU kernel time per call, by kernel). The variants alternate, so drift hits all. The summary's overhead
is every GPU kernel of the warm call but the attention kernel, against cuDNN dense attention.
"""

import argparse
import dataclasses
import functools
import os
import statistics
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import device_info, device_op_times, time_loop, write_json  # noqa: E402
from svg2 import mixture_qkv, mosaic_chunk_plan  # noqa: E402

from svg_jax import svg2  # noqa: E402
from svg_jax.pallas_kernels import cluster_sparse_attention_from_plan, cluster_tile_plan  # noqa: E402
from svg_jax.svg2 import SVG2Cache, svg2_attention, svg2_plan  # noqa: E402


def block_k_ab(q, k, v, plan, n: int) -> dict:
    """The Mosaic cluster kernel alone on the seriated plan with 64- and 128-row key chunks: 128 halves
    the chunks (less per-chunk work, larger MMAs) but wastes more rows at run tails."""
    sort = lambda x, perm: jnp.take_along_axis(x, jnp.swapaxes(perm, 1, 2)[..., None], axis=1)
    qs, ks, vs = sort(q, plan.q_perm), sort(k, plan.k_perm), sort(v, plan.k_perm)
    sizes = (plan.q_cluster_sizes, plan.k_cluster_sizes, plan.cluster_map)
    out = {}
    for bk in (64, 128):
        tiles = cluster_tile_plan(*sizes, num_q=n, num_k=n, block_q=128, block_k=bk, row_align=8)
        fn = jax.jit(functools.partial(cluster_sparse_attention_from_plan, implementation="pallas_mosaic"))
        h = q.shape[2]
        out[bk] = {
            **time_loop(fn, qs, ks, vs, tiles, calls=5, rounds=3),
            "tile_density": float(tiles.computed_rows()) * 128 / (q.shape[0] * h * n * n),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="wan2.1-t2v-14b-720p", choices=sorted(svg2.PRESETS))
    p.add_argument("--tokens", type=int, default=75600)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the shipped plan and call: no block_k A/B, no label-order variant (large shapes, e.g. "
        "--preset hunyuanvideo-t2v-720p --tokens 118800 --heads 24)",
    )
    args = p.parse_args(argv)
    config = svg2.PRESETS[args.preset]
    label_order = dataclasses.replace(config, layout_sweeps=0)
    b, n, h, d = 1, args.tokens, args.heads, 128
    cq, ck, iters = config.num_q_clusters, config.num_k_clusters, config.kmeans_warm_iters
    key = jax.random.key(0)
    q, k, v = mixture_qkv(key, b, n, h, d, 8, jnp.bfloat16)
    cache = SVG2Cache.create(1, b, h, config, d).layer(0)

    def attention(cfg):
        return jax.jit(lambda q, k, v, c, key: svg2_attention(q, k, v, config=cfg, cache=c, key=key))

    full, full_label_order = attention(config), attention(label_order)
    _, cache, _ = full(q, k, v, cache, key)
    plan_fn = jax.jit(lambda q, k, cache, _: svg2_plan(q, k, config=config, cache=cache, key=key))
    plan, _, _ = plan_fn(q, k, cache, None)
    tile_density = {}
    layouts = (("seriated", config),) if args.quick else (("seriated", config), ("label_order", label_order))
    for name, cfg in layouts:
        p, _, stats = jax.jit(lambda q, k, c, cfg=cfg: svg2_plan(q, k, config=cfg, cache=c, key=key))(
            q, k, cache
        )
        chunks = mosaic_chunk_plan(p, n)
        tile_density[name] = float(chunks.computed_rows()) * chunks.block_q / (b * h * n * n)
        tile_density["selected"] = float(jnp.mean(stats.density))
    print("tile density", tile_density)
    kernel_block_k = {} if args.quick else block_k_ab(q, k, v, plan, n)
    print("cluster kernel by block_k", kernel_block_k)

    fns = {
        "plan": plan_fn,
        "chunk_plan": jax.jit(lambda q, k, cache, plan: mosaic_chunk_plan(plan, n)),
        "svg2_attention_warm": jax.jit(lambda q, k, cache, plan: full(q, k, v, cache, key)),
    }
    if not args.quick:
        fns["svg2_attention_warm_label_order"] = jax.jit(
            lambda q, k, cache, plan: full_label_order(q, k, v, cache, key)
        )
    timings: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(args.rounds):  # alternate, so clock drift hits every variant alike
        for name, fn in fns.items():
            timings[name].append(time_loop(fn, q, k, cache, plan, calls=10, rounds=1))
    impl = "cudnn" if jax.default_backend() == "gpu" else None
    dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=impl))
    dense_ms = time_loop(dense, q, k, v, calls=3, rounds=3)["median_ms"]
    rows = {}
    for name, fn in fns.items():
        med = statistics.median(t["median_ms"] for t in timings[name])
        prof = device_op_times(fn, q, k, cache, plan, top=40, sources=True)
        rows[name] = {"median_ms": med, "samples_ms": [t["median_ms"] for t in timings[name]], **prof}
        print(f"{name:<12} {med:8.3f} ms (loop)  {prof['total_ms']:8.3f} ms (kernels)")
        for op in prof["ops"][:30]:
            where = " ".join(op.get("source", []))
            print(f"    {op['ms']:8.3f} ms  x{op['count']:<5g} {op['name'][:60]:<60} {where}")
    call = rows["svg2_attention_warm"]
    is_attention = lambda name: "sparse_flash" in name or "cluster_sparse" in name
    kernel_ms = sum(op["ms"] for op in call["ops"] if is_attention(op["name"]))
    summary = {
        "tile_density": tile_density,
        "kernel_block_k": kernel_block_k,
        "dense_cudnn_ms": dense_ms,
        "attention_kernel_ms": kernel_ms,
        "overhead_ms": call["total_ms"] - kernel_ms,  # every other GPU kernel of the warm call
        "overhead_vs_dense": (call["total_ms"] - kernel_ms) / dense_ms,
        "speedup_vs_dense": dense_ms / call["median_ms"],
    }
    if "svg2_attention_warm_label_order" in rows:
        base = rows["svg2_attention_warm_label_order"]
        summary["label_order_attention_kernel_ms"] = sum(
            op["ms"] for op in base["ops"] if is_attention(op["name"])
        )
        summary["label_order_speedup_vs_dense"] = dense_ms / base["median_ms"]
    print(summary)
    write_json(
        args.out,
        {
            **device_info(),
            "benchmark": "svg2_overhead",
            "command": "python benchmarks/svg2_overhead.py " + " ".join(argv or sys.argv[1:]),
            "shape": dict(B=b, N=n, H=h, D=d, q_clusters=cq, k_clusters=ck, warm_iters=iters),
            "results": rows,
            "summary": summary,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
