"""Query clusters padded to whole tiles (``pallas_kernels.tile_aligned``): the layout, attention on it
against the oracle, and the work estimates ``query_tiles="auto"`` compares."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_utils import assert_close, random_problem, random_qkv, require_hopper, tile_plan

from svg_jax.pallas_kernels import cluster_sparse_attention_from_plan, cluster_sparse_attention_reference
from svg_jax.pallas_kernels.cluster_plan import decode_chunk
from svg_jax.pallas_kernels.tile_aligned import (
    align_plan,
    align_query_clusters,
    aligned_cost,
    aligned_rows,
    fixed_cost,
)


def _aligned_attention(q, k, v, qs, ks, cmap, *, block_q, block_k, row_align=1, width=None, **kernel):
    """Attention through the aligned layout, rows restored to the sorted order."""
    n, m = q.shape[1], k.shape[1]
    fixed = tile_plan(
        qs, ks, cmap, num_q=n, num_k=m, block_q=block_q, block_k=block_k, row_align=row_align, width=width
    )
    al, plan = align_plan(fixed, qs, cmap, num_q=n)
    src = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), al.dst.shape)
    qa = jnp.take_along_axis(q, jnp.swapaxes(al.source(src), 1, 2)[..., None], axis=1)
    out = cluster_sparse_attention_from_plan(qa, k, v, plan, **kernel)
    return jnp.take_along_axis(out, jnp.swapaxes(al.dst, 1, 2)[..., None], axis=1), al, plan


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10**6), n=st.integers(1, 300), cq=st.integers(1, 12), bq=st.sampled_from([8, 16, 32])
)
def test_layout(seed, n, cq, bq):
    qs, _, cmap = random_problem(seed, 2, n, 4, 2, cq, 3, 0.5, zero_frac=0.3)
    al = align_query_clusters(qs, cmap, num_q=n, block_q=bq)
    assert al.rows == aligned_rows(n, cq, bq) and al.rows % bq == 0
    sizes, dst = np.asarray(al.sizes), np.asarray(al.dst)
    qs = np.asarray(qs)
    np.testing.assert_array_equal(sizes[..., :-1], -(-qs // bq) * bq)
    assert (sizes[..., -1] >= 0).all() and (sizes.sum(-1) == al.rows).all()
    np.testing.assert_array_equal(np.asarray(al.cluster_map)[..., :-1, :], cmap)
    assert not np.asarray(al.cluster_map)[..., -1, :].any()  # the slack cluster selects nothing
    starts, astarts = np.cumsum(qs, -1) - qs, np.cumsum(sizes[..., :-1], -1) - sizes[..., :-1]
    for bi in range(2):
        for hi in range(2):
            for c in range(cq):  # cluster c's rows keep their order, from its aligned first row
                rows = np.arange(starts[bi, hi, c], starts[bi, hi, c] + qs[bi, hi, c])
                np.testing.assert_array_equal(
                    dst[bi, hi, rows], astarts[bi, hi, c] + rows - starts[bi, hi, c]
                )
    # source() puts each sorted row's token at its aligned row (padding: token 0); restore() reads it back.
    src = jnp.asarray(np.random.default_rng(seed).permutation(n), jnp.int32)
    src = jnp.broadcast_to(src, dst.shape)
    full = np.asarray(al.source(src))
    np.testing.assert_array_equal(np.take_along_axis(full, dst, -1), src)
    unused = np.ones(full.shape, bool)
    np.put_along_axis(unused, dst, False, -1)
    assert (full[unused] == 0).all()
    # tile_rows: each tile's real rows, i.e. how many sorted rows land in it.
    hits = np.zeros((*dst.shape[:2], al.rows // bq), np.int64)
    for bi in range(2):
        for hi in range(2):
            np.add.at(hits[bi, hi], dst[bi, hi] // bq, 1)
    np.testing.assert_array_equal(np.asarray(al.tile_rows), hits)
    inv = jnp.argsort(src, axis=-1).astype(jnp.int32)  # each token's sorted row
    np.testing.assert_array_equal(
        np.take_along_axis(full, np.asarray(al.restore(inv)), -1), np.broadcast_to(np.arange(n), dst.shape)
    )


@pytest.mark.parametrize(
    "seed, n, m, cq, ck, density",
    [(0, 150, 130, 5, 9, 0.4), (1, 97, 200, 7, 4, 0.7), (2, 64, 64, 3, 3, 0.0), (3, 200, 90, 11, 6, 1.0)],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_on_aligned_layout_equals_oracle(seed, n, m, cq, ck, density, dtype):
    """Every tile holds one query cluster (padding rows included); empty clusters, an empty map and a
    full one. Restored rows equal the oracle on the unaligned layout."""
    b, h, d = 1, 2, 32
    q, k, v = random_qkv(seed, b, n, m, h, d, dtype)
    qs, ks, cmap = random_problem(seed + 10, b, n, m, h, cq, ck, density)
    out, al, plan = _aligned_attention(
        q, k, v, qs, ks, cmap, block_q=16, block_k=16, implementation="pallas_triton", interpret=True
    )
    ref = cluster_sparse_attention_reference(q, k, v, qs, ks, cmap)
    assert_close(out, ref, dtype)
    _, _, uniform = decode_chunk(plan.chunk_codes)
    listed = np.arange(plan.width) < np.asarray(plan.chunk_counts)[..., None]
    assert np.asarray(uniform)[listed].all()  # no tile spans two query clusters: no element masks


def test_fixed_cost_counts_masked_chunks():
    qs, ks, cmap = random_problem(4, 1, 300, 280, 2, 9, 25, 0.5)
    opts = dict(num_q=300, num_k=280, block_q=32, block_k=16, row_align=8)
    full = tile_plan(qs, ks, cmap, **opts)
    lead, valid, uniform = (np.asarray(x) for x in decode_chunk(full.chunk_codes))
    listed = np.arange(full.width) < np.asarray(full.chunk_counts)[..., None]
    takes_mask = listed & ((lead > 0) | (valid < 16) | (uniform == 0))
    chunks = np.asarray(full.chunk_counts).sum(-1)
    masked = takes_mask.sum((-2, -1))
    assert 0 < masked.sum() < chunks.sum()
    np.testing.assert_allclose(fixed_cost(full, 0.0), chunks)
    np.testing.assert_allclose(fixed_cost(full, 0.5), chunks + 0.5 * masked, rtol=1e-6)
    # A narrow plan sees the first `width` chunks of each tile; their masked share stands for the rest.
    width = int(np.asarray(full.chunk_counts).max()) // 2
    narrow = tile_plan(qs, ks, cmap, width=width, **opts)
    seen = np.minimum(np.asarray(full.chunk_counts), width)
    masked_seen = ((np.arange(width) < seen[..., None]) & takes_mask[..., :width]).sum((-2, -1))
    expect = chunks * (1 + masked_seen / seen.sum(-1))
    np.testing.assert_allclose(fixed_cost(narrow, 1.0), expect, rtol=1e-6)


@pytest.mark.parametrize("seed, density", [(0, 0.1), (1, 0.3), (2, 0.6)])
def test_aligned_cost_estimates_the_aligned_plan(seed, density):
    """The estimate (run tails as half a chunk, two masked edge chunks per run) is close to the aligned
    plan's true chunks and masked chunks, i.e. to ``fixed_cost`` of that plan."""
    n = m = 3000
    qs, ks, cmap = random_problem(seed, 1, n, m, 2, 24, 80, density, zero_frac=0.0)
    al = align_query_clusters(qs, cmap, num_q=n, block_q=64)
    opts = dict(num_q=al.rows, num_k=m, block_q=64, block_k=32, row_align=8)
    plan = tile_plan(al.sizes, ks, al.cluster_map, **opts)
    for weight in (0.0, 0.6):
        est = aligned_cost(qs, ks, cmap, block_q=64, block_k=32, masked_weight=weight)
        np.testing.assert_allclose(est, fixed_cost(plan, weight), rtol=0.15)


