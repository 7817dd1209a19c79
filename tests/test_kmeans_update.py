"""cluster_sums (the sorted, atomic-free k-means update kernel) against its segment-sum oracle, and
update_centroids on it against the XLA update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svg_jax.kmeans import cluster_bounds, sort_by_cluster, update_centroids
from svg_jax.pallas_kernels import ClusterSumsConfig, cluster_sums, cluster_sums_reference

# Kernel vs oracle sum the same float32 values in another order: |error| <= SUM_RTOL·Σ|x| per cluster.
SUM_RTOL = 1e-5
# Jitted once per shape: one XLA compile instead of one per eager op (the CPU suite must stay fast).
sums_jit = jax.jit(cluster_sums, static_argnames=("implementation", "interpret", "config"))
reference_jit = jax.jit(cluster_sums_reference)
update_jit = jax.jit(update_centroids, static_argnames=("implementation", "interpret"))


def _sort(labels: np.ndarray, k: int):
    """Independent NumPy order and bounds: stable argsort, ``bounds[c] = #{label < c}``."""
    order = np.argsort(labels, axis=-1, kind="stable").astype(np.int32)
    bounds = (labels[..., None, :] < np.arange(k + 1)[:, None]).sum(-1).astype(np.int32)
    return jnp.asarray(order), jnp.asarray(bounds)


def _layout(x_groups: np.ndarray, b: int, token_major: bool):
    """``[G, N, D]`` as is, or as token-major ``[B, N, H, D]`` with group ``g = b·H + h``."""
    if not token_major:
        return jnp.asarray(x_groups), x_groups.shape[:1]
    g, n, d = x_groups.shape
    h = g // b
    return jnp.asarray(x_groups.reshape(b, h, n, d).transpose(0, 2, 1, 3)), (b, h)


def _abs_sums(x, order, bounds) -> np.ndarray:
    """NumPy ``Σ|x|`` of each cluster's rows ``[G, K, D]``: the scale of the summation-order error."""
    xa = np.abs(np.asarray(x, np.float32))
    xg = xa if xa.ndim == 3 else xa.transpose(0, 2, 1, 3).reshape(-1, xa.shape[1], xa.shape[3])
    g, n, d = xg.shape
    order, bounds = np.asarray(order).reshape(g, n), np.asarray(bounds).reshape(g, -1)
    csum = np.concatenate([np.zeros((g, 1, d)), np.cumsum(np.take_along_axis(xg, order[..., None], 1), 1)], 1)
    return np.take_along_axis(csum, bounds[..., 1:, None], 1) - np.take_along_axis(
        csum, bounds[..., :-1, None], 1
    )


def _check_sums(x, order, bounds, got) -> None:
    ref = np.asarray(reference_jit(x, order, bounds))
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = _abs_sums(x, order, bounds).reshape(ref.shape)
    err = np.abs(got - ref)
    assert (err <= SUM_RTOL * scale).all(), float((err / np.maximum(scale, 1e-30)).max())


SMALL = ClusterSumsConfig(clusters_per_program=3, block_rows=16)


