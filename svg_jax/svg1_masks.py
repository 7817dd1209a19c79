"""SVG1's spatial/temporal band masks, analytic and at tile (block) granularity.

Official semantics (Sparse-VideoGen, FlexAttention ``mask_mod``s; svg_methods.md §1.3), per token pair
``(q, k)`` of the *placed* sequence (spatial heads: frame-major; temporal heads: token-major, text in
place), with token classes video ``V``, valid text ``X`` and padding text ``P`` (real = ``V ∪ X``)::

    keep(q, k) = (q, k real  and  (|q − k| within the band  or  q ∈ X  or  k ∈ X  or  k ∈ sink))
                 or (q ∈ P and k ∈ P)

The band is ``|q − k| ≤ c·bs`` (Wan, ``ceil`` rounding) or ``|q − k| < c·bs`` (HunyuanVideo and CogVideoX,
``floor``), ``bs`` the block size and ``c`` from :func:`sparsity_to_width`. The sink (Wan only) is the
first ``F`` placed video tokens. Without text the formula reduces to Wan's ``band | k < F``; with text
first and no padding to CogVideoX's ``q < ctx | k < ctx | band``; with text last to HunyuanVideo's mask.

Our kernel computes whole ``bs × bs`` tiles, so the mask used here is the **set of tiles this element mask
touches** (a tile is kept iff it holds at least one kept pair). That is exactly the set of tiles
FlexAttention visits for the official mask; FlexAttention additionally applies the element mask inside
the partially covered tiles. We apply one part of it: the padding keys, element by element, for every
query (the kernels' ``key_padding`` range, :func:`key_padding`), so a real query never sees padding, as
in the official mask and the dense model. Consequences: (1) the band tiles are ``|i − j| ≤ c`` for both
roundings, so each query row computes at most one tile more than the official element band
(``(2c + 1)·bs`` keys instead of ``2c·bs + 1``) and exactly the tiles the official kernel pays for;
(2) padding *queries* see the real keys of their kept tiles (officially they see only padding, in the
dense model every real key); their outputs reach no real token, since every real query masks them. The
tests and :func:`svg1_attention_reference` use this same mask.

No function here builds anything of size ``N × N``: the block mask is ``[B, nqb, nkb]`` and the profiling
masks are ``[B, rows, N]``.
"""

import dataclasses
import math

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from svg_jax.pallas_kernels import padding_key_mask

from .layout import TextTokens, VideoLayout


def sparsity_to_width(density: float, num_text_tokens: int, num_frames: int, tokens_per_frame: int) -> float:
    """Band half-width in *frames* (the official ``mul``), as ``sparsity_to_width`` in Sparse-VideoGen.

    A band of half-width ``w`` over ``N'`` tokens keeps ``1 − (1 − w/N')²`` of the matrix; the text rows
    and columns already keep about ``2·ctx/N'``, which is subtracted from the budget first.
    """
    n_total = num_text_tokens + num_frames * tokens_per_frame
    budget = density - 2.0 * num_text_tokens / n_total
    width_tokens = n_total * (1.0 - math.sqrt(1.0 - budget))
    return width_tokens / tokens_per_frame


