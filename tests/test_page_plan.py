"""Key pages (``pallas_kernels.page_plan``) and the paged Mosaic kernel: every selected key row listed once,
the plain-XLA reference against the cluster oracle, the partial-tiles-first order, errors, and (``-m gpu``)
the kernel against its reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_utils import assert_close, random_problem, random_qkv, require_hopper

from svg_jax.pallas_kernels import cluster_sparse_attention_reference
from svg_jax.pallas_kernels.page_plan import (
    PAGE_SIZES,
    max_pages,
    page_plan,
    page_row_hits,
    paged_attention_reference,
    paged_cost,
    with_complete_pages,
)
from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import partial_first
from svg_jax.pallas_kernels.tile_aligned import align_query_clusters

plan_of = jax.jit(page_plan, static_argnames=("num_q", "num_k", "block_q", "block_k", "page_rows", "width"))


def _aligned(qs, cmap, n, block_q):
    return align_query_clusters(qs, cmap, num_q=n, block_q=block_q)


def _expected_hits(ks, cmap_al, m):
    """[B, H, Cu, M]: 1 where query cluster u selects the key row's cluster (the oracle's rows)."""
    ks, cmap_al = np.asarray(ks), np.asarray(cmap_al)
    b, h, cu, _ = cmap_al.shape
    out = np.zeros((b, h, cu, m), np.int32)
    for bi in range(b):
        for hi in range(h):
            labels = np.repeat(np.arange(ks.shape[-1]), ks[bi, hi])
            out[bi, hi, :, : len(labels)] = cmap_al[bi, hi][:, labels]
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 200),
    m=st.integers(1, 400),
    cq=st.integers(1, 6),
    ck=st.integers(1, 40),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    block_k=st.sampled_from([32, 64, 128]),
    rows=st.sampled_from(PAGE_SIZES),
    narrow=st.booleans(),
)
def test_every_selected_row_listed_once(seed, n, m, cq, ck, density, block_k, rows, narrow):
    """Random sizes (empty clusters, tiny ones sharing pages), empty and full maps, pages of 8, 16 and 32
    rows, narrow lists."""
    qs, ks, cmap = random_problem(seed, 1, n, m, 2, cq, ck, density, zero_frac=0.3)
    al = _aligned(qs, cmap, n, 16)
    full = max_pages(m, ck, block_k, rows)
    width = max(block_k // rows, full // 3) if narrow else None
    opts = dict(num_q=al.rows, num_k=m, block_q=16, block_k=block_k, page_rows=rows, width=width)
    plan = plan_of(al.sizes, ks, al.cluster_map, **opts)
    counts = np.asarray(plan.counts)
    assert plan.width % (block_k // rows) == 0 and plan.width <= full == plan.full_width
    assert (counts <= full).all()
    assert bool(plan.fits()) == (counts <= plan.width).all()
    if not plan.fits():
        plan = plan.widened()
    assert plan.width == full or bool(plan.fits())
    expected = _expected_hits(ks, al.cluster_map, -(-m // rows) * rows)
    np.testing.assert_array_equal(np.asarray(page_row_hits(plan)), expected)
    assert (counts[..., -1] == 0).all()  # the slack cluster lists nothing
    tiles = np.asarray(al.sizes) // 16  # query tiles of each aligned cluster
    for bi, hi in np.ndindex(1, 2):
        np.testing.assert_array_equal(
            np.asarray(plan.tile_cluster)[bi, hi], np.repeat(np.arange(cq + 1), tiles[bi, hi])
        )
    per_cluster = -(-np.asarray(plan.counts) // (block_k // rows))
    np.testing.assert_array_equal(
        np.asarray(plan.tile_counts()), np.take_along_axis(per_cluster, np.asarray(plan.tile_cluster), -1)
    )


@pytest.mark.parametrize(
    "seed, n, m, cq, ck, density",
    [(0, 150, 130, 5, 9, 0.4), (1, 97, 200, 7, 4, 0.7), (2, 64, 64, 3, 3, 0.0), (3, 200, 90, 11, 6, 1.0)],
)
@pytest.mark.parametrize("dtype, rows", [(jnp.float32, 8), (jnp.bfloat16, 16)])
def test_reference_equals_cluster_oracle(seed, n, m, cq, ck, density, dtype, rows):
    """The paged reference on the aligned layout, rows restored, is the cluster oracle."""
    b, h, d = 1, 2, 32
    q, k, v = random_qkv(seed, b, n, m, h, d, dtype)
    qs, ks, cmap = random_problem(seed + 10, b, n, m, h, cq, ck, density)
    al = _aligned(qs, cmap, n, 16)
    plan = plan_of(
        al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=m, block_q=16, block_k=32, page_rows=rows
    )
    out = _restored(paged_attention_reference, q, k, v, al, plan)
    assert_close(out, cluster_sparse_attention_reference(q, k, v, qs, ks, cmap), dtype)


def _restored(attention, q, k, v, al, plan, **kw):
    """``attention(qa, k, v, plan)`` on the aligned rows of q, read back in the sorted order."""
    n, d = q.shape[1], q.shape[-1]
    src = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), al.dst.shape)
    qa = jnp.take_along_axis(q, jnp.swapaxes(al.source(src), 1, 2)[..., None], axis=1)
    out = attention(qa, k, v, plan, sm_scale=d**-0.5, **kw)
    return jnp.take_along_axis(out, jnp.swapaxes(al.dst, 1, 2)[..., None], axis=1)


def test_partial_tiles_go_first():
    qs, ks, cmap = random_problem(5, 1, 300, 700, 2, 6, 30, 0.4)
    al = _aligned(qs, cmap, 300, 16)
    plan = plan_of(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=700, block_q=16, block_k=64)
    moved, n_partial = partial_first(plan)
    per = plan.pages_per_tile
    tiles = lambda p: np.asarray(p.pages).reshape(*p.pages.shape[:-1], -1, per)
    words = lambda p: np.asarray(p.valid).reshape(*p.valid.shape[:-1], -1, 2)
    n_tiles = -(-np.asarray(plan.counts) // per)
    for idx in np.ndindex(*plan.counts.shape):
        t = n_tiles[idx]
        before = list(zip(map(tuple, tiles(plan)[idx][:t]), map(tuple, words(plan)[idx][:t]), strict=True))
        after = list(zip(map(tuple, tiles(moved)[idx][:t]), map(tuple, words(moved)[idx][:t]), strict=True))
        partial = [x for x in before if x[1] != (-1, -1)]
        assert after == partial + [x for x in before if x[1] == (-1, -1)]  # in order, partial ones first
        assert n_partial[idx] == len(partial)
    np.testing.assert_array_equal(np.asarray(page_row_hits(moved)), np.asarray(page_row_hits(plan)))


def test_with_complete_pages_rebuilds_a_list_that_does_not_fit():
    qs, ks, cmap = random_problem(6, 1, 100, 400, 1, 3, 20, 1.0)  # every key row selected
    al = _aligned(qs, cmap, 100, 16)
    narrow = plan_of(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=400, block_q=16, block_k=32, width=8)
    assert not bool(narrow.fits())
    listed = jax.jit(lambda p: with_complete_pages(p, lambda p: jnp.sum(page_row_hits(p))))(narrow)
    assert int(listed) == 400 * int(np.sum(np.asarray(qs) > 0))


@pytest.mark.parametrize("seed, density, rows", [(0, 0.1, 16), (1, 0.4, 8), (2, 0.9, 32), (3, 0.0, 16)])
def test_paged_cost_counts_the_plans_tiles(seed, density, rows):
    """The estimate's key tiles are the plan's exactly; its partial tiles bound the plan's from above."""
    n, m, cq, ck = 400, 900, 6, 40
    qs, ks, cmap = random_problem(seed, 1, n, m, 2, cq, ck, density)
    al = _aligned(qs, cmap, n, 16)
    plan = plan_of(
        al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=m, block_q=16, block_k=64, page_rows=rows
    )
    cost = functools.partial(paged_cost, al.sizes, ks, al.cluster_map, num_k=m, block_q=16, page_rows=rows)
    tiles = np.asarray(cost(tile_weight=1.0, partial_weight=0.0))
    np.testing.assert_allclose(tiles, np.asarray(jnp.sum(plan.tile_counts(), axis=-1)))
    _, n_partial = partial_first(plan)
    q_tiles = np.asarray(al.sizes) // 16
    actual = (q_tiles * np.asarray(n_partial)).sum(-1)
    estimate = np.asarray(cost(tile_weight=0.0, partial_weight=1.0))
    assert (estimate >= actual).all() and (estimate <= tiles).all()


