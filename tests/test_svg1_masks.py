"""SVG1 tile masks against a brute-force NumPy version of the official element masks."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from svg_jax.layout import VideoLayout
from svg_jax.svg1 import (
    COGVIDEOX15_I2V,
    HUNYUAN_T2V_720P,
    WAN21_T2V_720P,
    SVG1Config,
)
from svg_jax.svg1_masks import (
    TileGeometry,
    band_block_mask,
    band_blocks_from_frames,
    head_element_mask,
    key_padding,
    mask_density,
    max_blocks_per_row,
    sparsity_to_width,
    temporal_position,
    temporal_source,
)


def official_token_mask(layout: VideoLayout, valid_len: int, c: int, bs: int, rounding: str, sink: bool):
    """The official FlexAttention mask_mod (svg_methods.md §1.3), generalised, in placed coordinates."""
    n = layout.seq_len
    pos = np.arange(n)
    vs, nv = layout.video_start, layout.num_video_tokens
    is_v = (pos >= vs) & (pos < vs + nv)
    if layout.text_placement == "none":
        is_x = is_p = np.zeros(n, bool)
    else:
        ts, ctx = layout.text_start, layout.num_text_tokens
        is_x = (pos >= ts) & (pos < ts + valid_len)
        is_p = (pos >= ts + valid_len) & (pos < ts + ctx)
    real = is_v | is_x
    dist = np.abs(pos[:, None] - pos[None, :])
    band = dist <= c * bs if rounding == "ceil" else dist < c * bs
    is_s = (pos >= vs) & (pos < vs + layout.tokens_per_frame) if sink else np.zeros(n, bool)
    keep = real[:, None] & real[None, :] & (band | is_x[:, None] | is_x[None, :] | is_s[None, :])
    return keep | (is_p[:, None] & is_p[None, :])


def touched_tiles(mask: np.ndarray, bs: int) -> np.ndarray:
    n = mask.shape[0]
    nb = -(-n // bs)
    padded = np.zeros((nb * bs, nb * bs), bool)
    padded[:n, :n] = mask
    return padded.reshape(nb, bs, nb, bs).any(axis=(1, 3))


def make_layout(t: int, f: int, placement: str, ctx: int) -> VideoLayout:
    return VideoLayout(num_frames=t, tokens_per_frame=f, text_placement=placement,
                       num_text_tokens=ctx if placement != "none" else 0)


CASES = [
    # (T, F, placement, ctx, valid_len, bs, c, rounding, sink)
    (4, 24, "none", 0, 0, 16, 1, "ceil", True),
    (5, 20, "none", 0, 0, 16, 2, "floor", False),
    (4, 24, "first", 19, 19, 16, 1, "floor", False),
    (3, 40, "first", 37, 37, 32, 1, "ceil", True),
    (4, 24, "last", 40, 7, 16, 2, "floor", False),
    (6, 16, "last", 33, 0, 16, 1, "floor", False),
    (6, 16, "last", 33, 33, 16, 1, "ceil", True),
]


CASE_IDS = [f"{c[2]}-T{c[0]}F{c[1]}-vl{c[4]}-{c[7]}-sink{c[8]}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_block_mask_equals_touched_official_tiles(case):
    t, f, placement, ctx, valid_len, bs, c, rounding, sink = case
    layout = make_layout(t, f, placement, ctx)
    geom = TileGeometry(layout=layout, block_size=bs, first_frame_sink=sink)
    got = np.asarray(band_block_mask(geom, jnp.array([valid_len], jnp.int32), c))[0]
    want = touched_tiles(official_token_mask(layout, valid_len, c, bs, rounding, sink), bs)
    np.testing.assert_array_equal(got, want)
    assert got.sum(axis=1).max() <= max_blocks_per_row(geom, c)


@given(
    t=st.integers(1, 6),
    f=st.integers(1, 40),
    placement=st.sampled_from(["none", "first", "last"]),
    ctx=st.integers(1, 40),
    valid_frac=st.floats(0.0, 1.0),
    bs=st.sampled_from([16, 32]),
    c=st.integers(1, 3),
    rounding=st.sampled_from(["ceil", "floor"]),
    sink=st.booleans(),
)
def test_fuzz_block_mask_equals_touched_official_tiles(t, f, placement, ctx, valid_frac, bs, c, rounding,
                                                       sink):
    layout = make_layout(t, f, placement, ctx)
    valid_len = round(valid_frac * layout.num_text_tokens)
    geom = TileGeometry(layout=layout, block_size=bs, first_frame_sink=sink)
    got = np.asarray(band_block_mask(geom, jnp.array([valid_len, layout.num_text_tokens], jnp.int32), c))
    for b, vl in enumerate((valid_len, layout.num_text_tokens)):
        want = touched_tiles(official_token_mask(layout, vl, c, bs, rounding, sink), bs)
        np.testing.assert_array_equal(got[b], want)


@pytest.mark.parametrize("placement", ["none", "first", "last"])
def test_temporal_head_mask_is_the_band_in_token_major_order(placement):
    """Per-head element masks in original order: spatial = placed tiles, temporal = tiles at p·T + f."""
    t, f, bs, c = 4, 24, 16, 1
    layout = make_layout(t, f, placement, 19)
    geom = TileGeometry(layout=layout, block_size=bs, first_frame_sink=False)
    vl = layout.num_text_tokens
    tiles = touched_tiles(official_token_mask(layout, vl, c, bs, "floor", False), bs)
    pos = np.arange(layout.seq_len)
    vs = layout.video_start
    rel = pos - vs
    is_video = (rel >= 0) & (rel < t * f)
    frame, spot = rel // f, rel % f
    placed = np.where(is_video, vs + spot * t + frame, pos)  # f·F + p → p·T + f
    temporal = tiles[placed[:, None] // bs, placed[None, :] // bs]
    spatial = tiles[pos[:, None] // bs, pos[None, :] // bs]
    got = np.asarray(head_element_mask(geom, jnp.array([vl]), jnp.array([[False, True]]), c))
    np.testing.assert_array_equal(got[0, 0], spatial)
    np.testing.assert_array_equal(got[0, 1], temporal)
    np.testing.assert_array_equal(np.asarray(temporal_position(layout, jnp.asarray(pos))), placed)
    np.testing.assert_array_equal(np.asarray(temporal_source(layout, jnp.asarray(placed))), pos)


def test_sparsity_to_width_matches_official_numbers():
    # svg_methods.md §1.3: Wan 720p, s=0.3 → mul = 3.43 frames, band 12,416 tokens; issue #49: s=0.25 → 2.813.
    assert sparsity_to_width(0.3, 0, 21, 3600) == pytest.approx(3.4301, abs=1e-4)
    assert sparsity_to_width(0.25, 0, 21, 3600) == pytest.approx(2.813, abs=1e-3)
    wan = VideoLayout(num_frames=21, tokens_per_frame=3600)
    assert WAN21_T2V_720P.band_blocks(wan) * 128 == 12416
    hy = VideoLayout(num_frames=33, tokens_per_frame=3600, text_placement="last", num_text_tokens=256)
    n_total = 118800 + 256
    s = 0.25 - 2 * 256 / n_total
    assert HUNYUAN_T2V_720P.band_blocks(hy) == math.floor(n_total * (1 - math.sqrt(1 - s)) / 128)
    # Profiling masks: |i − j| < block_thres // 128 with block_thres = 2F (Wan), 1.5F (HunyuanVideo).
    assert WAN21_T2V_720P.profile_band_blocks(wan) == 7200 // 128 - 1
    assert HUNYUAN_T2V_720P.profile_band_blocks(hy) == 5400 // 128 - 1
    assert band_blocks_from_frames(0.01, 100, 128, "floor") == 1  # never below the diagonal + neighbours


def official_density(layout, valid_len, c, bs, rounding, sink):
    return official_token_mask(layout, valid_len, c, bs, rounding, sink).mean()


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
@pytest.mark.parametrize("placement", ["none", "first", "last"])
def test_tile_density_within_one_block_row_of_official(rounding, placement):
    """Tiles keep < one extra block per query row over the official element band (small shape)."""
    layout = make_layout(16, 128, placement, 64)
    bs = 16
    cfg = SVG1Config(density=0.25, block_size=bs, band_rounding=rounding)
    c = cfg.band_blocks(layout)
    geom = TileGeometry(layout=layout, block_size=bs, first_frame_sink=False)
    vl = layout.num_text_tokens
    ours = float(mask_density(geom, band_block_mask(geom, jnp.array([vl]), c))[0])
    official = official_density(layout, vl, c, bs, rounding, False)
    assert 0.0 <= ours - official <= bs / layout.seq_len
    # Against the requested density: < 1 block per side from rounding the width, < 1 from the tiles.
    assert abs(ours - cfg.density) <= 3 * bs / layout.seq_len


@pytest.mark.parametrize(
    "cfg, layout",
    [
        (WAN21_T2V_720P, VideoLayout(num_frames=21, tokens_per_frame=3600)),
        (HUNYUAN_T2V_720P, VideoLayout(num_frames=33, tokens_per_frame=3600, text_placement="last",
                                       num_text_tokens=256)),
        (COGVIDEOX15_I2V, VideoLayout(num_frames=11, tokens_per_frame=4080, text_placement="first",
                                      num_text_tokens=226)),
    ],
    ids=["wan720p", "hunyuan720p", "cog1.5"],
)
@pytest.mark.parametrize("density", [0.3, 0.25, 0.2])
def test_real_shape_density_matches_config(cfg, layout, density):
    """At the real shapes (tile level only, never N × N) the kept fraction is the config's (no sink)."""
    cfg = dataclasses.replace(cfg, density=density, first_frame_sink=False)
    geom = TileGeometry(layout=layout, block_size=cfg.block_size, first_frame_sink=False)
    got = float(mask_density(geom, band_block_mask(geom, jnp.array([layout.num_text_tokens]),
                                                   cfg.band_blocks(layout)))[0])
    assert abs(got - density) <= 3 * cfg.block_size / layout.seq_len


