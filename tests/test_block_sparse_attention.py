"""block_sparse_attention (Pallas Triton and Mosaic GPU kernels) against its dense-masked XLA oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_utils import REL_TOL, assert_close, random_qkv, rel_error, require_hopper

from svg_jax.pallas_kernels import (
    block_mask_to_indices,
    block_sparse_attention,
    block_sparse_attention_reference,
)


def random_lists(seed: int, b: int, h: int, nqb: int, nkb: int, density: float):
    mask = jax.random.bernoulli(jax.random.PRNGKey(seed), density, (b, h, nqb, nkb))
    return block_mask_to_indices(mask)


def run_both(q, k, v, idx, cnt, *, block_q, block_k, interpret):
    blocks = dict(block_q=block_q, block_k=block_k)
    kernel = functools.partial(
        block_sparse_attention, implementation="pallas_triton", interpret=interpret, **blocks
    )
    out = jax.jit(kernel)(q, k, v, idx, cnt)
    ref = jax.jit(functools.partial(block_sparse_attention_reference, **blocks))(q, k, v, idx, cnt)
    return out, ref


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_grid_matches_reference(interpret, dtype, head_dim):
    b, n, m, h = 2, 192, 160, 2
    bq, bk = 64, 32
    q, k, v = random_qkv(1, b, n, m, h, head_dim, dtype)
    idx, cnt = random_lists(2, b, h, -(-n // bq), -(-m // bk), 0.5)
    out, ref = run_both(q, k, v, idx, cnt, block_q=bq, block_k=bk, interpret=interpret)
    assert_close(out, ref, dtype)


@given(
    n=st.integers(1, 260),
    m=st.integers(1, 260),
    block_q=st.sampled_from([16, 32, 64]),
    block_k=st.sampled_from([16, 32, 64]),
    density=st.sampled_from([0.0, 0.13, 0.3, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_ragged_shapes_and_densities(n, m, block_q, block_k, density, seed):
    """Random N ≠ M (not multiples of the blocks), densities 0–1, B > 1, H > 1; interpret mode."""
    b, h, d = 2, 2, 64
    q, k, v = random_qkv(seed, b, n, m, h, d)
    idx, cnt = random_lists(seed + 1, b, h, -(-n // block_q), -(-m // block_k), density)
    out, ref = run_both(q, k, v, idx, cnt, block_q=block_q, block_k=block_k, interpret=True)
    assert_close(out, ref, jnp.float32)


def test_count_zero_rows_are_zero_not_nan(interpret):
    b, n, m, h, d = 1, 128, 128, 2, 64
    q, k, v = random_qkv(3, b, n, m, h, d)
    mask = jnp.ones((b, h, 2, 4), bool).at[0, 1, 0].set(False).at[0, 0, 1].set(False)
    idx, cnt = block_mask_to_indices(mask)
    out, ref = run_both(q, k, v, idx, cnt, block_q=64, block_k=32, interpret=interpret)
    assert np.all(np.asarray(out[0, :64, 1]) == 0.0)
    assert np.all(np.asarray(out[0, 64:, 0]) == 0.0)
    assert_close(out, ref, jnp.float32)


def test_full_lists_equal_dense_attention(interpret):
    b, n, h, d = 1, 256, 2, 64
    q, k, v = random_qkv(4, b, n, n, h, d)
    idx, cnt = block_mask_to_indices(jnp.ones((b, h, 4, 4), bool))
    out = block_sparse_attention(
        q, k, v, idx, cnt, block_q=64, block_k=64, implementation="pallas_triton", interpret=interpret
    )
    with jax.default_matmul_precision("highest"):  # GPU float32 dots default to TF32
        dense = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    assert rel_error(out, dense) <= REL_TOL[jnp.float32] * 10  # XLA's own dense path is the comparand here


def test_padding_entries_past_count_are_ignored(interpret):
    b, n, h, d = 1, 128, 1, 64
    q, k, v = random_qkv(5, b, n, n, h, d)
    idx = jnp.array([[[[1, 3, 0, 2], [0, 2, 3, 1]]]], jnp.int32)
    cnt = jnp.array([[[1, 2]]], jnp.int32)
    out, ref = run_both(q, k, v, idx, cnt, block_q=64, block_k=32, interpret=interpret)
    garbage = idx.at[..., 2:].set(3)
    out2, _ = run_both(q, k, v, garbage, cnt, block_q=64, block_k=32, interpret=interpret)
    assert_close(out, ref, jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))


def test_jit_and_deterministic(interpret):
    b, n, h, d = 1, 192, 2, 64
    q, k, v = random_qkv(6, b, n, n, h, d)
    idx, cnt = random_lists(7, b, h, 3, 6, 0.4)
    f = jax.jit(
        lambda *a: block_sparse_attention(
            *a, block_q=64, block_k=32, implementation="pallas_triton", interpret=interpret
        )
    )
    o1, o2 = f(q, k, v, idx, cnt), f(q, k, v, idx, cnt)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(o2))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bf16", "f16", "f32"])
@pytest.mark.parametrize("density", [0.13, 0.5, 1.0])
def test_gpu_large_random(dtype, density):
    """Compiled kernel at a video-like size (N = 4100, not a block multiple) against the oracle."""
    b, n, h, d = 1, 4100, 4, 128
    q, k, v = random_qkv(8, b, n, n, h, d, dtype)
    idx, cnt = random_lists(9, b, h, -(-n // 128), -(-n // 64), density)
    out, ref = run_both(q, k, v, idx, cnt, block_q=128, block_k=64, interpret=False)
    assert_close(out, ref, dtype)


def test_head_dim_beyond_triton_limit_raises_not_falls_back():
    q, k, v = random_qkv(10, 1, 64, 64, 1, 300)
    idx, cnt = block_mask_to_indices(jnp.ones((1, 1, 1, 1), bool))
    with pytest.raises(NotImplementedError, match="head dim 300"):
        block_sparse_attention(q, k, v, idx, cnt, block_q=64, block_k=64, implementation="pallas_triton")


# Mosaic GPU (Hopper) kernel: compiled on the GPU only (Mosaic's CPU simulator cannot run wgmma in
# registers); the argument checks run everywhere.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    "b, h, n, m, d, block_k, density",
    [
        (1, 2, 256, 200, 64, 64, 0.6),  # ragged keys, D 64
        (2, 3, 1000, 777, 128, 64, 0.4),  # ragged queries and keys, B and H > 1
        (1, 2, 512, 512, 128, 128, 0.5),  # 128-key tiles
        (1, 1, 384, 1000, 128, 128, 0.15),  # M > N, ragged 128 tiles
        (1, 2, 4100, 4100, 128, 128, 1.0),  # dense lists at a video-like size
    ],
)
def test_gpu_mosaic_matches_reference(dtype, b, h, n, m, d, block_k, density):
    require_hopper()
    q, k, v = random_qkv(11, b, n, m, h, d, dtype)
    idx, cnt = random_lists(12, b, h, -(-n // 128), -(-m // block_k), density)
    cnt = cnt.at[:, :, 0].set(0)  # a query block with an empty list gives zeros
    blocks = dict(block_q=128, block_k=block_k)
    out = jax.jit(functools.partial(block_sparse_attention, implementation="pallas_mosaic", **blocks))(
        q, k, v, idx, cnt
    )
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, **blocks)
    assert_close(out, ref, dtype)
    assert float(jnp.abs(out[:, :128].astype(jnp.float32)).max()) == 0.0
    auto = jax.jit(functools.partial(block_sparse_attention, implementation="auto", **blocks))(
        q, k, v, idx, cnt
    )
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(out))  # 'auto' picks Mosaic on Hopper


@pytest.mark.gpu
@pytest.mark.parametrize("order", ["head_lpt", "head", "lpt", "interleave"])
@pytest.mark.parametrize(
    "programs, block_k, stages, per_step, overlap",
    [
        (3, 64, 2, 1, False),
        (5, 128, 2, 1, False),
        (2, 64, 3, 1, False),
        (3, 64, 4, 2, False),
        (2, 64, 5, 2, False),
        (5, 128, 2, 1, True),
        (2, 64, 3, 1, True),
        (3, 64, 4, 1, True),
    ],
)
def test_gpu_mosaic_persistent_ring_across_items(order, programs, block_k, stages, per_step, overlap):
    """Few persistent CTAs, each dealt many items of uneven (and zero) length: the K/V ring, the barrier
    phases and the Q/O buffer carry across items, in every work order; with two tiles per step, lists of
    odd length end on a padding tile; with the intra-warpgroup overlap, one P V trails each item."""
    require_hopper()
    from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic

    b, h, n, m, d = 2, 3, 900, 1100, 128
    q, k, v = random_qkv(14, b, n, m, h, d, jnp.bfloat16)
    idx, cnt = random_lists(15, b, h, -(-n // 128), -(-m // block_k), 0.5)
    cnt = cnt.at[0, 1].set(0).at[1, :, 3].set(1)  # whole heads of empty lists, and single tiles
    opts = dict(
        block_k=block_k,
        num_stages=stages,
        tiles_per_step=per_step,
        num_programs=programs,
        order=order,
        overlap=overlap,
    )
    fn = functools.partial(block_sparse_attention_mosaic, sm_scale=d**-0.5, **opts)
    out = jax.jit(fn)(q, k, v, idx, cnt)
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, block_q=128, block_k=block_k)
    assert_close(out, ref, jnp.bfloat16)
    assert float(jnp.abs(out[0, :, 1].astype(jnp.float32)).max()) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("block_k, per_step, overlap", [(64, 1, True), (128, 1, False), (64, 2, False)])
def test_gpu_mosaic_fold_scale_matches_reference(block_k, per_step, overlap):
    """The softmax scale applied inside the exponent (``fold_scale``), with ragged keys (the last tile is
    masked) and empty lists: the oracle's result to bf16 tolerance."""
    require_hopper()
    from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic

    b, h, n, m, d = 1, 2, 700, 1000, 128
    q, k, v = random_qkv(16, b, n, m, h, d, jnp.bfloat16)
    idx, cnt = random_lists(17, b, h, -(-n // 128), -(-m // block_k), 0.5)
    cnt = cnt.at[0, 1, 2].set(0)
    opts = dict(block_k=block_k, tiles_per_step=per_step, overlap=overlap, fold_scale=True)
    fn = functools.partial(block_sparse_attention_mosaic, sm_scale=d**-0.5, **opts)
    out = jax.jit(fn)(q, k, v, idx, cnt)
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, block_q=128, block_k=block_k)
    assert_close(out, ref, jnp.bfloat16)


@pytest.mark.parametrize(
    "dtype, d, block_q, block_k, match",
    [
        (jnp.float32, 128, 128, 64, "takes bf16 or f16"),
        (jnp.bfloat16, 96, 128, 64, "multiple of 64"),
        (jnp.bfloat16, 128, 64, 64, "needs block_q=128"),
        (jnp.bfloat16, 128, 128, 32, "block_k 64 or 128"),
    ],
)
def test_mosaic_refuses_unsupported_inputs(dtype, d, block_q, block_k, match):
    q, k, v = random_qkv(13, 1, 256, 256, 1, d, dtype)
    idx, cnt = block_mask_to_indices(jnp.ones((1, 1, 256 // block_q, 256 // block_k), bool))
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(
            q, k, v, idx, cnt, block_q=block_q, block_k=block_k, implementation="pallas_mosaic"
        )


@pytest.mark.parametrize(
    "block_k, stages, per_step, match",
    [
        (64, 2, 3, "tiles_per_step must be one of"),
        (128, 2, 2, "KiB of shared memory"),  # 4 slots of 128 rows: 288 KiB
        (64, 8, 1, "KiB of shared memory"),
    ],
)
def test_mosaic_engine_refuses_bad_step_or_ring(block_k, stages, per_step, match):
    """The engine's own arguments are checked before anything is traced (runs on the CPU)."""
    from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic

    q, k, v = random_qkv(16, 1, 256, 256, 1, 128, jnp.bfloat16)
    idx, cnt = block_mask_to_indices(jnp.ones((1, 1, 2, 256 // block_k), bool))
    with pytest.raises(ValueError, match=match):
        block_sparse_attention_mosaic(
            q, k, v, idx, cnt, block_k=block_k, sm_scale=0.1, num_stages=stages, tiles_per_step=per_step
        )


def random_key_padding(seed: int, b: int, m: int):
    """Per batch element a key range [start, end): random, empty, or every key (rows then output zeros)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(b):
        kind = (seed + i) % 4
        if kind == 0:
            rows.append((m, m))  # nothing padded
        elif kind == 1:
            rows.append((0, m))  # every key padded: all rows zero
        else:
            lo = int(rng.integers(0, m + 1))
            rows.append((lo, int(rng.integers(lo, m + 1))))
    return jnp.array(rows, jnp.int32)


@given(
    n=st.integers(1, 200),
    m=st.integers(1, 200),
    block_k=st.sampled_from([16, 32, 64]),
    density=st.sampled_from([0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_key_padding(n, m, block_k, density, seed):
    """``key_padding`` masks its key range element by element inside the listed blocks (Triton, interpret
    mode; ragged N, M; ranges empty, partial, crossing blocks, or covering every key)."""
    b, h, d, bq = 3, 2, 64, 32
    q, k, v = random_qkv(seed, b, n, m, h, d)
    idx, cnt = random_lists(seed + 1, b, h, -(-n // bq), -(-m // block_k), density)
    pad = random_key_padding(seed, b, m)
    blocks = dict(block_q=bq, block_k=block_k, key_padding=pad)
    triton = dict(implementation="pallas_triton", interpret=True)
    out = jax.jit(functools.partial(block_sparse_attention, **triton, **blocks))(q, k, v, idx, cnt)
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, **blocks)
    assert_close(out, ref, jnp.float32)
    xla = block_sparse_attention(q, k, v, idx, cnt, implementation="xla", **blocks)
    np.testing.assert_array_equal(np.asarray(xla), np.asarray(ref))


def test_key_padding_equals_dense_attention_over_the_real_keys():
    """Every block listed and the padding range masked: dense attention over the other keys."""
    b, n, m, h, d = 2, 70, 90, 2, 64
    q, k, v = random_qkv(41, b, n, m, h, d)
    idx, cnt = block_mask_to_indices(jnp.ones((b, h, -(-n // 32), -(-m // 16)), bool))
    pad = jnp.array([[60, 80], [90, 90]], jnp.int32)
    triton = dict(implementation="pallas_triton", interpret=True)
    out = block_sparse_attention(q, k, v, idx, cnt, block_q=32, block_k=16, key_padding=pad, **triton)
    for i, (lo, hi) in enumerate(pad.tolist()):
        keep = np.r_[0:lo, hi:m]
        want = jax.nn.dot_product_attention(q[i : i + 1], k[i : i + 1, keep], v[i : i + 1, keep])
        assert rel_error(out[i : i + 1], want) < REL_TOL[jnp.float32]


@pytest.mark.parametrize(
    "pad, match",
    [
        (jnp.zeros((2,), jnp.int32), "key_padding must have shape"),
        (jnp.zeros((2, 2), jnp.float32), "must be an integer array"),
        (jnp.array([[5, 3], [0, 0]], jnp.int32), "start <= end"),
        (jnp.array([[0, 300], [0, 0]], jnp.int32), "within M=256"),
    ],
)
def test_bad_key_padding_is_refused(pad, match):
    q, k, v = random_qkv(42, 2, 256, 256, 1, 64)
    idx, cnt = block_mask_to_indices(jnp.ones((2, 1, 2, 2), bool))
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, idx, cnt, block_q=128, block_k=128, key_padding=pad)


@pytest.mark.gpu
@pytest.mark.parametrize("block_k, m", [(128, 1000), (64, 1024), (128, 1024)])
@pytest.mark.parametrize("overlap", [False, True], ids=["ping-pong", "overlap"])
def test_gpu_mosaic_key_padding(block_k, m, overlap):
    """The Mosaic kernel masks the padding range on the tiles that cross it (and the columns past M), also
    with the intra-warpgroup overlap (rows masked everywhere so far carry m = -inf through it)."""
    require_hopper()
    from svg_jax.pallas_kernels.block_sparse_attn_mosaic import block_sparse_attention_mosaic

    b, h, n, d = 4, 2, 700, 128
    q, k, v = random_qkv(43, b, n, m, h, d, jnp.bfloat16)
    idx, cnt = random_lists(44, b, h, -(-n // 128), -(-m // block_k), 0.6)
    pad = jnp.array([[m, m], [0, m], [200, 333], [m - 100, m]], jnp.int32)
    blocks = dict(block_q=128, block_k=block_k, key_padding=pad)
    fn = functools.partial(block_sparse_attention_mosaic, sm_scale=d**-0.5, overlap=overlap, **blocks)
    out = jax.jit(fn)(q, k, v, idx, cnt)
    ref = block_sparse_attention_reference(q, k, v, idx, cnt, **blocks)
    assert_close(out, ref, jnp.bfloat16)
    assert float(jnp.abs(out[1].astype(jnp.float32)).max()) == 0.0
