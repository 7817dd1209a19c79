"""Shared GPU benchmark helpers: timing (median after warm-up), device facts, atomic JSON output."""

import datetime
import functools
import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def attention_flops(b: int, h: int, n: int, m: int, d: int) -> float:
    """FLOPs of dense attention: two matmuls of 2·N·M·D each, per (batch, head)."""
    return 4.0 * b * h * n * m * d


def time_fn(fn: Callable, *args, warmup: int = 3, iters: int = 20, max_seconds: float = 10.0) -> dict:
    """Median/min/max wall time in ms of ``fn(*args)``, each call synchronised with ``block_until_ready``.

    Stops after ``iters`` timed calls, or earlier once ``max_seconds`` have passed (at least 3 calls).
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "iters": len(times),
    }


def device_info() -> dict:
    dev = jax.devices()[0]
    return {
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def rel_error(out, ref) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def run_checks(cases, check: Callable, key) -> list[dict]:
    """``check(case, key)`` for each case (a fresh key each); a failing case is recorded, not fatal."""
    results = []
    for i, case in enumerate(cases):
        try:
            results.append(check(case, jax.random.fold_in(key, i)))
        except Exception as e:  # report, keep going
            traceback.print_exc()
            results.append({"case": str(case), "error": repr(e)[:2000]})
        print(results[-1])
    return results


def time_cudnn_dense(key, b: int, h: int, n: int, d: int) -> dict:
    """cuDNN dense self-attention at ``[B, N, H, D]`` bf16: timing plus TFLOP/s (the speedup baseline)."""
    q = jax.random.normal(key, (b, n, h, d), jnp.bfloat16)
    dense = jax.jit(functools.partial(jax.nn.dot_product_attention, implementation="cudnn"))
    t = time_fn(dense, q, q, q, iters=10)
    out = {**t, "tflops": attention_flops(b, h, n, n, d) / (t["median_ms"] * 1e-3) / 1e12}
    print("cuDNN dense", out)
    return out
