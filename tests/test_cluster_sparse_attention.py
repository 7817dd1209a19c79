"""cluster_sparse_attention (Pallas Triton kernel) and its tile plan against the dense-masked oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_utils import (
    REL_TOL,
    assert_close,
    random_problem,
    random_qkv,
    rel_error,
    require_hopper,
    tile_plan,
)

from svg_jax.pallas_kernels import (
    cluster_map_to_mask,
    cluster_plan_for,
    cluster_sparse_attention,
    cluster_sparse_attention_from_plan,
    cluster_sparse_attention_reference,
    cluster_tile_plan,
    padded_rows,
)
from svg_jax.pallas_kernels.cluster_plan import MAX_SPAN, decode_chunk, decode_span


def run_both(q, k, v, qs, ks, cmap, *, interpret, block_q=64, block_k=32):
    kernel = functools.partial(
        cluster_sparse_attention,
        implementation="pallas_triton",
        interpret=interpret,
        block_q=block_q,
        block_k=block_k,
    )
    out = jax.jit(kernel)(q, k, v, qs, ks, cmap)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    return out, ref


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_grid_matches_reference(interpret, dtype, head_dim):
    b, n, m, h = 2, 200, 170, 2
    q, k, v = random_qkv(1, b, n, m, h, head_dim, dtype)
    qs, ks, cmap = random_problem(2, b, n, m, h, 6, 9, 0.4)
    out, ref = run_both(q, k, v, qs, ks, cmap, interpret=interpret)
    assert_close(out, ref, dtype)


@given(
    n=st.integers(1, 230),
    m=st.integers(1, 230),
    cq=st.integers(1, 12),
    ck=st.integers(1, 20),
    density=st.sampled_from([0.0, 0.13, 0.3, 0.7, 1.0]),
    blocks=st.sampled_from([(16, 16), (32, 16), (64, 32)]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_clusters(n, m, cq, ck, density, blocks, seed):
    """Random cluster counts and sizes (zero-size ones included), ragged N ≠ M, B > 1, H > 1."""
    b, h, d = 2, 2, 64
    q, k, v = random_qkv(seed, b, n, m, h, d)
    qs, ks, cmap = random_problem(seed + 1, b, n, m, h, cq, ck, density)
    out, ref = run_both(q, k, v, qs, ks, cmap, interpret=True, block_q=blocks[0], block_k=blocks[1])
    assert_close(out, ref, jnp.float32)


def test_one_giant_cluster_all_true_equals_dense(interpret):
    b, n, h, d = 1, 256, 2, 64
    q, k, v = random_qkv(3, b, n, n, h, d)
    sizes = jnp.full((b, h, 1), n, jnp.int32)
    out = cluster_sparse_attention(
        q,
        k,
        v,
        sizes,
        sizes,
        jnp.ones((b, h, 1, 1), bool),
        implementation="pallas_triton",
        interpret=interpret,
    )
    with jax.default_matmul_precision("highest"):  # GPU float32 dots default to TF32
        dense = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    assert rel_error(out, dense) <= REL_TOL[jnp.float32] * 10


def test_all_true_map_with_many_clusters_equals_dense(interpret):
    b, n, m, h, d = 1, 200, 150, 2, 64
    q, k, v = random_qkv(4, b, n, m, h, d)
    qs, ks, _ = random_problem(5, b, n, m, h, 9, 13, 1.0)
    out = cluster_sparse_attention(
        q,
        k,
        v,
        qs,
        ks,
        jnp.ones((b, h, 9, 13), bool),
        implementation="pallas_triton",
        interpret=interpret,
        block_q=64,
        block_k=32,
    )
    with jax.default_matmul_precision("highest"):  # GPU float32 dots default to TF32
        dense = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    assert rel_error(out, dense) <= REL_TOL[jnp.float32] * 10


def test_rows_of_unselecting_clusters_are_zero(interpret):
    b, n, h, d = 1, 128, 1, 64
    q, k, v = random_qkv(6, b, n, n, h, d)
    qs = jnp.array([[[0, 50, 0, 78]]], jnp.int32)  # zero-size clusters around real ones
    ks = jnp.array([[[64, 0, 64]]], jnp.int32)
    cmap = jnp.array([[[[True, True, True], [False, False, False], [True, True, True], [False, True, True]]]])
    out, ref = run_both(q, k, v, qs, ks, cmap, interpret=interpret)
    assert np.all(np.asarray(out[0, :50, 0]) == 0.0)
    assert_close(out, ref, jnp.float32)


@given(
    n=st.integers(1, 300),
    m=st.integers(1, 300),
    cq=st.integers(1, 15),
    ck=st.integers(1, 30),
    density=st.floats(0.0, 1.0),
    row_align=st.sampled_from([1, 8, 16]),
    seed=st.integers(0, 2**16),
)
def test_plan_is_exact(n, m, cq, ck, density, row_align, seed):
    """Each query tile's chunks cover exactly the keys some of its rows may see, each key once, in as few
    chunks as the runs allow; a chunk is uniform exactly when all its run rows are allowed for every real
    row of the tile; chunks start at multiples of row_align."""
    b, h, bq, bk = 1, 2, 32, 16
    qs, ks, cmap = random_problem(seed, b, n, m, h, cq, ck, density)
    plan = tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=bq, block_k=bk, row_align=row_align)
    mask = np.asarray(
        jax.jit(cluster_map_to_mask, static_argnames=("num_q", "num_k"))(qs, ks, cmap, num_q=n, num_k=m)
    )  # [B, H, N, M]
    starts, codes = np.asarray(plan.chunk_starts), np.asarray(plan.chunk_codes)
    counts = np.asarray(plan.chunk_counts)
    for hi in range(h):
        for t in range(-(-n // bq)):
            rows = mask[0, hi, t * bq : (t + 1) * bq]  # real rows of the tile
            covered = np.zeros(m, int)
            for j in range(counts[0, hi, t]):
                start = starts[0, hi, t, j]
                lead, valid, uniform = (int(x) for x in decode_chunk(codes[0, hi, t, j]))
                assert 0 <= lead < valid <= bk and start + valid <= m and start % row_align == 0
                assert lead == 0 or row_align > 1
                labels = np.asarray(plan.k_labels)[0, hi, start : start + valid]
                assert plan.chunk_kfirst[0, hi, t, j] == labels[0]
                assert decode_span(codes[0, hi, t, j]) == min(labels[-1] - labels[0], MAX_SPAN)
                covered[start + lead : start + valid] += 1
                # uniform exactly when every real row of the tile may see all of the chunk's run rows
                assert bool(uniform) == rows[:, start + lead : start + valid].all()
            assert covered.max(initial=0) <= 1, "a key row is visited twice"
            np.testing.assert_array_equal(covered.astype(bool), rows.any(axis=0))
            # No chunk too many: each maximal run of needed key rows costs ceil(rows from its aligned start).
            edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.any(axis=0), [0]]).astype(int)))
            first, end = edges[::2], edges[1::2]
            need = sum(-(-(e - (f - f % row_align)) // bk) for f, e in zip(first, end, strict=True))
            assert counts[0, hi, t] == need


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bf16", "f16", "f32"])
@pytest.mark.parametrize("density", [0.13, 0.3, 1.0])
def test_gpu_large_random(dtype, density):
    """Compiled kernel at a video-like size with many small clusters against the oracle."""
    b, n, h, d = 1, 4100, 4, 128
    q, k, v = random_qkv(8, b, n, n, h, d, dtype)
    qs, ks, cmap = random_problem(9, b, n, n, h, 30, 100, density)
    out, ref = run_both(q, k, v, qs, ks, cmap, interpret=False, block_q=128, block_k=64)
    assert_close(out, ref, dtype)


@given(
    n=st.integers(1, 200),
    m=st.integers(1, 200),
    cq=st.integers(1, 10),
    ck=st.integers(1, 20),
    density=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_aligned_plan(n, m, cq, ck, density, seed):
    """Plans whose runs start at multiples of 8 (the Mosaic kernel's) stay exact: the lead rows are masked."""
    b, h, d = 1, 2, 64
    q, k, v = random_qkv(seed, b, n, m, h, d)
    qs, ks, cmap = random_problem(seed + 1, b, n, m, h, cq, ck, density)
    plan = tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=32, block_k=16, row_align=8)
    kernel = functools.partial(
        cluster_sparse_attention_from_plan, implementation="pallas_triton", interpret=True
    )
    out = jax.jit(kernel)(q, k, v, plan)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.float32)


