"""The persistent grid's work list: which (batch, head, query tile) items each CTA of a Mosaic kernel takes,
and in which order (shared by the sparse-attention engine and the k-means assignment kernel)."""

import jax
import jax.numpy as jnp

ORDERS = ("head_lpt", "head_snake", "head", "lpt", "interleave")


def work_order(
    counts: jax.Array, order: str = "head_lpt", *, programs: int | None = None, cost: jax.Array | None = None
) -> jax.Array:
    """The persistent CTAs' work list: flat items ``(b·H + h)·nqt + t`` of ``counts [B, H, nqt]``; CTA ``i``
    of ``programs`` takes positions ``i, i + programs, ...``.

    * ``"head_lpt"`` (default): head by head, so the CTAs running at once share one head's K and V in L2,
      and the costliest items first inside a head, so the round-robin deal ends evenly;
    * ``"head_snake"``: ``"head_lpt"`` with every second round of ``programs`` positions reversed, so the
      CTA that took a round's costliest item takes the next round's cheapest (needs ``programs``);
    * ``"head"``: head by head, query tiles in order; ``"lpt"``: costliest first over everything;
    * ``"interleave"``: query tile by query tile across heads (what a ``(heads, q_tiles)`` grid launches).

    ``cost`` (same shape as ``counts``, default ``counts``) is what "costliest" sorts by, e.g. the tile
    count plus a weight per masked tile.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    b, h, nqt = counts.shape
    items = jnp.arange(b * h * nqt, dtype=jnp.int32)
    if order == "head":
        return items
    if order == "interleave":
        return items.reshape(b, h, nqt).transpose(0, 2, 1).reshape(-1)
    if cost is not None and cost.shape != counts.shape:
        raise ValueError(f"cost must have the shape of counts {counts.shape}; got {cost.shape}")
    neg = -(counts if cost is None else cost).reshape(-1)  # ascending = costliest first
    if order == "lpt":
        return jnp.argsort(neg, stable=True).astype(jnp.int32)
    seq = jnp.lexsort((items, neg, items // nqt)).astype(jnp.int32)  # by head, costliest first, item
    if order == "head_lpt":
        return seq
    if not programs or programs < 1:
        raise ValueError(f"order='head_snake' needs programs >= 1 (the persistent CTAs); got {programs!r}")
    pos = jnp.arange(seq.shape[0], dtype=jnp.int32)
    start = pos // programs * programs
    width = jnp.minimum(programs, seq.shape[0] - start)  # the last round may be short
    odd = (pos // programs) % 2 == 1
    return seq[jnp.where(odd, start + width - 1 - (pos - start), pos)]


def num_programs_for(n_items: int, interpret: bool) -> int:
    """One persistent CTA per SM (a CTA's three warpgroups use the whole register file)."""
    if interpret:
        return min(n_items, 2)
    dev = jax.devices()[0]
    return min(n_items, int(getattr(dev, "core_count", 0) or 132))
