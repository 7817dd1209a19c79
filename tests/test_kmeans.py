"""k-means: the fused assignment kernel against its oracle, and the Lloyd loop built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_utils import require_hopper

from svg_jax.kmeans import KMeansResult, kmeans, update_centroids
from svg_jax.pallas_kernels import KMeansAssignConfig, kmeans_assign, kmeans_assign_reference
from svg_jax.pallas_kernels.kmeans_reference import rounded_centroids, squared_distances

ON_GPU = jax.default_backend() == "gpu"

# Distances of the kernel vs the oracle on the same rounded inputs: only the dot's summation order differs.
DIST_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 1e-3, jnp.float16: 1e-3}
SMALL_TILES = KMeansAssignConfig(block_n=16, block_k=16)


def _data(seed: int, g: int, n: int, k: int, d: int, dtype=jnp.float32):
    kx, kc = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (g, n, d), jnp.float32).astype(dtype)
    c = jax.random.normal(kc, (g, k, d), jnp.float32)
    return x, c


def _check_assignment(x, c, labels, dist, dtype) -> None:
    """Labels are a nearest centroid up to rounding, and the returned distance is its distance."""
    d_ref = np.asarray(squared_distances(x, c))  # [G, N, K]
    labels, dist = np.asarray(labels), np.asarray(dist)
    assert labels.dtype == np.int32 and dist.dtype == np.float32
    k = c.shape[1]
    assert ((labels >= 0) & (labels < k)).all()
    best = d_ref.min(-1)
    chosen = np.take_along_axis(d_ref, labels[..., None], -1)[..., 0]
    scale = 1.0 + np.abs(d_ref).max()
    tol = DIST_TOL[dtype] * scale
    np.testing.assert_array_less(chosen - best, tol)
    np.testing.assert_allclose(dist, best, atol=tol, rtol=0)
    # Rows whose two nearest centroids are well separated must agree exactly with the oracle.
    ref_labels = np.asarray(kmeans_assign_reference(x, c)[0])
    srt = np.sort(d_ref, axis=-1)
    clear = (srt[..., 1] - srt[..., 0] > 2 * tol) if k > 1 else np.ones_like(labels, bool)
    np.testing.assert_array_equal(labels[clear], ref_labels[clear])


@settings(max_examples=5, derandomize=True, deadline=None)
@given(
    g=st.integers(1, 2),
    n=st.integers(1, 150),
    k=st.integers(1, 70),
    d=st.sampled_from([1, 5, 16, 24, 33]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    small_tiles=st.booleans(),
)
def test_assign_kernel_fuzz(g, n, k, d, dtype, small_tiles):
    x, c = _data(n * 1000 + k, g, n, k, d, dtype)
    config = SMALL_TILES if small_tiles else None
    labels, dist = kmeans_assign(x, c, implementation="pallas_triton", interpret=True, config=config)
    _check_assignment(x, c, labels, dist, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_assign_kernel_ragged_grid(dtype):
    """N, K, D all off the tiles: a shifted last row tile, padded centroid tiles, padded D."""
    x, c = _data(3, 2, 75, 37, 20, dtype)
    labels, dist = kmeans_assign(x, c, implementation="pallas_triton", interpret=True, config=SMALL_TILES)
    _check_assignment(x, c, labels, dist, dtype)


@pytest.mark.parametrize("implementation", ["pallas_triton", "xla"])
def test_assign_ties_pick_lowest_index(implementation):
    """Exact ties (integer data: every distance is exact) go to the lowest centroid index, across tiles."""
    rng = np.random.default_rng(0)
    g, n, k, d = 1, 40, 48, 16
    c = rng.integers(-3, 4, (g, k, d)).astype(np.float32)
    c[:, 20] = c[:, 3]  # duplicates in other 16-wide centroid tiles
    c[:, 45] = c[:, 3]
    x = rng.integers(-3, 4, (g, n, d)).astype(np.float32)
    x[:, :10] = c[:, 3:4]  # these rows sit exactly on centroids 3 = 20 = 45
    x[:, 10] = 0.0
    c[:, 30] = -c[:, 31]  # row 10 is equidistant from 30 and 31 ...
    c[:, 30, 0] = c[:, 31, 0] = 0.0
    x, c = jnp.asarray(x), jnp.asarray(c)
    labels, _ = kmeans_assign(x, c, implementation=implementation, interpret=True, config=SMALL_TILES)
    ref = kmeans_assign_reference(x, c)[0]
    np.testing.assert_array_equal(labels, ref)
    assert (np.asarray(labels)[0, :10] == 3).all()


def test_assign_bad_inputs():
    x, c = _data(0, 2, 8, 3, 4)
    # Shape errors: ValueError from the wrapper, or TypeError from jaxtyping when its checks are enabled.
    with pytest.raises((ValueError, TypeError), match="x must have rank 3|parameter 'x'"):
        kmeans_assign(x[0], c)
    with pytest.raises((ValueError, TypeError), match="groups .* and dim D=4|parameter 'centroids'"):
        kmeans_assign(x, c[:, :, :3])
    xt = x.reshape(1, 8, 2, 4)  # token-major [B, N, H, D] wants [B, H, K, D] centroids
    with pytest.raises((ValueError, TypeError), match=r"rank 4 \[B, H, K, D\]|parameter 'centroids'"):
        kmeans_assign(xt, c)
    with pytest.raises((ValueError, TypeError), match=r"groups \(1, 2\)|parameter 'centroids'"):
        kmeans_assign(xt, c.reshape(2, 1, 3, 4))
    with pytest.raises(ValueError, match="implementation"):
        kmeans_assign(x, c, implementation="cuda")
    with pytest.raises(ValueError, match="block_n"):
        KMeansAssignConfig(block_n=100)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(4, 4097, 300, 128), (2, 1000, 1000, 64), (3, 77, 5, 7)])
def test_assign_kernel_compiled_gpu(shape, dtype):
    x, c = _data(1, *shape, dtype)
    labels, dist = jax.jit(lambda a, b: kmeans_assign(a, b, implementation="pallas_triton"))(x, c)
    _check_assignment(x, c, labels, dist, dtype)
    # Token-major: the same groups read in place from [B, N, H, D] (the compiled dot may sum in another
    # order than the grouped launch, so the contract is the oracle's tolerance, not bit equality).
    g, n, _, d = shape
    xt = jnp.swapaxes(x.reshape(2, g // 2, n, d), 1, 2) if g % 2 == 0 else x.swapaxes(0, 1)[None]
    ct = c.reshape(xt.shape[0], xt.shape[2], -1, d)
    lt, dt = jax.jit(lambda a, b: kmeans_assign(a, b, implementation="pallas_triton"))(xt, ct)
    assert lt.shape == (xt.shape[0], xt.shape[2], n)
    _check_assignment(x, c, np.asarray(lt).reshape(labels.shape), np.asarray(dt).reshape(dist.shape), dtype)


def _token_major(x: jax.Array, b: int) -> jax.Array:
    """``[G, N, D]`` with ``G = b·h`` as the attention layout ``[B, N, H, D]`` (group ``g = b·H + h``)."""
    g, n, d = x.shape
    return jnp.swapaxes(x.reshape(b, g // b, n, d), 1, 2)


@settings(max_examples=5, derandomize=True, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 70),
    k=st.integers(1, 40),
    d=st.sampled_from([5, 16, 24]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
)
def test_assign_token_major_reads_groups_in_place(b, h, n, k, d, dtype):
    """``[B, N, H, D]`` input (strided rows, no transpose) gives the grouped kernel's exact results."""
    x, c = _data(n * 7 + k, b * h, n, k, d, dtype)
    xt, ct = _token_major(x, b), c.reshape(b, h, k, d)
    want = kmeans_assign(x, c, implementation="pallas_triton", interpret=True, config=SMALL_TILES)
    got = kmeans_assign(xt, ct, implementation="pallas_triton", interpret=True, config=SMALL_TILES)
    for w, g_ in zip(want, got, strict=True):
        assert g_.shape == (b, h, n)
        np.testing.assert_array_equal(np.asarray(g_).reshape(b * h, n), w)
    ref = kmeans_assign(xt, ct, implementation="xla")
    np.testing.assert_array_equal(np.asarray(ref[0]).reshape(b * h, n), kmeans_assign_reference(x, c)[0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_rounded_centroids_match_a_cast(dtype):
    """The centroids' rounding (a reduce_precision XLA cannot elide) equals a cast, and ‖c‖² is computed
    from exactly the rounded values."""
    c = 3 * jax.random.normal(jax.random.key(4), (2, 33, 16), jnp.float32)
    got, cc = jax.jit(rounded_centroids, static_argnums=1)(c, dtype)
    want = c.astype(dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    wf = want.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(cc), np.asarray(jnp.sum(wf * wf, -1)), rtol=1e-6)  # sum order


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("implementation", ["pallas_triton", "pallas_mosaic", "xla"])
def test_assign_float32_centroids_round_consistently_gpu(implementation):
    """Compiled on the GPU, float32 centroids give the labels of the same centroids pre-rounded to bf16,
    grouped and token-major alike (XLA once computed ‖c‖² from the unrounded values in one layout). The
    distances agree to float32 rounding: XLA may sum ‖c‖² in another order in each compilation (seen
    only when other processes shared the GPU while it compiled)."""
    if implementation == "pallas_mosaic":
        require_hopper()
    x, c = _data(9, 40, 1024, 300, 128, jnp.bfloat16)
    fn = jax.jit(lambda a, b: kmeans_assign(a, b, implementation=implementation))
    want = fn(x, c.astype(jnp.bfloat16).astype(jnp.float32))
    for xin, cin in ((x, c), (_token_major(x, 1), c.reshape(1, 40, 300, 128))):
        labels, dist = fn(xin, cin)
        np.testing.assert_array_equal(np.asarray(labels).reshape(40, 1024), np.asarray(want[0]))
        np.testing.assert_allclose(np.asarray(dist).reshape(40, 1024), np.asarray(want[1]), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Lloyd iterations

_STATIC = ("num_clusters", "num_iters", "tol", "implementation", "interpret", "assign_config")
kmeans_jit = jax.jit(kmeans, static_argnames=_STATIC)  # one compile per shape and static setting


def _objective(x, c) -> np.ndarray:
    return np.asarray(jnp.sum(jnp.maximum(jnp.min(squared_distances(x, c), -1), 0.0), -1))  # [G]


def _blobs(seed: int, g: int, n: int, d: int, comps: int):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    mu = 4.0 * jax.random.normal(k1, (g, comps, d))
    lab = jax.random.randint(k2, (g, n), 0, comps)
    return jnp.take_along_axis(mu, lab[..., None], 1) + jax.random.normal(k3, (g, n, d))


def test_objective_never_increases():
    x = _blobs(0, 3, 200, 8, 6)
    c0 = kmeans_jit(x, num_clusters=10, num_iters=0, key=jax.random.key(1)).centroids
    run = lambda c, t: kmeans_jit(x, num_clusters=10, num_iters=t, init_centroids=c)
    prev = _objective(x, c0)
    for t in range(1, 6):
        cur = _objective(x, run(c0, t).centroids)
        assert (cur <= prev * (1 + 1e-5) + 1e-5).all(), (t, prev, cur)
        prev = cur


def test_result_is_consistent():
    """sizes == bincount(labels); centroids are the members' means; labels are nearest to the input."""
    x = _blobs(1, 2, 150, 5, 4)
    res = kmeans_jit(x, num_clusters=7, num_iters=3, key=jax.random.key(0))
    assert isinstance(res, KMeansResult)
    assert res.labels.dtype == jnp.int32 and res.sizes.dtype == jnp.int32
    assert res.centroids.dtype == jnp.float32 and res.centroids.shape == (2, 7, 5)
    assert int(res.num_iters_run) == 3
    labels, sizes = np.asarray(res.labels), np.asarray(res.sizes)
    for gi in range(2):
        np.testing.assert_array_equal(np.bincount(labels[gi], minlength=7), sizes[gi])
        for ci in np.flatnonzero(sizes[gi]):
            np.testing.assert_allclose(
                res.centroids[gi, ci], np.asarray(x)[gi, labels[gi] == ci].mean(0), rtol=1e-5, atol=1e-5
            )


def test_cold_start_uses_distinct_points():
    x = jax.random.normal(jax.random.key(0), (3, 50, 4))
    res = kmeans_jit(x, num_clusters=50, num_iters=0, key=jax.random.key(2))
    for gi in range(3):
        rows = {tuple(r) for r in np.asarray(res.centroids[gi])}
        assert len(rows) == 50  # all rows used once: K = N distinct points
        assert rows == {tuple(r) for r in np.asarray(x[gi])}
    # With K = N every point is its own cluster.
    assert (np.asarray(res.sizes) == 1).all()


def test_warm_start_from_converged_stops_fast():
    x = _blobs(2, 2, 300, 6, 5)
    cold = kmeans_jit(x, num_clusters=8, num_iters=200, key=jax.random.key(3), tol=0.0)
    assert int(cold.num_iters_run) < 200  # converged: no centroid moved
    warm = kmeans_jit(x, num_clusters=8, num_iters=10, init_centroids=cold.centroids, tol=1e-6)
    assert int(warm.num_iters_run) <= 2
    np.testing.assert_array_equal(warm.labels, cold.labels)
    np.testing.assert_allclose(warm.centroids, cold.centroids, rtol=1e-6, atol=1e-6)


def test_tol_none_runs_all_iterations():
    x = _blobs(2, 1, 100, 3, 2)
    res = kmeans_jit(x, num_clusters=2, num_iters=7, key=jax.random.key(0))
    assert int(res.num_iters_run) == 7
    assert int(kmeans_jit(x, num_clusters=2, num_iters=7, key=jax.random.key(0), tol=1e-3).num_iters_run) < 7


def test_empty_cluster_keeps_centroid():
    x = _blobs(4, 2, 120, 4, 3)
    init = kmeans_jit(x, num_clusters=5, num_iters=0, key=jax.random.key(0)).centroids
    far = jnp.full((4,), 1e3)
    init = init.at[:, 2].set(far)  # nothing is ever nearest to it
    res = kmeans_jit(x, num_clusters=5, num_iters=4, init_centroids=init)
    assert (np.asarray(res.sizes)[:, 2] == 0).all()
    assert (np.asarray(res.labels) != 2).all()
    np.testing.assert_array_equal(res.centroids[:, 2], np.broadcast_to(far, (2, 4)))
    assert (np.asarray(res.sizes).sum(-1) == 120).all()
    # The update alone: an empty cluster keeps exactly the centroid it had.
    c, s = update_centroids(x, jnp.zeros((2, 120), jnp.int32), init)
    np.testing.assert_array_equal(c[:, 1:], init[:, 1:])
    assert (np.asarray(s)[:, 0] == 120).all()


def test_pallas_path_matches_xla_path():
    x = _blobs(5, 2, 90, 12, 4)
    kw = dict(num_iters=3, key=jax.random.key(0))
    a = kmeans_jit(x, num_clusters=6, implementation="pallas_triton", interpret=True, **kw)
    b = kmeans_jit(x, num_clusters=6, implementation="xla", **kw)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-6, atol=1e-6)
    # Both give the labels' stable argsort: the sort-based update's own sort, the XLA path a final one.
    for res in (a, b, kmeans_jit(x, num_clusters=6, num_iters=0, init_centroids=a.centroids)):
        np.testing.assert_array_equal(res.order, np.argsort(np.asarray(res.labels), axis=-1, kind="stable"))


@pytest.mark.parametrize("implementation", ["pallas_triton", "xla"])
def test_token_major_kmeans_matches_grouped(implementation):
    """Token-major ``[B, N, H, D]`` k-means (what SVG2 runs on q and k) = the grouped run, cold and warm."""
    b, h = 2, 3
    x = _blobs(9, b * h, 80, 8, 5)
    xt = _token_major(x, b)
    kw = dict(num_clusters=7, implementation=implementation, interpret=True)
    cold_g = kmeans_jit(x, num_iters=4, key=jax.random.key(1), **kw)
    cold_t = kmeans_jit(xt, num_iters=4, key=jax.random.key(1), **kw)
    assert cold_t.labels.shape == (b, h, 80) and cold_t.centroids.shape == (b, h, 7, 8)
    np.testing.assert_array_equal(np.asarray(cold_t.labels).reshape(b * h, 80), cold_g.labels)
    np.testing.assert_allclose(np.asarray(cold_t.centroids).reshape(b * h, 7, 8), cold_g.centroids, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cold_t.sizes).reshape(b * h, 7), cold_g.sizes)
    warm_t = kmeans_jit(xt, num_iters=2, init_centroids=cold_t.centroids, **kw)
    warm_g = kmeans_jit(x, num_iters=2, init_centroids=cold_g.centroids, **kw)
    np.testing.assert_array_equal(np.asarray(warm_t.labels).reshape(b * h, 80), warm_g.labels)
    sizes = np.asarray(warm_t.sizes)
    np.testing.assert_array_equal(sizes.sum(-1), np.full((b, h), 80))  # sizes == bincount(labels)
    np.testing.assert_array_equal(warm_t.order, np.argsort(np.asarray(warm_t.labels), axis=-1, kind="stable"))


def test_token_major_update_keeps_empty_clusters():
    x = jnp.arange(2 * 5 * 3 * 2, dtype=jnp.float32).reshape(2, 5, 3, 2)  # [B, N, H, D]
    labels = jnp.zeros((2, 3, 5), jnp.int32).at[1, 2, 4].set(2)  # cluster 1 empty everywhere
    init = jnp.full((2, 3, 3, 2), -7.0)
    c, s = update_centroids(x, labels, init)
    np.testing.assert_array_equal(s[1, 2], [4, 0, 1])
    np.testing.assert_array_equal(c[:, :, 1], init[:, :, 1])
    np.testing.assert_allclose(c[1, 2, 2], x[1, 4, 2])
    np.testing.assert_allclose(c[0, 1, 0], x[0, :, 1].mean(0))


def test_bf16_input_gives_f32_centroids():
    x = _blobs(6, 1, 64, 8, 3).astype(jnp.bfloat16)
    res = kmeans_jit(x, num_clusters=4, num_iters=3, key=jax.random.key(0))
    assert res.centroids.dtype == jnp.float32
    assert int(res.sizes.sum()) == 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_clusters=0, num_iters=1, key=jax.random.key(0)), "num_clusters"),
        (dict(num_clusters=11, num_iters=1, key=jax.random.key(0)), "num_clusters"),
        (dict(num_clusters=2, num_iters=-1, key=jax.random.key(0)), "num_iters"),
        (dict(num_clusters=2, num_iters=1), "exactly one of key"),
        (
            dict(num_clusters=2, num_iters=1, key=jax.random.key(0), init_centroids=jnp.zeros((1, 2, 3))),
            "exactly one of key",
        ),
        (dict(num_clusters=2, num_iters=1, init_centroids=jnp.zeros((1, 3, 3))), "init_centroids"),
        (
            dict(num_clusters=2, num_iters=1, init_centroids=jnp.zeros((1, 2, 3)), rank4=True),
            r"\[B, H, K, D\]",
        ),
        (dict(num_clusters=2, num_iters=1, key=jax.random.key(0), tol=-1.0), "tol"),
    ],
)
def test_kmeans_bad_arguments(kwargs, match):
    x = jnp.zeros((1, 10, 1, 3)) if kwargs.pop("rank4", False) else jnp.zeros((1, 10, 3))
    with pytest.raises(ValueError, match=match):
        kmeans(x, kwargs.pop("num_clusters"), **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_kmeans_compiled_gpu_matches_xla():
    x = _blobs(7, 4, 5000, 128, 50).astype(jnp.bfloat16)
    kw = dict(num_iters=5, key=jax.random.key(0))
    a = kmeans_jit(x, num_clusters=300, implementation="pallas_triton", **kw)
    b = kmeans_jit(x, num_clusters=300, implementation="xla", **kw)
    agree = float(np.mean(np.asarray(a.labels) == np.asarray(b.labels)))
    assert agree > 0.99, agree


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "shape, block_k, stages",
    [
        ((4, 4097, 300, 128), 128, 4),  # N % 8 != 0 (padded), a partial last tile
        ((4, 4097, 300, 128), 64, 2),
        ((4, 4097, 300, 128), None, 2),  # the default: 3 tiles of 104 centroids
        ((2, 1000, 20, 128), None, 2),  # one tile of 24
        ((2, 1000, 1000, 64), 128, 3),
        ((3, 77, 5, 128), 64, 4),  # N < 128 (padded), K < block_k
        ((2, 130, 129, 256), None, 4),  # D = 256: 64-centroid tiles, a capped ring; N % 8 != 0
    ],
)
@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("row_blocks", [1, 2])
def test_assign_mosaic_kernel_compiled_gpu(shape, block_k, stages, token_major, dtype, row_blocks):
    from svg_jax.pallas_kernels.kmeans_mosaic import kmeans_assign_mosaic

    require_hopper()
    x, c = _data(2, *shape, dtype)
    xin = _token_major(x, 1) if token_major else x
    opts = dict(block_k=block_k, row_blocks=row_blocks)
    if row_blocks == 2 and (shape[-1] == 256 or block_k == 128):  # shared memory / registers run out
        with pytest.raises(ValueError, match="row_blocks=1"):
            kmeans_assign_mosaic(xin, c, **opts)
        return
    fn = jax.jit(lambda a, b: kmeans_assign_mosaic(a, b, num_stages=stages, **opts))
    labels, dist = fn(xin, c)
    _check_assignment(x, c, labels, dist, dtype)
    # Few persistent CTAs: each walks many items, so the rings and row buffers wrap many times.
    labels2, dist2 = jax.jit(lambda a, b: kmeans_assign_mosaic(a, b, num_programs=3, **opts))(xin, c)
    np.testing.assert_array_equal(np.asarray(labels2), np.asarray(labels))
    np.testing.assert_array_equal(np.asarray(dist2), np.asarray(dist))
    if row_blocks == 2 and block_k is not None:  # the item size never changes the result
        same = jax.jit(lambda a, b: kmeans_assign_mosaic(a, b, block_k=block_k, row_blocks=1))(xin, c)
        np.testing.assert_array_equal(np.asarray(same[0]), np.asarray(labels))
        np.testing.assert_array_equal(np.asarray(same[1]), np.asarray(dist))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_assign_mosaic_ties_go_to_lowest_index():
    """Duplicated centroids (inside one tile and across tiles) never win over their first copy."""
    from svg_jax.pallas_kernels.kmeans_mosaic import kmeans_assign_mosaic

    require_hopper()
    x, c = _data(7, 2, 3000, 300, 128, jnp.bfloat16)
    c = c.at[:, 7].set(c[:, 3]).at[:, 200].set(c[:, 3]).at[:, 299].set(c[:, 150])
    labels, dist = jax.jit(kmeans_assign_mosaic)(x, c)
    _check_assignment(x, c, labels, dist, jnp.bfloat16)
    labels = np.asarray(labels)
    assert not np.isin(labels, [7, 200, 299]).any()
    assert (labels == 3).any() and (labels == 150).any()


