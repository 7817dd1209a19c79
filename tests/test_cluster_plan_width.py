"""Narrow chunk lists (``cluster_tile_plan(width=...)``): what fits, the full-width rebuild, and kernels
that run a plan which does not fit through ``with_complete_plan`` (never truncated)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_utils import assert_close, random_problem, random_qkv, require_hopper, tile_plan

from svg_jax.pallas_kernels import (
    cluster_sparse_attention_from_plan,
    cluster_sparse_attention_reference,
    cluster_tile_plan,
)
from svg_jax.pallas_kernels.cluster_plan import default_width

TABLES = ("chunk_starts", "chunk_codes", "chunk_kfirst")


def _plans(qs, ks, cmap, widths, **opts):
    return [tile_plan(qs, ks, cmap, width=w, **opts) for w in widths]


def test_narrow_lists_are_the_full_lists_cut_and_widen_back():
    qs, ks, cmap = random_problem(3, 1, 300, 280, 2, 8, 25, 0.5)
    opts = dict(num_q=300, num_k=280, block_q=32, block_k=16, row_align=8)
    (full,) = _plans(qs, ks, cmap, [None], **opts)
    most = int(full.chunk_counts.max())
    assert full.width == full.full_width and bool(full.fits())
    for width, fits in ((most, True), (most - 1, False), (1, False)):
        (narrow,) = _plans(qs, ks, cmap, [width], **opts)
        assert narrow.width == width and bool(narrow.fits()) == fits
        np.testing.assert_array_equal(narrow.chunk_counts, full.chunk_counts)  # true counts, even cut
        used = np.arange(width) < np.asarray(full.chunk_counts)[..., None]
        for name in TABLES:
            cut = np.asarray(getattr(full, name))[..., :width]
            np.testing.assert_array_equal(np.where(used, getattr(narrow, name), 0), np.where(used, cut, 0))
        wide = jax.jit(lambda p: p.widened())(narrow)
        for name, x in vars(full).items():
            np.testing.assert_array_equal(getattr(wide, name), x, err_msg=name)
    # A width past the bound is the bound.
    assert _plans(qs, ks, cmap, [10**6], **opts)[0].width == full.full_width


def test_default_width():
    assert default_width(75600, 1000, 64, 8) == 448  # Wan 720p, Mosaic tiles: bound 1736
    assert default_width(32760, 1000, 64, 8) == 320  # Wan 480p: bound 1067
    assert default_width(4096, 100, 64, 8) is None  # small: the full bound (115)


@pytest.mark.parametrize("fits", [True, False])
def test_triton_kernel_runs_a_narrow_plan_complete(fits):
    b, n, m, h, d = 1, 200, 180, 2, 64
    q, k, v = random_qkv(5, b, n, m, h, d)
    qs, ks, cmap = random_problem(6, b, n, m, h, 6, 20, 0.5)
    opts = dict(num_q=n, num_k=m, block_q=32, block_k=16)
    most = int(_plans(qs, ks, cmap, [None], **opts)[0].chunk_counts.max())
    (plan,) = _plans(qs, ks, cmap, [most if fits else most // 2], **opts)
    assert bool(plan.fits()) == fits
    kernel = dict(implementation="pallas_triton", interpret=True)
    run = functools.partial(cluster_sparse_attention_from_plan, **kernel)
    out = jax.jit(run)(q, k, v, plan)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.float32)


def test_bad_width():
    qs, ks, cmap = random_problem(0, 1, 40, 40, 1, 2, 3, 0.5)
    for width in (0, 2.5, True):
        with pytest.raises(ValueError, match="width must be None or an int >= 1"):
            cluster_tile_plan(qs, ks, cmap, num_q=40, num_k=40, block_q=16, block_k=16, width=width)


@pytest.mark.gpu
@pytest.mark.parametrize("fits", [True, False])
def test_gpu_mosaic_kernel_runs_a_narrow_plan_complete(fits):
    require_hopper()
    b, n, m, h, d = 1, 3000, 2900, 2, 128
    q, k, v = random_qkv(7, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(8, b, n, m, h, 20, 60, 0.3)
    opts = dict(num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    most = int(_plans(qs, ks, cmap, [None], **opts)[0].chunk_counts.max())
    (plan,) = _plans(qs, ks, cmap, [most if fits else most // 2], **opts)
    assert bool(plan.fits()) == fits
    run = functools.partial(cluster_sparse_attention_from_plan, implementation="pallas_mosaic")
    out = jax.jit(run)(q, k, v, plan)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.bfloat16)


@pytest.mark.parametrize("seed, ck, zero", [(5, 25, 0.2), (6, 70, 0.5), (7, 3, 0.0)])
def test_packed_running_sum_is_the_two_running_sums(seed, ck, zero, monkeypatch):
    """The plan's one running sum of chunk ends and mixed counts packed in an int32 gives the plan of the
    two separate running sums it replaces (taken when the packing would not fit)."""
    import svg_jax.pallas_kernels.cluster_plan as cluster_plan

    qs, ks, cmap = random_problem(seed, 1, 300, 280, 2, 8, ck, 0.5, zero_frac=zero)
    opts = dict(num_q=300, num_k=280, block_q=32, block_k=16, row_align=8)
    build = lambda *a: cluster_plan.cluster_tile_plan(*a, **opts)  # eager: the patched constant takes effect
    # Running sums along the key clusters, from a fresh trace (a new function each time: no cache).
    scans = lambda: str(jax.make_jaxpr(lambda *a: build(*a))(qs, ks, cmap)).count("cumsum[axis=2")
    packed, packed_scans = build(qs, ks, cmap), scans()
    monkeypatch.setattr(cluster_plan, "PACKED_SCAN_BITS", 0)
    apart, apart_scans = build(qs, ks, cmap), scans()
    assert apart_scans == packed_scans + 1  # the other branch did run
    for name, x in vars(packed).items():
        np.testing.assert_array_equal(getattr(apart, name), x, err_msg=name)
