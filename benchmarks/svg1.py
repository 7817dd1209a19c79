"""SVG1 GPU benchmark (issue #4): profiling, layout permutation, band attention vs cuDNN, QK-norm + RoPE.

Usage (H100):  python benchmarks/svg1.py --out benchmarks/results/
Smoke test (CPU, tiny shapes, Pallas in interpret mode):  python benchmarks/svg1.py --small --out /tmp/

Every timing is the median of ``--iters`` calls after ``--warmup`` calls, each ended by
``block_until_ready``. Effective TFLOP/s counts the FLOPs of what a kernel computes
(4·D per score entry: QKᵀ and PV), for the sparse kernel only the kept tiles. A measurement that fails
(e.g. a kernel that does not lower) is recorded with its error instead of stopping the run.
"""

import argparse
import dataclasses
import datetime
import itertools
import json
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from svg_jax.layout import TextTokens, VideoLayout
from svg_jax.pallas_kernels import (
    PermuteConfig,
    QKNormRopeConfig,
    block_sparse_attention,
    permute_tokens,
    qk_norm_rope,
    qk_norm_rope_reference,
)
from svg_jax.pallas_kernels.common import is_hopper
from svg_jax.placement import place_heads, placement_sources
from svg_jax.svg1 import (
    HUNYUAN_T2V_720P,
    WAN21_T2V_720P,
    SVG1Config,
    band_kernel_lists,
    profile_heads,
    svg1_attention,
)
from svg_jax.svg1_masks import TileGeometry, mask_density


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    heads: int
    head_dim: int
    layout: VideoLayout
    config: SVG1Config
    valid_text: int | None = None  # HunyuanVideo: real prompt tokens among the text slots


def workloads(small: bool) -> list[Workload]:
    if small:
        cfg = SVG1Config(density=0.3, block_size=16, band_rounding="ceil", first_frame_sink=True)
        return [
            Workload("wan-small", 1, 2, 32, VideoLayout(num_frames=4, tokens_per_frame=48), cfg),
            Workload(
                "hunyuan-small",
                1,
                2,
                32,
                VideoLayout(num_frames=4, tokens_per_frame=48, text_placement="last", num_text_tokens=16),
                dataclasses.replace(cfg, first_frame_sink=False, band_rounding="floor"),
                valid_text=7,
            ),
        ]
    return [
        Workload(
            "wan2.1-720p B1 H40 N75600 D128",
            1,
            40,
            128,
            VideoLayout(num_frames=21, tokens_per_frame=3600),
            WAN21_T2V_720P,
        ),
        Workload(
            "hunyuan-720p B1 H24 N118800+256 D128",
            1,
            24,
            128,
            VideoLayout(num_frames=33, tokens_per_frame=3600, text_placement="last", num_text_tokens=256),
            HUNYUAN_T2V_720P,
            valid_text=64,
        ),
    ]