def test_assign_mosaic_refuses_unsupported_inputs():
    from svg_jax.pallas_kernels.kmeans_mosaic import kmeans_assign_mosaic

    x, c = _data(3, 1, 64, 4, 96, jnp.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        kmeans_assign(x, c, implementation="pallas_mosaic")
    x, c = _data(3, 1, 64, 4, 256, jnp.bfloat16)
    with pytest.raises(ValueError, match="block_k=64"):
        kmeans_assign_mosaic(x, c, block_k=128)
    for bad in (36, 136, 0.5):
        with pytest.raises(ValueError, match="block_k must be a multiple of 8 in \\[8, 128\\]"):
            kmeans_assign_mosaic(x, c, block_k=bad)
    with pytest.raises(ValueError, match="row_blocks must be 1 or 2"):
        kmeans_assign_mosaic(x, c, row_blocks=3)
    with pytest.raises(ValueError, match="use block_k=64 or row_blocks=1"):
        kmeans_assign_mosaic(x, c, row_blocks=2)  # D = 256: four 128-row buffers fill shared memory
    with pytest.raises(ValueError, match="use block_k <= 64 or row_blocks=1"):
        kmeans_assign_mosaic(x[..., :128], c[..., :128], block_k=128, row_blocks=2)


@pytest.mark.parametrize(
    "d, k, row_blocks, want",
    [
        (128, 300, 1, 104),
        (128, 1000, 1, 128),
        (128, 128, 1, 128),
        (128, 129, 1, 72),
        (128, 5, 1, 8),
        (256, 300, 1, 64),
        (128, 300, 2, 64),  # 5 tiles of 64 (320 columns)
        (128, 1000, 2, 64),
        (64, 100, 2, 56),
    ],
)
def test_default_centroid_tile_shares_k_evenly(d, k, row_blocks, want):
    from svg_jax.pallas_kernels.kmeans_mosaic import default_block_k, default_row_blocks

    assert default_block_k(d, k, row_blocks) == want
    # 256-row items wherever their row buffers leave room for the ring (D <= 128 in bf16).
    assert default_row_blocks(d) == (2 if d <= 128 else 1)
