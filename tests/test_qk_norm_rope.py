"""Fused QK-norm + RoPE (Pallas Triton) against its XLA reference, and the reference against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_utils import REL_TOL, rel_error

from svg_jax.pallas_kernels import QKNormRopeConfig, qk_norm_rope, qk_norm_rope_reference


def make_inputs(seed: int, b: int, n: int, h: int, d: int, dtype):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    e = h * d
    q = (3.0 * jax.random.normal(ks[0], (b, n, e))).astype(dtype)
    k = jax.random.normal(ks[1], (b, n, e)).astype(dtype)
    wq = (1.0 + 0.2 * jax.random.normal(ks[2], (e,))).astype(dtype)
    wk = (1.0 + 0.2 * jax.random.normal(ks[3], (e,))).astype(dtype)
    angles = jax.random.uniform(ks[4], (n, d // 2), maxval=2 * np.pi)
    return q, k, wq, wk, jnp.cos(angles), jnp.sin(angles)


def numpy_reference(x, w, cos, sin, num_heads, eps):
    """float64: RMSNorm over E, then (x[2i] + i·x[2i+1])·e^{iθ} per head (diffusers' complex RoPE)."""
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * np.asarray(w, np.float64)
    b, n, e = y.shape
    z = y.reshape(b, n, num_heads, e // num_heads // 2, 2)
    rot = (z[..., 0] + 1j * z[..., 1]) * (np.asarray(cos) + 1j * np.asarray(sin))[None, :, None, :]
    return np.stack([rot.real, rot.imag], -1).reshape(b, n, num_heads, e // num_heads)


def test_reference_matches_complex_rotation():
    q, k, wq, wk, cos, sin = make_inputs(0, 2, 12, 3, 16, jnp.float32)
    oq, ok = qk_norm_rope_reference(q, k, wq, wk, cos, sin, num_heads=3, eps=1e-6)
    assert rel_error(oq, numpy_reference(q, wq, cos, sin, 3, 1e-6)) < 1e-6
    assert rel_error(ok, numpy_reference(k, wk, cos, sin, 3, 1e-6)) < 1e-6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n, h, d", [(64, 3, 32), (50, 2, 64)])
def test_kernel_matches_reference(interpret, dtype, n, h, d):
    q, k, wq, wk, cos, sin = make_inputs(1, 2, n, h, d, dtype)
    got = qk_norm_rope(q, k, wq, wk, cos, sin, num_heads=h, implementation="pallas_triton",
                       interpret=interpret, config=QKNormRopeConfig(block_rows=16))
    want = qk_norm_rope_reference(q, k, wq, wk, cos, sin, num_heads=h)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (2, n, h, d) and g.dtype == dtype
        assert rel_error(g, w) <= REL_TOL[dtype] / 10  # same math, same roundings: near bit-exact


@given(n=st.integers(1, 24), h=st.integers(1, 3), d=st.sampled_from([8, 16, 32]),
       block_rows=st.sampled_from([4, 16]), dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
       seed=st.integers(0, 2**16))
def test_fuzz_shapes(n, h, d, block_rows, dtype, seed):
    q, k, wq, wk, cos, sin = make_inputs(seed, 1, n, h, d, dtype)
    got = qk_norm_rope(q, k, wq, wk, cos, sin, num_heads=h, implementation="pallas_triton", interpret=True,
                       config=QKNormRopeConfig(block_rows=block_rows))
    want = qk_norm_rope_reference(q, k, wq, wk, cos, sin, num_heads=h)
    assert max(rel_error(g, w) for g, w in zip(got, want, strict=True)) <= REL_TOL[dtype] / 10


def test_auto_on_cpu_is_the_reference_and_validation():
    q, k, wq, wk, cos, sin = make_inputs(2, 1, 8, 2, 16, jnp.float32)
    if jax.default_backend() != "gpu":
        got = qk_norm_rope(q, k, wq, wk, cos, sin, num_heads=2)
        want = qk_norm_rope_reference(q, k, wq, wk, cos, sin, num_heads=2)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    with pytest.raises(ValueError, match="num_heads"):
        qk_norm_rope(q, k, wq, wk, cos, sin, num_heads=3)
    # Shape mismatches: ValueError from our checks, or TypeError from jaxtyping when its checker is on.
    with pytest.raises((ValueError, TypeError)):
        qk_norm_rope(q, k, wq, wk, cos[:, :4], sin, num_heads=2)
    with pytest.raises((ValueError, TypeError)):
        qk_norm_rope(q, k, wq[:4], wk, cos, sin, num_heads=2)
    with pytest.raises(ValueError, match="implementation"):
        qk_norm_rope(q, k, wq, wk, cos, sin, num_heads=2, implementation="cuda")
    with pytest.raises(NotImplementedError, match="power-of-two head dim"):
        q6, k6, wq6, wk6, cos6, sin6 = make_inputs(2, 1, 8, 2, 12, jnp.float32)
        qk_norm_rope(q6, k6, wq6, wk6, cos6, sin6, num_heads=2, implementation="pallas_triton")
