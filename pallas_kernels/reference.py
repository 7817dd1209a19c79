"""Plain-XLA oracles for the sparse-attention kernels: dense attention with the expanded element mask.

These are the ground truth for every test. They materialise ``[B, H, N, M]`` logits, so they are meant
for test-sized problems (or for a slice of query rows of a large one). They compute in float32 with
``precision=HIGHEST`` (GPU float32 dots otherwise default to TF32) and cast the result to ``q.dtype``.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .checks import default_sm_scale

_HIGHEST = jax.lax.Precision.HIGHEST


def masked_attention_reference(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    mask: Bool[Array, "B H N M"] | None = None,
    *,
    sm_scale: float | None = None,
) -> Float[Array, "B N H D"]:
    """Exact softmax attention restricted to ``mask``; a query row with no allowed key outputs zeros."""
    sm_scale = default_sm_scale(q) if sm_scale is None else sm_scale
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    s = jnp.einsum("bnhd,bmhd->bhnm", qf, kf, precision=_HIGHEST) * sm_scale  # [B, H, N, M]
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # fully masked rows: keep exp() at 0 instead of NaN
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("bhnm,bmhd->bnhd", p, vf, precision=_HIGHEST)
    return out.astype(q.dtype)


def block_indices_to_mask(
    kv_block_indices: Int[Array, "B H nqb K"],
    kv_block_counts: Int[Array, "B H nqb"],
    *,
    num_q: int,
    num_k: int,
    block_q: int,
    block_k: int,
) -> Bool[Array, "B H N M"]:
    """Expand per-query-block key-block lists into the element mask they describe."""
    nkb = -(-num_k // block_k)
    k_max = kv_block_indices.shape[-1]
    valid = jnp.arange(k_max) < kv_block_counts[..., None]  # [B, H, nqb, K]
    hit = jax.nn.one_hot(kv_block_indices, nkb, dtype=jnp.int32) * valid[..., None]  # [B, H, nqb, K, nkb]
    block_mask = jnp.sum(hit, axis=-2) > 0  # [B, H, nqb, nkb]
    rows = jnp.arange(num_q) // block_q
    cols = jnp.arange(num_k) // block_k
    return block_mask[:, :, rows][:, :, :, cols]  # [B, H, N, M]


def block_sparse_attention_reference(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    kv_block_indices: Int[Array, "B H nqb K"],
    kv_block_counts: Int[Array, "B H nqb"],
    *,
    block_q: int,
    block_k: int,
    sm_scale: float | None = None,
    key_padding: Int[Array, "B 2"] | None = None,
) -> Float[Array, "B N H D"]:
    """Oracle of :func:`block_sparse_attention` (same signature, minus the implementation knobs)."""
    mask = block_indices_to_mask(
        kv_block_indices,
        kv_block_counts,
        num_q=q.shape[1],
        num_k=k.shape[1],
        block_q=block_q,
        block_k=block_k,
    )
    if key_padding is not None:
        mask = mask & ~padding_key_mask(key_padding, k.shape[1])[:, None, None, :]
    return masked_attention_reference(q, k, v, mask, sm_scale=sm_scale)


def padding_key_mask(key_padding: Int[Array, "B 2"], num_k: int) -> Bool[Array, "B M"]:
    """True for the keys in ``[key_padding[b, 0], key_padding[b, 1])``: the ones every query ignores."""
    cols = jnp.arange(num_k, dtype=jnp.int32)[None, :]
    return (cols >= key_padding[:, :1]) & (cols < key_padding[:, 1:])


def cluster_labels(sizes: Int[Array, "*G C"], n: int) -> Int[Array, "*G n"]:
    """Label of each row of a sequence made of contiguous clusters of ``sizes`` (rows past the sum get C).

    A binary search per row, its ``log2(C)`` steps unrolled: XLA fuses them into one pass over the rows
    (the default ``lax`` loop launches two kernels per step)."""
    ends = jnp.cumsum(sizes, axis=-1)  # [*G, C]
    rows = jnp.arange(n)
    flat_ends = ends.reshape(-1, ends.shape[-1])
    search = lambda e: jnp.searchsorted(e, rows, side="right", method="scan_unrolled")
    labels = jax.vmap(search)(flat_ends)
    return labels.reshape(*sizes.shape[:-1], n).astype(jnp.int32)


def cluster_map_to_mask(
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    num_q: int,
    num_k: int,
) -> Bool[Array, "B H N M"]:
    """Expand a cluster-pair map into the element mask over the cluster-sorted sequences."""
    q_lab = cluster_labels(q_cluster_sizes, num_q)  # [B, H, N]
    k_lab = cluster_labels(k_cluster_sizes, num_k)  # [B, H, M]
    row_maps = jnp.take_along_axis(cluster_map, q_lab[..., None], axis=2)  # [B, H, N, Ck]
    return jnp.take_along_axis(row_maps, k_lab[:, :, None, :], axis=3)  # [B, H, N, M]


def cluster_sparse_attention_reference(
    q: Float[Array, "B N H D"],
    k: Float[Array, "B M H D"],
    v: Float[Array, "B M H D"],
    q_cluster_sizes: Int[Array, "B H Cq"],
    k_cluster_sizes: Int[Array, "B H Ck"],
    cluster_map: Bool[Array, "B H Cq Ck"],
    *,
    sm_scale: float | None = None,
) -> Float[Array, "B N H D"]:
    """Oracle of :func:`cluster_sparse_attention` (same signature, minus the implementation knobs)."""
    mask = cluster_map_to_mask(
        q_cluster_sizes, k_cluster_sizes, cluster_map, num_q=q.shape[1], num_k=k.shape[1]
    )
    return masked_attention_reference(q, k, v, mask, sm_scale=sm_scale)
