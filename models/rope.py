"""Wan's 3D rotary position embedding (diffusers ``WanRotaryPosEmbed`` + the rotation in its processor).

The head dim ``D`` is split into time/height/width parts ``t | h | w`` with ``h = w = 2·(D//6)`` and
``t = D - h - w`` (44/42/42 for D=128). Axis ``a`` of size ``d_a`` rotates the interleaved pair
``(x[2i], x[2i+1])`` by ``pos_a · theta^(-2i/d_a)``; every axis starts at position 0.

The angle tables are built in numpy float64 at trace time (diffusers builds them in float64 too) and cast
to float32; they are static constants of the grid, so they cost nothing at run time. Only the small
per-axis tables become constants: the broadcast to ``[N, D/2]`` happens in the graph.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Return the ``(t, h, w)`` split of ``head_dim`` used by Wan."""
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def _axis_angles(dim: int, num_pos: int, theta: float) -> np.ndarray:
    """Angles ``[num_pos, dim/2]`` in float64, as diffusers' ``get_1d_rotary_pos_embed`` computes them."""
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim))
    return np.outer(np.arange(num_pos, dtype=np.float64), inv_freq)


def wan_rope(
    head_dim: int,
    grid: tuple[int, int, int],
    *,
    max_seq_len: int,
    theta: float = 10000.0,
) -> tuple[Float[Array, "N D2"], Float[Array, "N D2"]]:
    """Return float32 ``(cos, sin)`` of the pair angles, ``[T·Hp·Wp, D/2]``, tokens frame-major.

    These are diffusers' ``freqs_cos[..., 0::2]`` and ``freqs_sin[..., 1::2]`` (its tables repeat every
    pair value twice).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE; got {head_dim=}")
    for name, size in zip(("frames", "height", "width"), grid, strict=True):
        if size > max_seq_len:
            raise ValueError(
                f"latent {name} after patchify must be <= rope_max_seq_len={max_seq_len}; got {size} "
                f"(grid {grid})"
            )
    t, hp, wp = grid
    tables = [(_axis_angles(d, n, theta)) for d, n in zip(rope_axis_dims(head_dim), grid, strict=True)]
    cos = [jnp.asarray(np.cos(a).astype(np.float32)) for a in tables]
    sin = [jnp.asarray(np.sin(a).astype(np.float32)) for a in tables]

    def broadcast(parts: list[Array]) -> Array:
        pt, ph, pw = parts
        full = jnp.concatenate(
            [
                jnp.broadcast_to(pt[:, None, None, :], (t, hp, wp, pt.shape[-1])),
                jnp.broadcast_to(ph[None, :, None, :], (t, hp, wp, ph.shape[-1])),
                jnp.broadcast_to(pw[None, None, :, :], (t, hp, wp, pw.shape[-1])),
            ],
            axis=-1,
        )  # [T, Hp, Wp, D/2]
        return full.reshape(t * hp * wp, head_dim // 2)  # [N, D/2]

    return broadcast(cos), broadcast(sin)


def apply_rope(
    x: Float[Array, "B N H D"],
    cos: Float[Array, "N D2"],
    sin: Float[Array, "N D2"],
) -> Float[Array, "B N H D"]:
    """Rotate interleaved pairs of ``x`` in float32 and cast back to ``x.dtype``."""
    b, n, h, d = x.shape
    xf = x.astype(jnp.float32).reshape(b, n, h, d // 2, 2)  # [B, N, H, D/2, 2]
    x1, x2 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)  # [B, N, H, D/2, 2]
    return out.reshape(b, n, h, d).astype(x.dtype)  # [B, N, H, D]