def test_retiled_is_the_plan_built_for_those_clusters():
    qs, ks, cmap = random_problem(5, 1, 200, 150, 2, 6, 10, 0.5)
    opts = dict(num_k=150, block_q=16, block_k=16, row_align=8)
    fixed = tile_plan(qs, ks, cmap, num_q=200, width=40, **opts)
    al = align_query_clusters(qs, cmap, num_q=200, block_q=16)
    again = jax.jit(lambda p, s, c: p.retiled(s, c, num_q=al.rows))(fixed, al.sizes, al.cluster_map)
    direct = tile_plan(al.sizes, ks, al.cluster_map, num_q=al.rows, width=40, **opts)
    for name, x in vars(direct).items():
        np.testing.assert_array_equal(getattr(again, name), x, err_msg=name)


def test_align_plan_marks_the_retiled_plan():
    """``align_plan`` is ``retiled`` over ``align_query_clusters`` at the plan's block_q, marked
    ``one_cluster_tiles``; the mark survives widening a narrow plan and moving masked chunks first."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import masked_first

    qs, ks, cmap = random_problem(6, 1, 200, 150, 2, 6, 10, 0.5)
    fixed = tile_plan(qs, ks, cmap, num_q=200, num_k=150, block_q=16, block_k=16, row_align=8, width=8)
    assert not fixed.one_cluster_tiles
    al, plan = jax.jit(functools.partial(align_plan, num_q=200))(fixed, qs, cmap)
    ref = align_query_clusters(qs, cmap, num_q=200, block_q=16)
    np.testing.assert_array_equal(al.dst, ref.dst)
    again = fixed.retiled(ref.sizes, ref.cluster_map, num_q=ref.rows)
    for name, x in vars(again).items():
        if name != "one_cluster_tiles":
            np.testing.assert_array_equal(getattr(plan, name), x, err_msg=name)
    assert plan.one_cluster_tiles and plan.widened().one_cluster_tiles
    assert masked_first(plan)[0].one_cluster_tiles


def _aligned_gpu_problem(seed, cq):
    """bf16 ``(aligned q, k, v)``, the aligned layout and its chunk plan: 2500 queries in ``cq`` clusters,
    2300 keys in 50, density 0.3, two heads of 128."""
    b, n, m, h, d = 1, 2500, 2300, 2, 128
    q, k, v = random_qkv(seed, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(seed + 1, b, n, m, h, cq, 50, 0.3)
    fixed = tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    al, plan = align_plan(fixed, qs, cmap, num_q=n)
    src = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), al.dst.shape)
    qa = jnp.take_along_axis(q, jnp.swapaxes(al.source(src), 1, 2)[..., None], axis=1)
    return (qa, k, v), al, plan


@pytest.mark.gpu
@pytest.mark.parametrize("per_step, overlap", [(1, True), (1, False), (2, False)])
def test_gpu_edge_mask_equals_the_general_mask(per_step, overlap):
    """On an aligned plan the edge-only mask gives the same bits as the general cluster mask (both add 0
    or -inf per column), walking one or two chunks per step."""
    require_hopper()
    from svg_jax.pallas_kernels import cluster_sparse_attn_mosaic as cm

    (qa, k, v), al, plan = _aligned_gpu_problem(9, 15)
    opts = dict(sm_scale=qa.shape[-1] ** -0.5, tiles_per_step=per_step, overlap=overlap)

    def run(**o):
        return np.asarray(
            jax.jit(functools.partial(cm.cluster_sparse_attention_mosaic, **opts, **o))(qa, k, v, plan)
        )

    np.testing.assert_array_equal(run(edge_only=True), run(edge_only=False))
    np.testing.assert_array_equal(run(), run(make_mask=cm.cluster_mask))  # the default is the edge mask


@pytest.mark.gpu
@pytest.mark.parametrize("per_step, overlap", [(1, True), (1, False), (2, False)])
def test_gpu_half_tiles_equal_paired_tiles(per_step, overlap):
    """With ``tile_rows`` a tile of at most 64 real rows runs on warpgroup 0 alone (warpgroup 1 only keeps
    the K/V ring's count): the real rows come out bit for bit as when both warpgroups run every tile."""
    require_hopper()
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic

    (qa, k, v), al, plan = _aligned_gpu_problem(13, 23)
    assert int(jnp.sum((al.tile_rows > 0) & (al.tile_rows <= 64))) > 0  # some half tiles
    opts = dict(sm_scale=qa.shape[-1] ** -0.5, tiles_per_step=per_step, overlap=overlap)
    kernel = jax.jit(functools.partial(cluster_sparse_attention_mosaic, **opts))
    real = jnp.swapaxes(al.dst, 1, 2)[..., None]
    both = jnp.take_along_axis(kernel(qa, k, v, plan), real, axis=1)
    half = jnp.take_along_axis(kernel(qa, k, v, plan, tile_rows=al.tile_rows), real, axis=1)
    np.testing.assert_array_equal(np.asarray(half), np.asarray(both))


@pytest.mark.gpu
@pytest.mark.parametrize("n, cq", [(3000, 20), (2049, 7)])
def test_gpu_mosaic_on_aligned_layout(n, cq):
    require_hopper()
    b, m, h, d = 1, 2900, 2, 128
    q, k, v = random_qkv(7, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(8, b, n, m, h, cq, 40, 0.3)
    out, _, _ = jax.jit(
        functools.partial(
            _aligned_attention, block_q=128, block_k=64, row_align=8, implementation="pallas_mosaic"
        )
    )(q, k, v, qs, ks, cmap)
    ref = cluster_sparse_attention_reference(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.bfloat16)


def test_bad_block_q():
    qs, _, cmap = random_problem(0, 1, 40, 40, 1, 3, 3, 0.5)
    with pytest.raises(ValueError, match="block_q must be >= 1"):
        align_query_clusters(qs, cmap, num_q=40, block_q=0)
