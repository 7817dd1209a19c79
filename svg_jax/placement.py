"""SVG1 layout transformation: temporal heads to token-major order and back, spatial heads in place.

A band over frame-major order is a spatial head's pattern; the same band over token-major order (video
token ``f·F + p`` placed at ``p·T + f``) is a temporal head's. Placing each temporal head's q, k and v in
token-major order therefore lets one band mask and one kernel call serve every head
(svg_methods.md §1.1, steps 3–5). Text tokens never move.
"""

from collections.abc import Sequence
from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from svg_jax.pallas_kernels.permute import permute_tokens

from .layout import VideoLayout
from .svg1_masks import temporal_position, temporal_source

PermuteImplementation = Literal["auto", "xla", "xla_select", "pallas_triton"]


def placement_sources(
    layout: VideoLayout, head_is_temporal: Bool[Array, "B H"], *, inverse: bool
) -> Int[Array, "B H N"]:
    """Gather indices per (batch, head): placed ← original (``inverse=False``) or original ← placed."""
    pos = jnp.arange(layout.seq_len, dtype=jnp.int32)
    moved = temporal_position(layout, pos) if inverse else temporal_source(layout, pos)  # [N]
    return jnp.where(head_is_temporal[..., None], moved[None, None, :], pos[None, None, :])


def _place_select(
    x: Float[Array, "B N H D"], layout: VideoLayout, head_is_temporal: Bool[Array, "B H"], inverse: bool
) -> Float[Array, "B N H D"]:
    """Transpose the video part and select per head (one fused XLA loop, no gather indices)."""
    b, _, h, d = x.shape
    vs, ve = layout.video_start, layout.video_start + layout.num_video_tokens
    t, f = layout.num_frames, layout.tokens_per_frame
    video = x[:, vs:ve]
    grid = video.reshape(b, f, t, h, d) if inverse else video.reshape(b, t, f, h, d)  # [B, a, c, H, D]
    moved = jnp.swapaxes(grid, 1, 2).reshape(video.shape)  # [B, T·F, H, D]
    moved = jnp.concatenate([x[:, :vs], moved, x[:, ve:]], axis=1)  # [B, N, H, D]
    return jnp.where(head_is_temporal[:, None, :, None], moved, x)


def place_heads(
    xs: Sequence[Float[Array, "B N H D"]],
    layout: VideoLayout,
    head_is_temporal: Bool[Array, "B H"],
    *,
    inverse: bool = False,
    implementation: PermuteImplementation = "auto",
    interpret: bool | None = None,
) -> tuple[Float[Array, "B N H D"], ...]:
    """Move temporal heads of each array to token-major order (``inverse=True``: back to frame-major).

    ``implementation``: ``"xla"`` (one ``take_along_axis`` gather per array), ``"xla_select"`` (transpose
    the video part and select per head), ``"pallas_triton"`` (one Pallas gather for all arrays, sharing
    the index loads) or ``"auto"`` (the XLA gather until the GPU benchmark says otherwise).
    """
    xs = tuple(xs)
    for i, x in enumerate(xs):
        layout.check_seq_len(x.shape[1], f"xs[{i}].shape[1]")
    if implementation == "xla_select":
        return tuple(_place_select(x, layout, head_is_temporal, inverse) for x in xs)
    if implementation not in ("auto", "xla", "pallas_triton"):
        raise ValueError(
            "implementation must be one of 'auto', 'xla', 'xla_select', 'pallas_triton'; "
            f"got {implementation!r}"
        )
    src = placement_sources(layout, head_is_temporal, inverse=inverse)
    impl = "xla" if implementation == "auto" else implementation
    return permute_tokens(xs, src, implementation=impl, interpret=interpret)