def _pad_with_copies(x, rows):
    """``x`` with ``rows - N`` extra rows copied from row 0 (finite padding, as SVG2's gather lays out)."""
    return jnp.concatenate([x, jnp.broadcast_to(x[:, :1], (x.shape[0], rows - x.shape[1], *x.shape[2:]))], 1)


@pytest.mark.parametrize("implementation", ["pallas_triton", "pallas_mosaic"])
def test_padded_operands_are_read_in_place(implementation):
    """Operands already at ``padded_rows`` length (any finite padding) give the unpadded result; other
    lengths are refused by name. The Mosaic variant only builds its plan here (it runs on the GPU)."""
    b, h, n, m, d = 1, 2, 70, 45, 64
    dtype = jnp.float32 if implementation == "pallas_triton" else jnp.bfloat16
    q, k, v = random_qkv(31, b, n, m, h, d, dtype)
    qs, ks, cmap = random_problem(32, b, n, m, h, 5, 6, 0.5)
    impl, plan = cluster_plan_for(q, k, qs, ks, cmap, implementation=implementation)
    assert impl == implementation
    rows_q, rows_k = padded_rows(plan, impl)
    assert rows_q == plan.q_labels.shape[2] and rows_q % plan.block_q == 0 and rows_q >= n
    assert rows_k >= m + plan.block_k and (impl == "pallas_triton" or rows_k % 8 == 0)
    with pytest.raises(ValueError, match="plan does not fit q/k"):
        cluster_sparse_attention_from_plan(q, k[:, :-1], v[:, :-1], plan, implementation=impl)
    if impl == "pallas_mosaic":
        return
    qp, kp, vp = _pad_with_copies(q, rows_q), _pad_with_copies(k, rows_k), _pad_with_copies(v, rows_k)
    run = functools.partial(cluster_sparse_attention_from_plan, implementation=impl, interpret=True)
    out = run(qp, kp, vp, plan)
    assert out.shape == (b, rows_q, h, d)
    np.testing.assert_allclose(out[:, :n], run(q, k, v, plan), rtol=1e-6, atol=1e-6)
    ref = cluster_sparse_attention_reference(q, k, v, qs, ks, cmap)
    assert_close(out[:, :n], ref, jnp.float32)