@given(
    t=st.integers(1, 4),
    f=st.integers(1, 30),
    placement=st.sampled_from(["first", "last"]),
    ctx=st.integers(1, 40),
    valid_frac=st.floats(0.0, 1.0),
    c=st.integers(1, 3),
    temporal=st.booleans(),
)
def test_fuzz_no_query_sees_a_padding_key(t, f, placement, ctx, valid_frac, c, temporal):
    """Per element, not per tile: the padding text slots are masked in every row of the SVG1 mask, and
    every other key of a kept tile stays visible (the tile mask is unchanged elsewhere)."""
    layout = make_layout(t, f, placement, ctx)
    valid_len = jnp.array([round(valid_frac * ctx), ctx], jnp.int32)
    geom = TileGeometry(layout=layout, block_size=16, first_frame_sink=False)
    heads = jnp.full((2, 1), temporal)
    mask = np.asarray(head_element_mask(geom, valid_len, heads, c))[:, 0]  # [B, N, N]
    pad = np.asarray(key_padding(layout, valid_len))
    keys = np.arange(layout.seq_len)
    for b in range(2):
        padding = (keys >= pad[b, 0]) & (keys < pad[b, 1])
        assert padding.sum() == ctx - int(valid_len[b])
        assert not mask[b][:, padding].any()
    unpadded = np.asarray(head_element_mask(geom, jnp.array([ctx, ctx], jnp.int32), heads, c))[1, 0]
    np.testing.assert_array_equal(mask[1], unpadded)  # a full prompt: no key masked beyond the tiles