def test_bad_arguments():
    qs, ks, cmap = random_problem(0, 1, 40, 40, 1, 3, 3, 0.5)
    al = _aligned(qs, cmap, 40, 16)
    with pytest.raises(ValueError, match="block_k must be a multiple of 32"):
        page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=40, block_q=16, block_k=48)
    with pytest.raises(ValueError, match="num_q must be whole tiles"):
        page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows + 1, num_k=40, block_q=16)
    with pytest.raises(ValueError, match="page_rows must be one of"):
        page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=40, block_q=16, page_rows=12)
    with pytest.raises(ValueError, match="width must be None or an int"):
        page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=40, block_q=16, width=0)


def test_kernel_rejects_unaligned_queries():
    from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import paged_sparse_attention_mosaic

    qs, ks, cmap = random_problem(0, 1, 300, 300, 1, 3, 3, 0.5)
    al = _aligned(qs, cmap, 300, 128)
    plan = page_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, num_k=300)
    q = jnp.zeros((1, 300, 1, 128), jnp.bfloat16)
    with pytest.raises(ValueError, match="q must have the plan's"):
        paged_sparse_attention_mosaic(q, q, q, plan, sm_scale=1.0)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "block_k, overlap, density, n, m, cq, ck, rows",
    [
        (64, True, 0.3, 3000, 2900, 20, 60, 8),
        (64, True, 0.3, 3000, 2900, 20, 60, 16),
        (64, True, 0.3, 3000, 2900, 20, 60, 32),
        (64, False, 0.3, 2049, 2300, 7, 40, 8),
        (128, True, 0.5, 2500, 2000, 9, 300, 8),  # tiny key clusters: pages shared by runs
        (64, True, 0.0, 700, 900, 4, 10, 8),  # nothing selected: zeros
        (64, True, 1.0, 1000, 1500, 5, 12, 8),  # everything: dense
    ],
)
def test_gpu_paged_kernel_matches_reference(block_k, overlap, density, n, m, cq, ck, rows):
    require_hopper()
    from svg_jax.pallas_kernels.paged_sparse_attn_mosaic import paged_sparse_attention_mosaic

    b, h, d = 1, 2, 128
    q, k, v = random_qkv(11, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(12, b, n, m, h, cq, ck, density)
    al = _aligned(qs, cmap, n, 128)
    opts = dict(num_q=al.rows, num_k=m, block_q=128, block_k=block_k, page_rows=rows)
    plan = plan_of(al.sizes, ks, al.cluster_map, **opts)
    kernel = jax.jit(
        functools.partial(paged_sparse_attention_mosaic, overlap=overlap), static_argnames="sm_scale"
    )
    out = _restored(kernel, q, k, v, al, plan)
    assert_close(out, cluster_sparse_attention_reference(q, k, v, qs, ks, cmap), jnp.bfloat16)
    ref = _restored(paged_attention_reference, q, k, v, al, plan)
    assert_close(out, ref, jnp.bfloat16)
    # Tiles of at most 64 real rows on one warpgroup: the same bits on the real rows.
    half = _restored(kernel, q, k, v, al, plan, tile_rows=al.tile_rows)
    np.testing.assert_array_equal(np.asarray(half), np.asarray(out))