# Mosaic GPU (Hopper) kernel: compiled on the GPU only (Mosaic's CPU simulator cannot run wgmma in
# registers); the argument checks run everywhere.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    "b, h, n, m, d, cq, ck, block_k, density",
    [
        (1, 2, 300, 260, 64, 5, 7, 64, 0.5),  # ragged, D 64, few big clusters
        (2, 3, 1000, 777, 128, 12, 40, 64, 0.3),  # B and H > 1, many small clusters (mixed chunks)
        (1, 2, 700, 900, 128, 9, 25, 128, 0.4),  # 128-row key chunks, M > N
        (1, 4, 4100, 4100, 128, 30, 100, 64, 0.13),  # video-like: 300x1000-style small clusters
        (1, 2, 2000, 2000, 128, 20, 60, 64, 1.0),  # everything selected: equals dense attention
        (1, 2, 600, 600, 64, 60, 200, 64, 0.3),  # tiny clusters: tiles past the packed-bit fast path
        (1, 2, 700, 650, 128, 150, 500, 64, 0.4),  # chunks spanning > 32 key clusters: several bit windows
    ],
)
def test_gpu_mosaic_matches_reference(dtype, b, h, n, m, d, cq, ck, block_k, density):
    require_hopper()
    q, k, v = random_qkv(21, b, n, m, h, d, dtype)
    qs, ks, cmap = random_problem(22, b, n, m, h, cq, ck, density)
    cmap = cmap.at[:, :, 0].set(False)  # query cluster 0 selects nothing: its rows are zeros
    opts = dict(implementation="pallas_mosaic", block_q=128, block_k=block_k)
    out = jax.jit(functools.partial(cluster_sparse_attention, **opts))(q, k, v, qs, ks, cmap)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, dtype)
    first = int(qs[0, 0, 0])
    assert float(jnp.abs(out[0, :first, 0].astype(jnp.float32)).max(initial=0.0)) == 0.0
    if block_k == 64:  # 'auto' picks Mosaic on Hopper with its default tiles
        auto = jax.jit(cluster_sparse_attention)(q, k, v, qs, ks, cmap)
        np.testing.assert_array_equal(np.asarray(auto), np.asarray(out))


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["head_lpt", "interleave"])
@pytest.mark.parametrize(
    "programs, block_k, per_step, overlap",
    [(3, 64, 1, False), (4, 128, 1, False), (3, 64, 2, False), (3, 64, 1, True), (4, 128, 1, True)],
)
def test_gpu_mosaic_persistent_ring_across_items(order, programs, block_k, per_step, overlap):
    """Few persistent CTAs dealt many items each (some with no chunks): same result as the oracle, also
    walking two chunks per step (odd lists end on a padding chunk) and with the intra-warpgroup overlap."""
    require_hopper()
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic

    b, h, n, m, d, cq, ck = 2, 2, 1500, 1300, 128, 14, 40
    q, k, v = random_qkv(24, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(25, b, n, m, h, cq, ck, 0.3)
    cmap = cmap.at[:, :, :3].set(False)  # the first query clusters select nothing: empty tiles
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=block_k, row_align=8)
    opts = dict(sm_scale=d**-0.5, num_programs=programs, order=order, tiles_per_step=per_step)
    fn = functools.partial(cluster_sparse_attention_mosaic, overlap=overlap, **opts)
    out = jax.jit(fn)(q, k, v, plan)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("per_step, overlap", [(1, True), (1, False), (2, False)])
