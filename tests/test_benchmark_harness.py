"""The benchmark harness's attribution of XLA kernels to source lines (``harness.kernel_sources``)."""

import inspect
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from harness import kernel_sources  # noqa: E402


def _two_stages(x):
    y = jnp.cumsum(x, axis=-1)  # a scan: its own kernel(s)
    return jnp.take_along_axis(y, jnp.argmax(x, axis=-1, keepdims=True), axis=-1) * 2.0


def test_kernel_sources_name_the_lines_each_fusion_runs():
    fn = jax.jit(_two_stages)
    text = fn.lower(jnp.ones((4, 100))).compile().as_text()
    where = kernel_sources(text, roots=("tests",))
    first = inspect.getsourcelines(_two_stages)[1]
    ours = {f"tests/test_benchmark_harness.py:{first + i}" for i in (1, 2)}
    lines = {s for sources in where.values() for s in sources}
    assert lines and lines <= ours, (lines, ours)  # only this function's body, and some of it
    assert all("." not in name and "-" not in name for name in where)  # profile spelling: a_b_1, not a.b.1
    assert kernel_sources(text, roots=("no_such_root",)) == {name: [] for name in where}
