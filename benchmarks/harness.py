"""Shared GPU benchmark helpers: timing (median after warm-up), device facts, atomic JSON output."""

import datetime
import functools
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
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


def write_report(path: str, benchmark: str, argv, **payload) -> None:
    """``write_json`` of the device facts, the benchmark's name and command line (``argv``, or the
    process's), and ``payload``."""
    args = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"python benchmarks/{benchmark}.py {args}"
    write_json(path, {**device_info(), "benchmark": benchmark, "command": command, **payload})


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


def time_loop(fn: Callable, *args, calls: int = 20, rounds: int = 5) -> dict:
    """Per-call device time in ms with dispatch hidden: ``calls`` back-to-back calls, then one sync;
    the median over ``rounds`` (after one warm-up round). Use for calls of a few ms, where a sync per
    call would add host latency to every sample."""

    def one_round() -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) * 1e3 / calls

    one_round()
    samples = [one_round() for _ in range(rounds)]
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "calls": calls, "rounds": rounds}


def device_op_times(fn: Callable, *args, reps: int = 3, top: int = 25, sources: bool = False) -> dict:
    """GPU kernel time per call, by kernel name, from a ``jax.profiler`` trace of ``reps`` calls.

    Returns ``{"total_ms": ..., "ops": [{"name", "ms", "count"}, ...]}`` (``top`` largest), where each
    time is the sum over the trace divided by ``reps``. Needs the warm-up done by the caller. With
    ``sources`` (``fn`` jitted), each XLA fusion's op also gets ``"source"``: the project lines it runs
    (:func:`kernel_sources`).
    """
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            for _ in range(reps):
                jax.block_until_ready(fn(*args))
        (path,) = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz"))
        with gzip.open(path, "rb") as f:
            events = json.load(f)["traceEvents"]
    names = {e["pid"]: e["args"].get("name", "") for e in events if e.get("name") == "process_name"}
    gpu = {pid for pid, name in names.items() if "/device:GPU" in name}
    per_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu and "dur" in e:
            per_op.setdefault(e["name"], []).append(float(e["dur"]))
    ops = sorted(
        ({"name": k[:160], "ms": sum(v) / reps / 1e3, "count": len(v) / reps} for k, v in per_op.items()),
        key=lambda r: -r["ms"],
    )
    if sources:
        where = kernel_sources(fn.lower(*args).compile().as_text())
        for op in ops[:top]:
            if where.get(op["name"]):
                op["source"] = where[op["name"]]
    return {"total_ms": sum(r["ms"] for r in ops), "ops": ops[:top], "processes": sorted(names.values())}


def kernel_sources(hlo_text: str, roots: tuple[str, ...] = ("svg_jax", "pallas_kernels"), top: int = 3):
    """``{fusion name: ["file:line", ...]}``: the project source lines (under ``roots``) of the ops each
    fusion of a compiled module holds, most ops first (``top``). The names are the GPU kernels' names in
    a profile, so :func:`device_op_times` can say where each XLA kernel comes from.

    ``hlo_text`` is ``jitted.lower(*args).compile().as_text()``: its instructions carry a
    ``stack_frame_id`` into the module's ``FileNames`` / ``FileLocations`` / ``StackFrames`` tables."""
    tables: dict[str, dict[int, str]] = {}
    section = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            tables[section] = {}
        elif section and (m := re.match(r"(\d+) (.*)", line)):
            tables[section][int(m[1])] = m[2]
        elif section and not line.strip():
            section = None
    field = lambda s, key: int(re.search(rf"{key}=(\d+)", s)[1])

    def project_line(frame: int) -> str | None:
        """The innermost frame of the chain in a project file, as ``root/…/file.py:line``."""
        seen = set()
        while frame in tables.get("StackFrames", {}) and frame not in seen:
            seen.add(frame)
            entry = tables["StackFrames"][frame]
            loc = tables["FileLocations"][field(entry, "file_location_id")]
            path = tables["FileNames"][field(loc, "file_name_id")].strip('"')
            parts = path.split(os.sep)
            hits = [i for i, p in enumerate(parts) if p in roots]
            if hits:
                return f"{'/'.join(parts[hits[-1] :])}:{field(loc, 'line')}"
            frame = field(entry, "parent_frame_id")
        return None

    per_comp: dict[str, Counter] = {}
    calls: dict[str, str] = {}
    comp = None
    for line in hlo_text.splitlines():
        if m := re.match(r"(?:ENTRY )?%(\S+) .*\{$", line):
            comp = m[1]
            per_comp.setdefault(comp, Counter())
        elif comp and (m := re.search(r"stack_frame_id=(\d+)", line)):
            if (src := project_line(int(m[1]))) is not None:
                per_comp[comp][src] += 1
        if (m := re.match(r"\s*(?:ROOT )?%(\S+) = .* fusion\(.*calls=%([\w.\-]+)", line)) is not None:
            calls[m[1]] = m[2]
    kernel = lambda name: re.sub(r"[.\-]", "_", name)  # how the GPU profile spells a fusion's name
    return {kernel(n): [s for s, _ in per_comp.get(c, Counter()).most_common(top)] for n, c in calls.items()}