def test_gpu_mosaic_fold_scale_matches_reference(per_step, overlap):
    """The softmax scale applied inside the exponent (``fold_scale``): the oracle's result to bf16
    tolerance, with masked, mixed and empty tiles."""
    require_hopper()
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic

    b, h, n, m, d, cq, ck = 1, 2, 1400, 1200, 128, 40, 120
    q, k, v = random_qkv(28, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(29, b, n, m, h, cq, ck, 0.3)
    cmap = cmap.at[:, :, :2].set(False)  # rows that see no key: zeros
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    opts = dict(sm_scale=d**-0.5, tiles_per_step=per_step, overlap=overlap, fold_scale=True)
    out = jax.jit(functools.partial(cluster_sparse_attention_mosaic, **opts))(q, k, v, plan)
    ref = jax.jit(cluster_sparse_attention_reference)(q, k, v, qs, ks, cmap)
    assert_close(out, ref, jnp.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "opts",
    [
        dict(order="head_snake", mask_weight=2.4),
        dict(per_warpgroup_mask=False),
        dict(per_warpgroup_mask=False, tiles_per_step=2),
    ],
    ids=[
        "snake-weighted",
        "tile-wide-mask",
        "tile-wide-mask-two-per-step",
    ],
)
def test_gpu_mosaic_engine_options_keep_the_output_bitwise(opts):
    """Tile-wide masks and other work orders change when and where work is done, not what is computed: the
    same bits as the default kernel. (The default per-warpgroup column mask adds 0 or -inf where the
    tile-wide mask selects: the same bits.)"""
    require_hopper()
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic

    b, h, n, m, d, cq, ck = 1, 3, 1400, 1200, 128, 40, 120
    q, k, v = random_qkv(26, b, n, m, h, d, jnp.bfloat16)
    qs, ks, cmap = random_problem(27, b, n, m, h, cq, ck, 0.3)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)

    def run(**o):
        fn = functools.partial(cluster_sparse_attention_mosaic, sm_scale=d**-0.5, **o)
        return np.asarray(jax.jit(fn)(q, k, v, plan))

    per_step = opts.get("tiles_per_step", 1)
    np.testing.assert_array_equal(run(**opts), run(tiles_per_step=per_step))


