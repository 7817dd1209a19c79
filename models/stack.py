"""Stacks of identical blocks: every parameter carries a leading layer axis, so a stack runs under
``lax.scan`` (one compiled block, whatever the depth)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def stacked_blocks[M: nnx.Module](make: Callable[[nnx.Rngs], M], num: int, rngs: nnx.Rngs) -> M:
    """``num`` blocks built by ``make(rngs)`` (a vmapped init with split RNG streams), returned as one
    module whose every leaf is ``[num, ...]``."""

    @nnx.split_rngs(splits=num)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(block_rngs: nnx.Rngs) -> M:
        return make(block_rngs)

    return make_blocks(rngs)


def block_view[M: nnx.Module](blocks: M, index: int, num: int, name: str = "block") -> M:
    """Block ``index`` of a stack of ``num`` as a standalone module (slice ``index`` of every leaf)."""
    if not 0 <= index < num:
        raise ValueError(f"{name} index must be in [0, {num}); got {index}")
    graphdef, state = nnx.split(blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[index], state))


def check_layer_axis(tree, num: int, what: str) -> None:
    """Every leaf of ``tree`` (an ``attn_state``) must lead with ``num`` layers; ``what`` names them."""
    for leaf in jax.tree.leaves(tree):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num:
            raise ValueError(
                f"every attn_state leaf needs a leading {what} = {num} axis; got shape {jnp.shape(leaf)}"
            )