def time_fn(fn, *args, warmup: int, iters: int) -> float:
    """Median wall time in ms of ``fn(*args)`` (already jitted), each call synchronised."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class Recorder:
    def __init__(self):
        self.rows: list[dict] = []

    def run(
        self, workload: str, what: str, fn, *args, warmup: int, iters: int, flops=None, nbytes=None, **extra
    ):
        row = {"workload": workload, "what": what, **extra}
        try:
            ms = time_fn(fn, *args, warmup=warmup, iters=iters)
            row["ms"] = ms
            if flops is not None:
                row["tflops"] = flops / ms / 1e9
            if nbytes is not None:
                row["gbps"] = nbytes / ms / 1e6
        except Exception as exc:  # record and go on: one failing kernel must not hide the rest
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc(file=sys.stderr)
        self.rows.append(row)
        return row


def bench_workload(w: Workload, rec: Recorder, *, densities, warmup: int, iters: int, on_gpu: bool):
    lay, b, h, d = w.layout, w.batch, w.heads, w.head_dim
    n = lay.seq_len
    dtype = jnp.bfloat16
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(kk, (b, n, h, d), jnp.float32).astype(dtype) for kk in keys[:3])
    text = (
        None
        if w.valid_text is None
        else TextTokens(lay.text_placement, lay.num_text_tokens, jnp.full((b,), w.valid_text, jnp.int32))
    )
    opts = dict(warmup=warmup, iters=iters)
    tensor_bytes = b * n * h * d * jnp.dtype(dtype).itemsize

    # 1. Profiling (sampled rows, three masked softmaxes, argmin).
    prof = jax.jit(
        lambda q, k, v, key: profile_heads(q, k, v, config=w.config, layout=lay, key=key, text=text)
    )
    rec.run(w.name, "profile_heads", prof, q, k, v, keys[3], **opts)

    # 2. Layout permutation of q, k, v (half the heads temporal): XLA gather, Pallas gather, and
    #    XLA transpose + per-head select.
    temporal = (jnp.arange(h) % 2 == 1)[None].repeat(b, 0)
    src = placement_sources(lay, temporal, inverse=False)
    for impl, block_rows in (("xla", None), ("pallas_triton", 16), ("pallas_triton", 64)):
        cfg = PermuteConfig(block_rows=block_rows) if block_rows else None
        fn = jax.jit(
            lambda q, k, v, src, impl=impl, cfg=cfg: permute_tokens(
                (q, k, v), src, implementation=impl, config=cfg
            )
        )
        rec.run(
            w.name,
            "permute q,k,v",
            fn,
            q,
            k,
            v,
            src,
            nbytes=6 * tensor_bytes,
            impl=impl,
            block_rows=block_rows,
            **opts,
        )
    fn = jax.jit(lambda q, k, v: place_heads((q, k, v), lay, temporal, implementation="xla_select"))
    rec.run(w.name, "permute q,k,v", fn, q, k, v, nbytes=6 * tensor_bytes, impl="xla_select", **opts)

    # 3. Dense baseline: cuDNN on GPU (no mask: a dense mask costs cuDNN ~10×), XLA elsewhere.
    dense_impl = "cudnn" if on_gpu else None
    dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=dense_impl))
    dense_flops = 4.0 * b * h * n * n * d
    dense_row = rec.run(
        w.name, "dense attention", dense, q, k, v, flops=dense_flops, impl=dense_impl or "xla", **opts
    )

    # 4. Band attention per density: kernel alone (precomputed lists) and the whole svg1_attention call.
    impls = ("pallas_triton", "pallas_mosaic") if on_gpu and is_hopper() else ("pallas_triton",)
    for impl, density in itertools.product(impls, densities):
        cfg = dataclasses.replace(w.config, density=density)
        geom = TileGeometry(layout=lay, block_size=cfg.block_size, first_frame_sink=cfg.first_frame_sink)
        band = cfg.band_blocks(lay)
        kernel_block_k = 128 if impl == "pallas_mosaic" else 64  # each kernel's fastest tile (svg1.py)
        mask, idx, cnt, block_k = band_kernel_lists(cfg, lay, text, b, h, kernel_block_k)
        kept = float(mask_density(geom, mask)[0])
        flops = dense_flops * kept
        kern = jax.jit(
            lambda q, k, v, idx, cnt, bs=cfg.block_size, bk=block_k, impl=impl: block_sparse_attention(
                q, k, v, idx, cnt, block_q=bs, block_k=bk, implementation=impl
            )
        )
        row = rec.run(
            w.name,
            "band kernel",
            kern,
            q,
            k,
            v,
            idx,
            cnt,
            flops=flops,
            density=density,
            kept=kept,
            band_blocks=band,
            impl=impl,
            **opts,
        )
        full = jax.jit(
            lambda q, k, v, key, cfg=cfg, impl=impl: svg1_attention(
                q, k, v, config=cfg, layout=lay, key=key, text=text, implementation=impl
            )[0]
        )
        frow = rec.run(
            w.name,
            "svg1_attention (profile+permute+kernel+unpermute)",
            full,
            q,
            k,
            v,
            keys[3],
            flops=flops,
            density=density,
            kept=kept,
            impl=impl,
            **opts,
        )
        for r in (row, frow):
            if "ms" in r and "ms" in dense_row:
                r["speedup_vs_dense"] = dense_row["ms"] / r["ms"]


def bench_qk_norm_rope(rec: Recorder, *, small: bool, warmup: int, iters: int):
    """Wan QK-norm + RoPE on q, k [B, N, H·D] (bf16), fused Triton vs the unfused XLA graph."""
    b, n, h, d = (1, 192, 4, 32) if small else (1, 75600, 40, 128)
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    q, k = (jax.random.normal(kk, (b, n, h * d), jnp.float32).astype(jnp.bfloat16) for kk in keys[:2])
    wq, wk = ((1.0 + 0.1 * jax.random.normal(kk, (h * d,))).astype(jnp.bfloat16) for kk in keys[2:4])
    ang = jax.random.uniform(keys[4], (n, d // 2), maxval=6.0)
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    name = f"wan qk-norm+rope B{b} N{n} H{h} D{d}"
    nbytes = 2 * 2 * b * n * h * d * 2 + 2 * n * (d // 2) * 4  # q, k read + written; two f32 tables
    unfused = jax.jit(lambda *a: qk_norm_rope_reference(*a, num_heads=h))
    rec.run(
        name,
        "qk_norm_rope",
        unfused,
        q,
        k,
        wq,
        wk,
        cos,
        sin,
        nbytes=nbytes,
        impl="xla",
        warmup=warmup,
        iters=iters,
    )
    for rows, warps in ((16, 4), (32, 4), (64, 8)):
        cfg = QKNormRopeConfig(block_rows=rows, num_warps=warps)
        fused = jax.jit(
            lambda *a, cfg=cfg: qk_norm_rope(*a, num_heads=h, implementation="pallas_triton", config=cfg)
        )
        rec.run(
            name,
            "qk_norm_rope",
            fused,
            q,
            k,
            wq,
            wk,
            cos,
            sin,
            nbytes=nbytes,
            impl="pallas_triton",
            block_rows=rows,
            num_warps=warps,
            warmup=warmup,
            iters=iters,
        )


def print_table(rows: list[dict]) -> None:
    cols = (
        "workload",
        "what",
        "impl",
        "density",
        "block_rows",
        "ms",
        "tflops",
        "gbps",
        "speedup_vs_dense",
        "error",
    )
    print(" | ".join(cols))
    for r in rows:
        cells = []
        for c in cols:
            val = r.get(c, "")
            cells.append(f"{val:.3f}" if isinstance(val, float) else str(val))
        print(" | ".join(cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--out", default="benchmarks/results/", help="JSON file or directory")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.25, 0.2])
    parser.add_argument("--skip-qk", action="store_true", help="skip the QK-norm + RoPE benchmark")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 3)
    iters = args.iters if args.iters is not None else (2 if args.small else 20)
    on_gpu = jax.default_backend() == "gpu"

    rec = Recorder()
    for w in workloads(args.small):
        bench_workload(w, rec, densities=args.densities, warmup=warmup, iters=iters, on_gpu=on_gpu)
    if not args.skip_qk:
        bench_qk_norm_rope(rec, small=args.small, warmup=warmup, iters=iters)

    now = datetime.datetime.now(datetime.UTC)
    result = {
        "benchmark": "svg1",
        "date": now.isoformat(timespec="seconds"),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "small": args.small,
        "warmup": warmup,
        "iters": iters,
        "rows": rec.rows,
    }
    out = pathlib.Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"svg1_{'small_' if args.small else ''}{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print_table(rec.rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