@pytest.mark.parametrize(
    "dtype, d, block_q, block_k, match",
    [
        (jnp.float32, 128, None, None, "takes bf16 or f16"),
        (jnp.bfloat16, 96, None, None, "multiple of 64"),
        (jnp.bfloat16, 128, 64, None, "needs block_q=128"),
        (jnp.bfloat16, 128, None, 32, "block_k 64 or 128"),
    ],
)
def test_mosaic_refuses_unsupported_inputs(dtype, d, block_q, block_k, match):
    q, k, v = random_qkv(23, 1, 256, 256, 1, d, dtype)
    qs, ks, cmap = random_problem(24, 1, 256, 256, 1, 3, 4, 0.5)
    with pytest.raises(ValueError, match=match):
        cluster_sparse_attention(
            q, k, v, qs, ks, cmap, block_q=block_q, block_k=block_k, implementation="pallas_mosaic"
        )


def test_mosaic_refuses_overlap_with_two_tiles_per_step():
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import cluster_sparse_attention_mosaic

    q, k, v = random_qkv(25, 1, 256, 256, 1, 128, jnp.bfloat16)
    qs, ks, cmap = random_problem(26, 1, 256, 256, 1, 3, 4, 0.5)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=256, num_k=256, block_q=128, block_k=64, row_align=8)
    with pytest.raises(ValueError, match="overlap=True takes tiles_per_step=1"):
        cluster_sparse_attention_mosaic(q, k, v, plan, sm_scale=0.1, overlap=True, tiles_per_step=2)


def test_mosaic_refuses_unaligned_plan():
    q, k, v = random_qkv(25, 1, 256, 256, 1, 128, jnp.bfloat16)
    qs, ks, cmap = random_problem(26, 1, 256, 256, 1, 3, 4, 0.5)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=256, num_k=256, block_q=128, block_k=64)
    with pytest.raises(ValueError, match="row_align=8"):
        cluster_sparse_attention_from_plan(q, k, v, plan, implementation="pallas_mosaic")


def test_tile_words_pack_the_fast_path_map():
    """Bit ``4·i + s`` of word ``(t, j)`` is ``map[lo_t + s, j + i]`` (0 past the clusters or the tile)."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import FAST_K, FAST_Q, tile_words

    n, m, cq, ck = 300, 200, 9, 13
    qs, ks, cmap = random_problem(27, 1, n, m, 2, cq, ck, 0.5, zero_frac=0.3)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    words = np.asarray(tile_words(plan))
    full = np.asarray(plan.cluster_map)  # [B, H, Cq+1, Ck+1], sentinels cleared
    lo = np.asarray(plan.q_labels)[:, :, ::128]
    assert words.shape == (*lo.shape, ck + 1)
    for hi in range(2):
        for t in range(lo.shape[2]):
            for j in range(ck + 1):
                for s in range(FAST_Q):
                    for i in range(FAST_K):
                        u, kc = lo[0, hi, t] + s, j + i
                        want = full[0, hi, u, kc] if u <= cq and kc <= ck else 0
                        assert (words[0, hi, t, j] >> (FAST_Q * i + s)) & 1 == want


@pytest.mark.parametrize("seed, density", [(30, 0.3), (31, 0.7), (32, 0.0), (33, 1.0)])
def test_masked_first_moves_the_masked_chunks_to_the_front(seed, density):
    """Each list becomes its chunks that take a mask, in order, then the others in order; the slots past
    the list are untouched, the counts are those of :func:`needs_mask`, and the rest of the plan is kept."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import masked_first, needs_mask

    n, m = 700, 650
    qs, ks, cmap = random_problem(seed, 2, n, m, 2, 12, 30, density)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    moved, n_masked = jax.jit(masked_first)(plan)
    masked, counts = np.asarray(needs_mask(plan)), np.asarray(plan.chunk_counts)
    np.testing.assert_array_equal(np.asarray(n_masked), masked.sum(-1))
    fields = ("chunk_starts", "chunk_codes", "chunk_kfirst")
    for idx in np.ndindex(*counts.shape):
        c = counts[idx]
        order = [*np.flatnonzero(masked[idx][:c]), *np.flatnonzero(~masked[idx][:c])]
        order += list(range(c, masked.shape[-1]))
        for f in fields:
            want = np.asarray(getattr(plan, f))[idx][order]
            np.testing.assert_array_equal(np.asarray(getattr(moved, f))[idx], want)
    past = np.arange(masked.shape[-1]) >= np.asarray(n_masked)[..., None]
    assert not np.asarray(needs_mask(moved))[past].any()
    for f in ("q_labels", "k_labels", "cluster_map", "chunk_counts"):
        np.testing.assert_array_equal(np.asarray(getattr(moved, f)), np.asarray(getattr(plan, f)))


