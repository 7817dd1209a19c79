"""Bad input to the sparse-attention entry points raises ValueError naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_utils import random_qkv

from svg_jax.pallas_kernels import block_mask_to_indices, block_sparse_attention, cluster_sparse_attention

B, N, H, D = 1, 128, 2, 64


@pytest.fixture
def qkv():
    return random_qkv(0, B, N, N, H, D)


def lists(nqb=2, nkb=4):
    return block_mask_to_indices(jnp.ones((B, H, nqb, nkb), bool))


@pytest.mark.parametrize("impl", ["xla", "pallas_triton"])
def test_block_sparse_bad_inputs(qkv, impl):
    q, k, v = qkv
    idx, cnt = lists()
    call = lambda *a, **kw: block_sparse_attention(*a, block_q=64, block_k=32, implementation=impl, **kw)
    with pytest.raises(ValueError, match=r"q must have rank 4"):
        call(q[0], k, v, idx, cnt)
    with pytest.raises(ValueError, match=r"batch, heads and head dim"):
        call(q, k[:, :, :1], v[:, :, :1], idx, cnt)
    with pytest.raises(ValueError, match=r"k and v must have the same shape"):
        call(q, k, v[:, :64], idx, cnt)
    with pytest.raises(ValueError, match=r"kv_block_indices must be an integer array"):
        call(q, k, v, idx.astype(jnp.float32), cnt)
    with pytest.raises(ValueError, match=r"kv_block_counts must have shape \(1, 2, 2\)"):
        call(q, k, v, idx, cnt[:, :, :1])
    with pytest.raises(ValueError, match=r"kv_block_indices must lie in \[0, 4\).*found 4"):
        call(q, k, v, idx.at[0, 1, 1, 0].set(4), cnt)
    with pytest.raises(ValueError, match=r"kv_block_counts must lie in \[0, 5\)"):
        call(q, k, v, idx, cnt.at[0, 0, 0].set(5))
    with pytest.raises(ValueError, match=r"block_q must be a power of two"):
        block_sparse_attention(q, k, v, idx, cnt, block_q=48, block_k=32, implementation=impl)
    with pytest.raises(ValueError, match=r"implementation must be one of"):
        block_sparse_attention(q, k, v, idx, cnt, block_q=64, block_k=32, implementation="cuda")
    with pytest.raises(ValueError, match=r"q, k and v must share one dtype"):
        call(q.astype(jnp.bfloat16), k, v, idx, cnt)


@pytest.mark.parametrize("impl", ["xla", "pallas_triton"])
def test_cluster_sparse_bad_inputs(qkv, impl):
    q, k, v = qkv
    qs = jnp.full((B, H, 4), N // 4, jnp.int32)
    ks = jnp.full((B, H, 2), N // 2, jnp.int32)
    cmap = jnp.ones((B, H, 4, 2), bool)
    call = lambda *a: cluster_sparse_attention(*a, implementation=impl)
    with pytest.raises(ValueError, match=r"q_cluster_sizes must sum to N \(query rows\)=128.*sum to 127"):
        call(q, k, v, qs.at[0, 1, 0].add(-1), ks, cmap)
    with pytest.raises(ValueError, match=r"k_cluster_sizes must be non-negative"):
        call(q, k, v, qs, ks.at[0, 0, 0].set(-1).at[0, 0, 1].set(N + 1), cmap)
    with pytest.raises(ValueError, match=r"cluster_map must have shape \[B, H, Cq, Ck\] = \(1, 2, 4, 2\)"):
        call(q, k, v, qs, ks, cmap[:, :, :3])
    with pytest.raises(ValueError, match=r"cluster_map must be boolean"):
        call(q, k, v, qs, ks, cmap.astype(jnp.int32))
    with pytest.raises(ValueError, match=r"q_cluster_sizes must be an integer array"):
        call(q, k, v, qs.astype(jnp.float32), ks, cmap)
    with pytest.raises(ValueError, match=r"k_cluster_sizes must have rank 3"):
        call(q, k, v, qs, ks[0], cmap)


def test_block_mask_to_indices_semantics():
    mask = jnp.array([[[True, False, True, True], [False] * 4, [False, True, False, False]]])
    idx, cnt = block_mask_to_indices(mask)
    np.testing.assert_array_equal(cnt, [[3, 0, 1]])
    np.testing.assert_array_equal(idx, [[[0, 2, 3, 3], [0, 0, 0, 0], [1, 1, 1, 1]]])  # padded with last valid
    idx2, cnt2 = block_mask_to_indices(mask, max_kv_blocks=2)
    np.testing.assert_array_equal(cnt2, [[2, 0, 1]])
    np.testing.assert_array_equal(idx2, [[[0, 2], [0, 0], [1, 1]]])
    with pytest.raises(ValueError, match="block_mask must be boolean"):
        block_mask_to_indices(mask.astype(jnp.int32))


def test_block_mask_to_indices_runs_on_device_under_jit():
    mask = jax.device_put(jax.random.bernoulli(jax.random.PRNGKey(0), 0.3, (2, 3, 16, 40)))
    f = jax.jit(block_mask_to_indices)
    f(mask)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        idx, cnt = f(mask)
    idx, cnt, m = np.asarray(idx), np.asarray(cnt), np.asarray(mask)
    for row in np.ndindex(m.shape[:-1]):
        assert list(idx[row][: cnt[row]]) == list(np.flatnonzero(m[row]))