def _run_case(b, h, n, k, d, dtype, token_major, num_labels, config, seed) -> None:
    """Sum ``[B·H]`` groups whose labels use only the first ``num_labels`` of ``K`` clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, (b * h, n))  # [G, N]
    x, groups = _layout(rng.normal(size=(b * h, n, d)).astype(np.float32), b, token_major)
    x = x.astype(dtype)
    order, bounds = _sort(labels, k)
    order, bounds = order.reshape(*groups, n), bounds.reshape(*groups, k + 1)
    got = sums_jit(x, order, bounds, implementation="pallas_triton", interpret=True, config=config)
    assert got.shape == (*groups, k, d)
    _check_sums(x, order, bounds, got)
    sizes = np.diff(np.asarray(bounds), axis=-1)
    assert (np.asarray(got)[sizes == 0] == 0).all()  # empty clusters sum to exactly zero


@pytest.mark.parametrize(
    "token_major, dtype, d, config",
    [
        (False, jnp.float32, 33, SMALL),
        (True, jnp.bfloat16, 16, None),
        (False, jnp.bfloat16, 5, None),
        (True, jnp.float32, 64, SMALL),
    ],
)
def test_kernel_grid(token_major, dtype, d, config):
    """Both layouts and dtypes, padded and unpadded D, with K > N (at least 15 empty clusters)."""
    _run_case(2, 2, 45, 60, d, dtype, token_major, 60, config, seed=d)


@settings(max_examples=4, derandomize=True, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 200),
    k=st.integers(1, 70),
    d=st.sampled_from([1, 5, 16, 33, 64]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    token_major=st.booleans(),
    used=st.floats(0.1, 1.0),
    config=st.sampled_from([ClusterSumsConfig(), SMALL, None]),
    seed=st.integers(0, 2**16),
)
def test_kernel_fuzz(b, h, n, k, d, dtype, token_major, used, config, seed):
    """Random sizes and layouts; only a random share of the K labels occurs."""
    _run_case(b, h, n, k, d, dtype, token_major, max(1, round(used * k)), config, seed)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_skewed_labels_are_exact(dtype):
    """One giant cluster (many chunks), a few small ones, most empty. Small integers sum exactly in f32
    in any order, so the kernel must equal a NumPy bincount bit for bit."""
    rng = np.random.default_rng(0)
    b, n, h, d, k = 1, 197, 2, 24, 40
    labels = np.full((b * h, n), 7)
    labels[:, rng.choice(n, 9, replace=False)] = rng.integers(30, 40, 9)
    x = rng.integers(-8, 9, (b, n, h, d)).astype(np.float32)
    order, bounds = _sort(labels, k)
    got = sums_jit(
        jnp.asarray(x, dtype),
        order.reshape(b, h, n),
        bounds.reshape(b, h, k + 1),
        implementation="pallas_triton",
        interpret=True,
        config=ClusterSumsConfig(clusters_per_program=8, block_rows=16),
    )
    want = np.zeros((b * h, k, d), np.float32)
    for gi in range(b * h):
        np.add.at(want[gi], labels[gi], x[0, :, gi])
    np.testing.assert_array_equal(np.asarray(got).reshape(b * h, k, d), want)


def test_cluster_order_and_bounds():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 9, (2, 3, 50)).astype(np.int32)  # K = 12: clusters 9..11 empty
    order, sorted_labels = sort_by_cluster(jnp.asarray(labels), 12)
    bounds = cluster_bounds(sorted_labels, 12)
    want_order, want_bounds = _sort(labels, 12)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_array_equal(bounds, want_bounds)
    assert bounds.dtype == jnp.int32 and bounds.shape == (2, 3, 13)


@pytest.mark.parametrize("token_major", [False, True])
def test_update_centroids_pallas_matches_xla(token_major):
    """Same sizes; means agree to float32 summation order; an empty cluster keeps its centroid exactly."""
    rng = np.random.default_rng(2)
    b, h, n, d, k = 2, 2, 90, 12, 10
    labels = rng.integers(0, k, (b * h, n))
    labels[labels == 3] = 4  # cluster 3 empty in every group
    labels[1, labels[1] == 6] = 0  # and 6 in group 1
    x, groups = _layout(rng.normal(size=(b * h, n, d)).astype(np.float32), b, token_major)
    labels = jnp.asarray(labels.reshape(*groups, n), jnp.int32)
    init = jnp.asarray(rng.normal(size=(*groups, k, d)), jnp.float32)
    c_p, s_p = update_jit(x, labels, init, implementation="pallas_triton", interpret=True)
    c_x, s_x = update_jit(x, labels, init, implementation="xla")
    np.testing.assert_array_equal(s_p, s_x)
    assert s_p.dtype == jnp.int32 and c_p.dtype == jnp.float32
    c_p, c_x = np.asarray(c_p).reshape(b * h, k, d), np.asarray(c_x).reshape(b * h, k, d)
    np.testing.assert_allclose(c_p, c_x, rtol=0, atol=SUM_RTOL * np.abs(np.asarray(x)).max())
    init = np.asarray(init).reshape(b * h, k, d)
    np.testing.assert_array_equal(c_p[:, 3], init[:, 3])
    np.testing.assert_array_equal(c_p[1, 6], init[1, 6])


def test_bad_inputs():
    x = jnp.zeros((2, 8, 4))
    order = jnp.zeros((2, 8), jnp.int32)
    bounds = jnp.zeros((2, 4), jnp.int32).at[:, -1].set(8)
    kw = dict(implementation="pallas_triton", interpret=True)
    # Shape errors: ValueError from the wrapper, or TypeError from jaxtyping when its checks are enabled.
    with pytest.raises((ValueError, TypeError), match="x must have rank 3|parameter 'x'"):
        cluster_sums(x[0], order, bounds, **kw)
    with pytest.raises((ValueError, TypeError), match=r"order \[G, N\].*shape \(2, 8\)|parameter 'order'"):
        cluster_sums(x, order[:, :5], bounds, **kw)
    with pytest.raises((ValueError, TypeError), match=r"\[B, H, N\]|parameter 'order'"):
        cluster_sums(x.reshape(1, 8, 2, 4), order, bounds, **kw)  # token-major wants [B, H, N] order
    with pytest.raises((ValueError, TypeError), match=r"bounds must be \[G, K\+1\]|parameter 'bounds'"):
        cluster_sums(x, order, bounds[:, :1], **kw)
    with pytest.raises((ValueError, TypeError), match="order .* must be an integer array|parameter 'order'"):
        cluster_sums(x, order.astype(jnp.float32), bounds, **kw)
    with pytest.raises((ValueError, TypeError), match="x must be float32, bfloat16 or float16|parameter 'x'"):
        cluster_sums(x.astype(jnp.int32), order, bounds, **kw)
    with pytest.raises(ValueError, match=r"order must lie in \[0, 8\)"):
        cluster_sums(x, order.at[1, 2].set(8), bounds, **kw)
    with pytest.raises(ValueError, match="bounds must be non-decreasing"):
        cluster_sums(x, order, bounds.at[0, 1].set(5), **kw)
    with pytest.raises(NotImplementedError, match="no Mosaic"):
        cluster_sums(x, order, bounds, implementation="pallas_mosaic")
    with pytest.raises(ValueError, match="block_rows"):
        ClusterSumsConfig(block_rows=24)
    with pytest.raises(ValueError, match="clusters_per_program"):
        ClusterSumsConfig(clusters_per_program=0)


@pytest.mark.gpu
def test_kernel_compiled_gpu():
    """The compiled kernel at a moderate SVG2-like shape: token-major bf16, k-means-like labels."""
    b, n, h, d, k = 1, 5000, 4, 128, 300
    kx, kl = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (b, n, h, d), jnp.float32).astype(jnp.bfloat16)
    labels = jax.random.randint(kl, (b, h, n), 0, k)
    labels = jnp.where(labels < 20, 0, labels)  # one large cluster, clusters 1..19 empty
    order, sorted_labels = sort_by_cluster(labels, k)
    bounds = cluster_bounds(sorted_labels, k)
    got = sums_jit(x, order, bounds, implementation="pallas_triton", interpret=False)
    _check_sums(x, order, bounds, got)
    init = jnp.zeros((b, h, k, d))
    c_p, s_p = update_jit(x, labels, init, implementation="pallas_triton", interpret=False)
    c_x, s_x = update_jit(x, labels, init, implementation="xla")
    np.testing.assert_array_equal(s_p, s_x)
    np.testing.assert_allclose(c_p, c_x, rtol=0, atol=SUM_RTOL * float(jnp.abs(x).max()))
