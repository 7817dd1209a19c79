"""Helpers for the kernel tests: random inputs, error metrics and the tolerance table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svg_jax.pallas_kernels import cluster_tile_plan
from svg_jax.pallas_kernels.common import is_hopper

# Relative error ‖out − ref‖ / ‖ref‖ against the float32 HIGHEST oracle on the same (rounded) inputs.
REL_TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 5e-3}


def require_hopper() -> None:
    """Skip the calling GPU test unless the device is an sm90 GPU (the Mosaic kernels need wgmma and TMA)."""
    if not is_hopper():
        pytest.skip("the Mosaic kernels need an sm90 GPU")


def rel_error(out, ref) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


def random_qkv(seed: int, b: int, n: int, m: int, h: int, d: int, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (b, n, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, m, h, d), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (b, m, h, d), jnp.float32).astype(dtype)
    return q, k, v


def random_cluster_sizes(
    rng: np.random.Generator, total: int, num: int, zero_frac: float = 0.2
) -> np.ndarray:
    """Random non-negative sizes summing to ``total``, some of them zero."""
    weights = rng.random(num) * (rng.random(num) >= zero_frac)
    if weights.sum() == 0:
        weights[rng.integers(num)] = 1.0
    sizes = np.floor(weights / weights.sum() * total).astype(np.int32)
    sizes[int(np.argmax(weights))] += total - int(sizes.sum())
    return sizes


def random_problem(seed, b, n, m, h, cq, ck, density, zero_frac=0.2):
    """Random cluster sizes ``[B, H, Cq]`` / ``[B, H, Ck]`` (some empty) and a map of the given density."""
    rng = np.random.default_rng(seed)
    qs = np.stack([[random_cluster_sizes(rng, n, cq, zero_frac) for _ in range(h)] for _ in range(b)])
    ks = np.stack([[random_cluster_sizes(rng, m, ck, zero_frac) for _ in range(h)] for _ in range(b)])
    cmap = rng.random((b, h, cq, ck)) < density
    return jnp.asarray(qs), jnp.asarray(ks), jnp.asarray(cmap)


# cluster_tile_plan compiled once per shape and static setting.
tile_plan = jax.jit(
    cluster_tile_plan, static_argnames=("num_q", "num_k", "block_q", "block_k", "row_align", "width")
)


def assert_close(out, ref, dtype) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not np.isnan(np.asarray(out, np.float32)).any(), "NaN in kernel output"
    err = rel_error(out, ref)
    assert err <= REL_TOL[dtype], (
        f"relative error {err:.3e} > {REL_TOL[dtype]:.0e} for {jnp.dtype(dtype).name}"
    )