def band_blocks_from_frames(
    width_frames: float, tokens_per_frame: int, block_size: int, rounding: str
) -> int:
    """Tile half-width ``c`` (tiles ``|i − j| ≤ c`` are kept) from a band width in frames.

    ``rounding='ceil'`` is Wan's ``ceil(mul·F/128)·128`` with ``≤``; ``'floor'`` is HunyuanVideo's and
    CogVideoX's ``floor(mul·F/128)·128`` with ``<``. Both touch the tiles ``|i − j| ≤ c``. ``c`` is at least
    1 (the diagonal and its neighbours); the official code reaches ``c = 0`` only when the text alone
    exceeds the density budget, where its band degenerates to the diagonal (ceil) or to nothing (floor).
    """
    blocks = width_frames * tokens_per_frame / block_size
    c = math.ceil(blocks) if rounding == "ceil" else math.floor(blocks)
    return max(int(c), 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TileGeometry:
    """Static tiling of a (placed) self-attention sequence into ``block_size`` tiles."""

    layout: VideoLayout
    block_size: int
    first_frame_sink: bool

    @property
    def seq_len(self) -> int:
        return self.layout.seq_len

    @property
    def num_blocks(self) -> int:
        return -(-self.seq_len // self.block_size)

    def block_of(self, positions: Int[Array, "*S"]) -> Int[Array, "*S"]:
        return positions // self.block_size


@dataclasses.dataclass(frozen=True)
class BlockFlags:
    """Which token classes each tile row/column holds (``[B, nb]`` booleans, ``nb`` = number of blocks)."""

    video: Bool[Array, "B nb"]
    text: Bool[Array, "B nb"]  # valid (non-padding) text
    padding: Bool[Array, "B nb"]
    sink: Bool[Array, "B nb"]

    @property
    def real(self) -> Bool[Array, "B nb"]:
        return self.video | self.text


def text_valid_len(layout: VideoLayout, text: TextTokens | None, batch: int) -> Int[Array, " B"]:
    """Valid text tokens per batch element (``num_text_tokens`` without padding, 0 without text)."""
    if text is None or text.valid_len is None:
        return jnp.full((batch,), layout.num_text_tokens, jnp.int32)
    return jnp.asarray(text.valid_len, jnp.int32).reshape(batch)


def key_padding(layout: VideoLayout, valid_len: Int[Array, " B"]) -> Int[Array, "B 2"]:
    """Per batch element the padding text slots ``[text_start + valid_len, text_start + ctx)`` (empty
    without text): the key range that every query ignores (the kernels' ``key_padding``). Text stays in
    place under both head layouts, so the range holds in placed and original coordinates alike."""
    if layout.text_start is None:
        end = jnp.full_like(valid_len, layout.seq_len)
        return jnp.stack([end, end], axis=-1)
    ts = layout.text_start
    return jnp.stack([ts + valid_len, jnp.full_like(valid_len, ts + layout.num_text_tokens)], axis=-1)


def real_keys(layout: VideoLayout, valid_len: Int[Array, " B"]) -> Bool[Array, "B N"]:
    """False on the padding keys of :func:`key_padding`."""
    return ~padding_key_mask(key_padding(layout, valid_len), layout.seq_len)


def block_flags(geom: TileGeometry, valid_len: Int[Array, " B"]) -> BlockFlags:
    """Token classes present in each tile (analytic interval overlaps, ``O(B·nb)``)."""
    lay, bs = geom.layout, geom.block_size
    starts = jnp.arange(geom.num_blocks, dtype=jnp.int32) * bs  # [nb]
    ends = jnp.minimum(starts + bs, geom.seq_len)  # [nb]

    def overlaps(lo, hi):  # tiles intersecting the token interval [lo, hi)
        return (starts < hi) & (ends > lo) & (hi > lo)

    b = valid_len.shape[0]
    vs = lay.video_start
    video = jnp.broadcast_to(overlaps(vs, vs + lay.num_video_tokens), (b, geom.num_blocks))
    if lay.text_start is None:
        none = jnp.zeros_like(video)
        text, padding = none, none
    else:
        ts = lay.text_start
        vl = valid_len[:, None]  # [B, 1]
        text = overlaps(ts, ts + vl)  # [B, nb]
        padding = overlaps(ts + vl, ts + lay.num_text_tokens)  # [B, nb]
    if geom.first_frame_sink:
        sink = jnp.broadcast_to(overlaps(vs, vs + lay.tokens_per_frame), (b, geom.num_blocks))
    else:
        sink = jnp.zeros_like(video)
    return BlockFlags(video=video, text=text, padding=padding, sink=sink)


def tile_keep(
    q_blocks: Int[Array, "*Sq"], k_blocks: Int[Array, "*Sk"], flags: BlockFlags, band_blocks: int
) -> Bool[Array, "B ..."]:
    """Tile-level keep rule for broadcastable arrays of query/key block ids (placed coordinates).

    ``keep(i, j) = (V_i ∧ V_j ∧ |i − j| ≤ c) ∨ (X_i ∧ R_j) ∨ (R_i ∧ X_j) ∨ (R_i ∧ S_j) ∨ (P_i ∧ P_j)``: the
    tiles touched by the element rule in the module docstring (a band pair involving text is already
    covered by the text terms, and video is contiguous, so the band reduces to the block distance).
    """

    def at(f, idx):
        return f[:, idx]  # [B, *idx.shape]

    band = jnp.abs(q_blocks - k_blocks) <= band_blocks
    keep = at(flags.video, q_blocks) & at(flags.video, k_blocks) & band[None]
    real = flags.real
    keep |= at(flags.text, q_blocks) & at(real, k_blocks)
    keep |= at(real, q_blocks) & at(flags.text, k_blocks)
    keep |= at(real, q_blocks) & at(flags.sink, k_blocks)
    keep |= at(flags.padding, q_blocks) & at(flags.padding, k_blocks)
    return keep


def band_block_mask(
    geom: TileGeometry, valid_len: Int[Array, " B"], band_blocks: int
) -> Bool[Array, "B nqb nkb"]:
    """The tile mask shared by all heads in the placed layout, ``[B, nb, nb]``."""
    flags = block_flags(geom, valid_len)
    ids = jnp.arange(geom.num_blocks, dtype=jnp.int32)
    return tile_keep(ids[:, None], ids[None, :], flags, band_blocks)


def max_blocks_per_row(geom: TileGeometry, band_blocks: int) -> int:
    """Static bound on kept tiles per query tile: the width ``K`` of the kernel's key-block lists."""
    nb = geom.num_blocks
    if geom.layout.text_placement != "none":
        bound = nb  # text query tiles attend every real key tile
    else:
        sink = -(-geom.layout.tokens_per_frame // geom.block_size) + 1 if geom.first_frame_sink else 0
        bound = min(nb, 2 * band_blocks + 1 + sink)
    # Rounded up to a power of two: the kernel's per-row list is a Triton block (entries past the count
    # repeat the last index and are never visited).
    return 1 << (bound - 1).bit_length()


def mask_density(geom: TileGeometry, block_mask: Bool[Array, "B nqb nkb"]) -> Float[Array, " B"]:
    """Fraction of the ``N × N`` score matrix inside kept tiles (the last tile may be partial)."""
    bs, n = geom.block_size, geom.seq_len
    sizes = jnp.minimum(bs, n - jnp.arange(geom.num_blocks) * bs).astype(jnp.float32)  # [nb]
    area = sizes[:, None] * sizes[None, :]  # [nb, nb]
    return jnp.sum(jnp.where(block_mask, area, 0.0), axis=(-2, -1)) / float(n) ** 2


def temporal_position(layout: VideoLayout, positions: Int[Array, "*S"]) -> Int[Array, "*S"]:
    """Placed index of sequence positions for a temporal head: video ``f·F + p → p·T + f``, text fixed."""
    vs, t, f = layout.video_start, layout.num_frames, layout.tokens_per_frame
    rel = positions - vs
    is_video = (rel >= 0) & (rel < layout.num_video_tokens)
    placed = vs + (rel % f) * t + rel // f
    return jnp.where(is_video, placed, positions)


def temporal_source(layout: VideoLayout, placed: Int[Array, "*S"]) -> Int[Array, "*S"]:
    """Inverse of :func:`temporal_position`: the sequence position stored at placed index ``placed``."""
    vs, t, f = layout.video_start, layout.num_frames, layout.tokens_per_frame
    rel = placed - vs
    is_video = (rel >= 0) & (rel < layout.num_video_tokens)
    source = vs + (rel % t) * f + rel // t
    return jnp.where(is_video, source, placed)


def row_masks(
    geom: TileGeometry, valid_len: Int[Array, " B"], rows: Int[Array, " R"], band_blocks: int
) -> tuple[Bool[Array, "B R N"], Bool[Array, "B R N"]]:
    """Element masks of the spatial and temporal candidates for query ``rows`` (original coordinates)."""
    flags = block_flags(geom, valid_len)
    keys = jnp.arange(geom.seq_len, dtype=jnp.int32)
    spatial = tile_keep(geom.block_of(rows)[:, None], geom.block_of(keys)[None, :], flags, band_blocks)
    t_rows = geom.block_of(temporal_position(geom.layout, rows))
    t_keys = geom.block_of(temporal_position(geom.layout, keys))
    temporal = tile_keep(t_rows[:, None], t_keys[None, :], flags, band_blocks)
    real = real_keys(geom.layout, valid_len)[:, None, :]  # [B, 1, N]
    return spatial & real, temporal & real


def head_element_mask(
    geom: TileGeometry, valid_len: Int[Array, " B"], head_is_temporal: Bool[Array, "B H"], band_blocks: int
) -> Bool[Array, "B H N N"]:
    """Per-head element mask in original coordinates. ``N × N``: for tests and references only."""
    flags = block_flags(geom, valid_len)
    pos = jnp.arange(geom.seq_len, dtype=jnp.int32)
    spatial = geom.block_of(pos)
    temporal = geom.block_of(temporal_position(geom.layout, pos))
    m_s = tile_keep(spatial[:, None], spatial[None, :], flags, band_blocks)  # [B, N, N]
    m_t = tile_keep(temporal[:, None], temporal[None, :], flags, band_blocks)  # [B, N, N]
    mask = jnp.where(head_is_temporal[:, :, None, None], m_t[:, None], m_s[:, None])
    return mask & real_keys(geom.layout, valid_len)[:, None, None, :]
