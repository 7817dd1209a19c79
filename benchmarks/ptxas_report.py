"""What ptxas says about each Mosaic kernel variant (attention, k-means): registers, spills, serialization.

    python benchmarks/ptxas_report.py --out benchmarks/results/ptxas_h200.json

The engine's speed depends on ptxas keeping the wgmma pipeline asynchronous. When a non-wgmma instruction
writes a register that an in-flight wgmma reads, ptxas serializes *every* wgmma of the kernel and prints
``C7513 Potential Performance Loss: wgmma.mma_async instructions are serialized ...`` (the first
intra-warpgroup overlap ran 50% slower for this reason, H200 update 8 in ``docs/benchmarks.md``). A
register count past the 232 the compute warpgroups ask for, or any spill, costs as much.

Each variant compiles (small shapes, on the GPU) in its own process with Mosaic's dump on
(``MOSAIC_GPU_DUMP_PTX=1 MOSAIC_GPU_DUMP_TO=<dir>``), which writes ptxas's log next to the PTX; this script
reads the logs. It exits 1 if a variant is serialized or spills, so a device session can run it first.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import print_table, write_report  # noqa: E402

# name -> (kernel, keyword arguments of the *_mosaic function)
VARIANTS = {
    "block 128, ping-pong": ("block", dict(block_k=128, overlap=False)),
    "block 128, overlap": ("block", dict(block_k=128, overlap=True)),
    "block 64, overlap": ("block", dict(block_k=64, overlap=True)),
    "block 64, two tiles per step": ("block", dict(block_k=64, tiles_per_step=2, num_stages=4)),
    "cluster, ping-pong": ("cluster", dict(overlap=False)),
    "cluster, overlap": ("cluster", dict(overlap=True)),
    "cluster, tile-wide mask": ("cluster", dict(per_warpgroup_mask=False)),
    "kmeans K=300": ("kmeans", dict(k=300)),
    "kmeans K=1000": ("kmeans", dict(k=1000)),
    "kmeans K=300, 256-row items": ("kmeans", dict(k=300, row_blocks=2)),
    "kmeans K=1000, 256-row items": ("kmeans", dict(k=1000, row_blocks=2)),
}

COMPILE = """
import functools, json, sys
import jax, jax.numpy as jnp
from svg_jax.pallas_kernels import cluster_tile_plan
from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic
from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic
from svg_jax.pallas_kernels.kmeans_mosaic import kmeans_assign_mosaic

kind, opts = sys.argv[1], json.loads(sys.argv[2])
b, h, n, d = 1, 2, 2048, 128
q = jax.random.normal(jax.random.key(0), (b, n, h, d), jnp.bfloat16)
if kind == "kmeans":  # the default centroid tile for k centroids
    c = jax.random.normal(jax.random.key(1), (b * h, opts.pop("k"), d), jnp.float32)
    jax.block_until_ready(jax.jit(functools.partial(kmeans_assign_mosaic, **opts))(q, c))
elif kind == "block":
    nkb = n // opts["block_k"]
    idx = jnp.tile(jnp.arange(nkb, dtype=jnp.int32), (b, h, n // 128, 1))
    cnt = jnp.full((b, h, n // 128), nkb, jnp.int32)
    fn = functools.partial(block_sparse_attention_mosaic, sm_scale=d**-0.5, **opts)
    jax.block_until_ready(jax.jit(fn)(q, q, q, idx, cnt))
else:
    qs = jnp.full((b, h, 8), n // 8, jnp.int32)
    ks = jnp.full((b, h, 32), n // 32, jnp.int32)
    cmap = jax.random.bernoulli(jax.random.key(1), 0.5, (b, h, 8, 32))
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=n, block_q=128, block_k=64, row_align=8)
    fn = lambda q, plan: cluster_sparse_attention_mosaic(q, q, q, plan, sm_scale=d**-0.5, **opts)
    jax.block_until_ready(jax.jit(fn)(q, plan))
"""


def parse_ptxas(text: str) -> dict:
    """Registers, spill bytes and performance warnings of the attention kernel's ptxas log."""
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", text)]
    spill_pairs = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    spills = [int(a) + int(b) for a, b in spill_pairs]
    warnings = sorted(set(re.findall(r"\((C\d+)\) Potential Performance Loss: ([^\n]*)", text)))
    return {
        "registers": max(regs, default=None),
        "spill_bytes": max(spills, default=None),
        "warnings": [f"{code}: {msg.strip()}" for code, msg in warnings],
        "serialized": any("serialized" in msg for _, msg in warnings),
    }


def report(name: str, kind: str, opts: dict) -> dict:
    with tempfile.TemporaryDirectory() as dump:
        env = dict(os.environ, MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_TO=dump)
        run = subprocess.run(
            [sys.executable, "-c", COMPILE, kind, json.dumps(opts)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        logs = sorted(glob.glob(os.path.join(dump, "*.ptxas")))
        text = "\n".join(open(p, errors="replace").read() for p in logs)
    row = {"variant": name, "kind": kind, "options": opts, "ptxas_logs": len(logs), **parse_ptxas(text)}
    if run.returncode:  # the exception's own line, not JAX's note on filtered frames
        lines = run.stderr.strip().splitlines() or [f"exit {run.returncode}"]
        row["error"] = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="+", default=list(VARIANTS), help="variant names")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = [report(name, *VARIANTS[name]) for name in args.only]
    print_table(rows, ["variant", "registers", "spill_bytes", "serialized", "ptxas_logs"])
    for row in rows:
        for line in row["warnings"] + ([row["error"]] if "error" in row else []):
            print(f"  {row['variant']}: {line}")
    write_report(args.out, "ptxas_report", argv, results=rows)
    bad = [r for r in rows if r["serialized"] or r["spill_bytes"] or "error" in r or not r["ptxas_logs"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
