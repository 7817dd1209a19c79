"""Block-mask → per-query-block key-block lists, on device (no host sync, jittable)."""

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int


def block_mask_to_indices(
    block_mask: Bool[Array, "*G nqb nkb"],
    max_kv_blocks: int | None = None,
) -> tuple[Int[Array, "*G nqb K"], Int[Array, "*G nqb"]]:
    """Compact each row of a block mask into ascending key-block indices and a count.

    Returns ``(kv_block_indices, kv_block_counts)`` in the format of :func:`block_sparse_attention`:
    ``kv_block_indices[..., i, :kv_block_counts[..., i]]`` are the set columns of row ``i`` in ascending
    order (good for L2 locality). Entries past the count repeat the row's last valid index (0 for an
    empty row), so a kernel that prefetches one entry ahead stays in bounds.

    ``max_kv_blocks`` (static) truncates the list width ``K`` (default: ``nkb``, never truncates). Rows
    with more set blocks than ``max_kv_blocks`` keep their first ``max_kv_blocks`` blocks; pass a bound
    you know holds (e.g. from the band width) to save memory.
    """
    if block_mask.ndim < 2:
        raise ValueError(f"block_mask must have rank >= 2 [..., nqb, nkb]; got shape {block_mask.shape}")
    if block_mask.dtype != jnp.bool_:
        raise ValueError(f"block_mask must be boolean; got dtype {block_mask.dtype}")
    nkb = block_mask.shape[-1]
    width = nkb if max_kv_blocks is None else int(max_kv_blocks)
    if width < 1:
        raise ValueError(f"max_kv_blocks must be >= 1; got {max_kv_blocks}")
    lead = block_mask.shape[:-1]
    rows = block_mask.reshape(-1, nkb)  # [R, nkb]
    pos = jnp.cumsum(rows, axis=-1, dtype=jnp.int32) - 1  # [R, nkb] slot of each set column
    counts = jnp.minimum(pos[:, -1] + 1, width)  # [R]
    target = jnp.where(rows & (pos < width), pos, width)  # unset / overflow -> dropped slot
    cols = jnp.broadcast_to(jnp.arange(nkb, dtype=jnp.int32), rows.shape)
    r_idx = jnp.broadcast_to(jnp.arange(rows.shape[0])[:, None], rows.shape)
    idx = jnp.zeros((rows.shape[0], width), jnp.int32).at[r_idx, target].set(cols, mode="drop")
    # Pad past the count with the last valid index (0 for empty rows).
    last = jnp.take_along_axis(idx, jnp.maximum(counts - 1, 0)[:, None], axis=-1)  # [R, 1]
    idx = jnp.where(jnp.arange(width)[None, :] < counts[:, None], idx, last)
    return idx.reshape(*lead, width), counts.reshape(lead)
