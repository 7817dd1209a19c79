"""permute_tokens (Pallas Triton gather) against its take_along_axis oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from svg_jax.pallas_kernels import PermuteConfig, permute_tokens, permute_tokens_reference


def random_sources(seed: int, b: int, h: int, n: int, m: int):
    keys = jax.random.split(jax.random.PRNGKey(seed), b * h)
    src = jnp.stack([jax.random.randint(kk, (m,), 0, n) for kk in keys])  # [B·H, M]
    return src.reshape(b, h, m).astype(jnp.int32)


def random_arrays(seed: int, count: int, shape, dtype):
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    return tuple(jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in keys)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n, m, d", [(96, 96, 64), (75, 75, 32), (40, 72, 24)])
def test_grid_matches_reference(interpret, dtype, n, m, d):
    b, h = 2, 3
    xs = random_arrays(1, 3, (b, n, h, d), dtype)
    src = random_sources(2, b, h, n, m)
    out = permute_tokens(xs, src, implementation="pallas_triton", interpret=interpret,
                         config=PermuteConfig(block_rows=32))
    ref = permute_tokens_reference(xs, src)
    assert len(out) == 3
    for o, r in zip(out, ref, strict=True):
        assert o.shape == (b, m, h, d) and o.dtype == dtype
        np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(r, np.float32))  # a copy: exact


@given(n=st.integers(1, 80), m=st.integers(1, 80), block_rows=st.sampled_from([16, 32, 64]),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]), seed=st.integers(0, 2**16))
def test_fuzz_ragged_shapes(n, m, block_rows, dtype, seed):
    xs = random_arrays(seed, 1, (1, n, 2, 16), dtype)
    src = random_sources(seed + 1, 1, 2, n, m)
    (out,) = permute_tokens(xs, src, implementation="pallas_triton", interpret=True,
                            config=PermuteConfig(block_rows=block_rows))
    ref = permute_tokens_reference(xs, src)[0]
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_xla_path_and_validation():
    xs = random_arrays(3, 2, (1, 10, 2, 16), jnp.float32)
    src = random_sources(4, 1, 2, 10, 10)
    out = permute_tokens(xs, src, implementation="xla")
    ref = permute_tokens_reference(xs, src)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref[1]))
    with pytest.raises(ValueError, match="src must lie in"):
        permute_tokens(xs, src.at[0, 0, 0].set(10), implementation="xla")
    # Shape mismatches: ValueError from our checks, or TypeError from jaxtyping when its checker is on.
    with pytest.raises((ValueError, TypeError)):
        permute_tokens((xs[0], xs[1][:, :5]), src, implementation="xla")
    with pytest.raises((ValueError, TypeError)):
        permute_tokens(xs, src[:, :1], implementation="xla")
    with pytest.raises(ValueError, match="block_rows"):
        PermuteConfig(block_rows=48)
