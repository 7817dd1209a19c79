"""Helpers shared by the Pallas kernels: launch config, padding, dot precision, implementation choice."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from . import checks


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonConfig:
    """Launch knobs of the Triton lowering; they change speed, never the result."""

    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        checks.check_triton_launch(self.num_warps, self.num_stages)


def dot_precision(dtype) -> jax.lax.Precision:
    """Full-precision float32 dots (no TF32 on GPU), native precision for 16-bit inputs."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def pad_axis(x, axis: int, size: int):
    """Zero-pad ``x`` along ``axis`` up to ``size``."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def front_order(first: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For lists along the last axis with ``counts`` listed entries of which ``first`` (bool) are to go to
    the front: the entry each slot holds after moving them there (in order, then the other listed ones in
    order, then the tail as it was), and how many went first. No sort: one running count gives each entry
    its new slot and one scatter of slot numbers the inverse."""
    slot = jnp.arange(first.shape[-1], dtype=jnp.int32)
    listed = slot < counts[..., None]
    before = jnp.cumsum(first, axis=-1, dtype=jnp.int32)  # entries going first up to and including each slot
    n_first = before[..., -1]
    to = jnp.where(first, before - 1, jnp.where(listed, n_first[..., None] + slot - before, slot))
    slots = jnp.broadcast_to(slot, to.shape)
    return jnp.put_along_axis(slots, to, slots, axis=-1, inplace=False), n_first


MAX_TRITON_HEAD_DIM = 256  # a [128, 512] f32 accumulator no longer fits one program's registers


def padded_head_dim(d: int) -> int:
    """Triton tiles need power-of-two sizes >= 16: zero-pad D (exact: zeros add nothing to q·k or p·v).

    Raises ``NotImplementedError`` above :data:`MAX_TRITON_HEAD_DIM` rather than falling back silently.
    """
    dp = max(16, pl.next_power_of_2(d))
    if dp > MAX_TRITON_HEAD_DIM:
        raise NotImplementedError(
            f"head dim {d} (padded to {dp}) exceeds the Triton kernels' limit of {MAX_TRITON_HEAD_DIM}; "
            "use implementation='xla' for such heads"
        )
    return dp


def default_triton_config(block_q: int, head_dim: int) -> TritonConfig:
    """Heuristic from the H100 calibration (anchors.md): 4 warps / 2 stages for 128×64 tiles at D=128."""
    return TritonConfig(num_warps=8 if block_q * head_dim > 128 * 128 else 4, num_stages=2)


def is_hopper() -> bool:
    """Whether the default device is an sm90 GPU (H100/H200/H800/GH200): wgmma and TMA are there."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9.")


def resolve_implementation(implementation: str, *, mosaic_ok: bool = False) -> str:
    """'auto' → the fastest correct path on the default backend; explicit choices are checked.

    ``mosaic_ok``: the caller has a Mosaic GPU kernel for these inputs (dtype, head dim, tiles); 'auto'
    then picks it on Hopper. Otherwise 'auto' is Triton on a GPU and the XLA oracle on a CPU (where the
    Pallas interpreter would step the grid one program at a time).
    """
    checks.check_implementation(implementation)
    if implementation == "auto":
        if jax.default_backend() != "gpu":
            return "xla"
        return "pallas_mosaic" if mosaic_ok and is_hopper() else "pallas_triton"
    return implementation