def test_masked_first_plan_gives_the_same_attention():
    """A plan whose lists are reordered by :func:`masked_first` is still a plan of the same attention (the
    Triton kernel, interpreted, against the oracle)."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import masked_first

    n, m, h, d = 200, 180, 2, 64
    q, k, v = random_qkv(34, 1, n, m, h, d)
    qs, ks, cmap = random_problem(35, 1, n, m, h, 6, 14, 0.4)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=32, block_k=16, row_align=8)
    moved, _ = masked_first(plan)
    opts = dict(implementation="pallas_triton", interpret=True)
    out = jax.jit(functools.partial(cluster_sparse_attention_from_plan, **opts))(q, k, v, moved)
    assert_close(out, cluster_sparse_attention_reference(q, k, v, qs, ks, cmap), jnp.float32)


@pytest.mark.parametrize("ck", [1, 31, 32, 70])
def test_map_bitset_holds_every_map_entry(ck):
    """The slow path's bit sets: bit ``i`` of word ``w`` of row ``u`` is ``map[u, 32·w + i]``, and the
    extra last word (and every bit past the map) is zero."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import map_bitset

    cmap = jax.random.bernoulli(jax.random.key(ck), 0.4, (2, 3, 5, ck))
    bits = np.asarray(map_bitset(cmap)).view(np.uint32)
    assert bits.shape == (2, 3, 5, -(-ck // 32) + 1) and bits.dtype == np.uint32
    unpacked = (bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    unpacked = unpacked.reshape(*bits.shape[:-1], -1)
    np.testing.assert_array_equal(unpacked[..., :ck], np.asarray(cmap))
    assert not unpacked[..., ck:].any()


def emulated_mask_errors(plan, per_warpgroup: bool) -> tuple[int, int]:
    """Replay the Mosaic cluster mask's passes in NumPy (:func:`mask_passes` decides which run, the masks
    are written out per element here) for every listed chunk and warpgroup of ``plan``, against the truth:
    a real query row sees column c iff c lies in the chunk's run and the map selects (its cluster, the
    key's cluster). Returns (wrong elements, warpgroup-chunks that ran no mask pass)."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import (
        FAST_K,
        FAST_Q,
        chunk_words,
        mask_passes,
        tile_words,
        warpgroup_flags,
    )

    bq, bk = plan.block_q, plan.block_k
    words = np.asarray(tile_words(plan))
    per_chunk = np.asarray(chunk_words(plan))
    q_lab, k_lab, cmap = (np.asarray(x) for x in (plan.q_labels, plan.k_labels, plan.cluster_map != 0))
    starts, codes, kfirst = (np.asarray(x) for x in (plan.chunk_starts, plan.chunk_codes, plan.chunk_kfirst))
    counts = np.asarray(plan.chunk_counts)
    cq = cmap.shape[2] - 1
    wrong = unmasked = 0
    for b, h, t in np.ndindex(*counts.shape):
        c = counts[b, h, t]
        if c == 0:
            continue
        code, start, j_lo = codes[b, h, t, :c], starts[b, h, t, :c], kfirst[b, h, t, :c]
        bits = words[b, h, t, np.clip(j_lo, 0, words.shape[-1] - 1)]
        np.testing.assert_array_equal(per_chunk[b, h, t, :c], bits)  # the per-chunk table the kernel reads
        tile_lo = q_lab[b, h, t * bq]
        for row0 in (t * bq, t * bq + 64):
            row_lab = q_lab[b, h, row0 : row0 + 64]
            u_lo, u_hi = row_lab[0], row_lab[-1]
            flags = warpgroup_flags(jnp.int32(u_lo), jnp.int32(u_hi), jnp.int32(tile_lo))
            passes = mask_passes(
                jnp.asarray(code), jnp.asarray(bits), **flags, block_k=bk, per_warpgroup=per_warpgroup
            )
            col_trips, packed_trips, slow_trips, col_word, packed_word = (
                np.broadcast_to(np.asarray(x), code.shape) for x in passes
            )
            row_slot = np.minimum(row_lab - tile_lo, FAST_Q - 1)
            real = row_lab < cq
            for i in range(c):
                lead, valid, _ = (int(x) for x in decode_chunk(code[i]))
                col_lab = k_lab[b, h, start[i] : start[i] + bk]
                in_run = (np.arange(bk) >= lead) & (np.arange(bk) < valid)
                key_slot = np.clip(col_lab - j_lo[i], 0, FAST_K - 1) * FAST_Q
                allowed = np.ones((64, bk), bool)
                if col_trips[i]:
                    allowed &= (in_run & ((np.uint32(col_word[i]) >> key_slot) & 1 == 1))[None, :]
                if packed_trips[i]:
                    row_bits = np.uint32(packed_word[i]) >> row_slot.astype(np.uint32)
                    allowed &= in_run[None, :] & ((row_bits[:, None] >> key_slot[None, :]) & 1 == 1)
                if slow_trips[i]:  # the slow path is exact per element (tested on the GPU)
                    allowed &= cmap[b, h, row_lab[:, None], col_lab[None, :]]
                truth = in_run[None, :] & cmap[b, h, row_lab[:, None], col_lab[None, :]]
                wrong += int(np.sum((allowed != truth)[real]))
                unmasked += int(not (col_trips[i] or packed_trips[i] or slow_trips[i]))
    return wrong, unmasked


@pytest.mark.parametrize(
    "n, m, cq, ck, density",
    [(1500, 1300, 8, 30, 0.4), (2000, 1800, 40, 120, 0.3), (900, 1000, 60, 200, 0.5)],
    ids=["big-clusters", "mixed", "tiny-clusters"],
)
def test_mask_passes_give_the_exact_mask(n, m, cq, ck, density):
    """The passes the Mosaic mask runs (decided by ``mask_passes``, default and per warpgroup) mask every
    listed chunk exactly, and per warpgroup skips more chunks than the default where clusters are larger
    than a warpgroup."""
    qs, ks, cmap = random_problem(31, 1, n, m, 2, cq, ck, density)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    wrong, unmasked = emulated_mask_errors(plan, per_warpgroup=False)
    wrong_wg, unmasked_wg = emulated_mask_errors(plan, per_warpgroup=True)
    assert (wrong, wrong_wg) == (0, 0)
    assert unmasked_wg > unmasked if n // cq > 64 else unmasked_wg >= unmasked


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**16), cq=st.integers(1, 12), ck=st.integers(1, 70), zero=st.sampled_from([0.0, 0.3])
)
def test_chunk_words_are_the_tile_words_at_each_chunk(seed, cq, ck, zero):
    """The per-chunk words built from the map's bit rows equal :func:`tile_words` gathered at every slot's
    first key cluster (listed or not), across word boundaries, empty clusters and the sentinels."""
    from svg_jax.pallas_kernels.cluster_sparse_attn_mosaic import chunk_words, tile_words

    n, m = 300, 260
    qs, ks, cmap = random_problem(seed, 1, n, m, 2, cq, ck, 0.5, zero_frac=zero)
    plan = cluster_tile_plan(qs, ks, cmap, num_q=n, num_k=m, block_q=128, block_k=64, row_align=8)
    words = np.asarray(tile_words(plan))
    j = np.clip(np.asarray(plan.chunk_kfirst), 0, words.shape[-1] - 1)
    np.testing.assert_array_equal(np.asarray(chunk_words(plan)), np.take_along_axis(words, j, axis=3))
