"""SVG1: config validation, profiling, layout transformation and svg1_attention against its oracle."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_utils import random_qkv, require_hopper

from svg_jax.layout import TextTokens, VideoLayout
from svg_jax.placement import place_heads, placement_sources
from svg_jax.svg1 import (
    PRESETS,
    SVG1Config,
    profile_heads,
    svg1_attention,
    svg1_attention_reference,
)

SMALL = SVG1Config(density=0.3, block_size=16, band_rounding="ceil")


def layouts():
    def lay(placement="none", ctx=0):
        return VideoLayout(num_frames=4, tokens_per_frame=40, text_placement=placement, num_text_tokens=ctx)

    return [
        pytest.param(lay(), None, id="none"),
        pytest.param(lay("first", 19), None, id="first"),
        pytest.param(lay("last", 24), TextTokens("last", 24, jnp.array([5, 24])), id="last-padded"),
    ]


# --- config and validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_outside_unit_interval_raises(density):
    with pytest.raises(ValueError, match="density"):
        SVG1Config(density=density)


def test_config_validation_and_schedule():
    assert SVG1Config(density=1.0).density == 1.0
    with pytest.raises(ValueError, match="block_size"):
        SVG1Config(density=0.3, block_size=100)
    with pytest.raises(ValueError, match="num_sampled_rows"):
        SVG1Config(density=0.3, num_sampled_rows=0)
    with pytest.raises((ValueError, TypeError), match="band_rounding"):  # TypeError under jaxtyping checks
        SVG1Config(density=0.3, band_rounding="round")
    cfg = SVG1Config(density=0.3, dense_steps=2, dense_layers=1)
    assert cfg.is_dense(1, 5) and cfg.is_dense(7, 0) and not cfg.is_dense(2, 1)
    hash(cfg)  # static jit argument


def test_presets_match_official_scripts():
    want = {  # (density, dense steps, dense layers, sink, rounding) — svg_methods.md §1.4
        "wan2.1-t2v-14b-720p": (0.30, 10, 1, True, "ceil"),
        "wan2.1-i2v-14b-720p": (0.30, 14, 1, True, "ceil"),
        "wan2.1-i2v-14b-480p": (0.30, 8, 1, True, "ceil"),
        "hunyuanvideo-t2v-720p": (0.25, 5, 1, False, "floor"),
        "hunyuanvideo-t2v-480p": (0.20, 2, 0, False, "floor"),
        "cogvideox1.5-5b-i2v": (0.25, 10, 2, False, "floor"),
    }
    got = {
        name: (c.density, c.dense_steps, c.dense_layers, c.first_frame_sink, c.band_rounding)
        for name, c in PRESETS.items()
    }
    assert got == want
    assert all(c.block_size == 128 for c in PRESETS.values())


def test_bad_layout_raises():
    layout = VideoLayout(num_frames=4, tokens_per_frame=40)
    q, k, v = random_qkv(0, 1, 161, 161, 2, 16)  # T·F + text = 160 ≠ 161
    with pytest.raises(ValueError, match="does not match the layout"):
        svg1_attention(q, k, v, config=SMALL, layout=layout, key=jax.random.PRNGKey(0))
    text_layout = VideoLayout(num_frames=4, tokens_per_frame=40, text_placement="last", num_text_tokens=1)
    with pytest.raises(ValueError, match="text must match the layout"):
        svg1_attention(
            q, k, v, config=SMALL, layout=text_layout, key=jax.random.PRNGKey(0), text=TextTokens("first", 1)
        )


# --- profiling ---------------------------------------------------------------------------------------


def synthetic_heads(t: int, f: int, d: int, *, favour: list[list[str]], sharpness: float = 8.0):
    """q/k whose logits favour same-frame ('spatial') or same-position ('temporal') token pairs."""
    pos = np.arange(t * f)
    frame, spot = pos // f, pos % f
    rng = np.random.default_rng(0)
    b, h = len(favour), len(favour[0])
    q = np.zeros((b, t * f, h, d), np.float32)
    k = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            code = frame if favour[bi][hi] == "spatial" else spot
            q[bi, :, hi, :] = sharpness * np.eye(d)[code % d] * np.sqrt(d)
            k[bi, :, hi, :] = np.eye(d)[code % d]
    v = rng.standard_normal(q.shape).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def test_profiler_picks_spatial_and_temporal_heads():
    """Heads favouring same-frame pairs are spatial, same-position pairs temporal; output = masked oracle."""
    t, f, d = 8, 16, 32
    layout = VideoLayout(num_frames=t, tokens_per_frame=f)
    q, k, v = synthetic_heads(t, f, d, favour=[["spatial", "temporal"], ["temporal", "spatial"]])
    cfg = SVG1Config(density=0.3, block_size=16)
    out, stats = svg1_attention(
        q, k, v, config=cfg, layout=layout, key=jax.random.PRNGKey(3), implementation="xla"
    )
    np.testing.assert_array_equal(np.asarray(stats.head_choice), [[0, 1], [1, 0]])
    mse_s, mse_t = stats.mse_spatial, stats.mse_temporal
    assert bool(jnp.all(jnp.where(stats.head_choice == 1, mse_t < mse_s, mse_s <= mse_t)))
    assert stats.sampled_rows.shape == (64,)
    ref = svg1_attention_reference(q, k, v, stats.head_choice, config=cfg, layout=layout)
    assert float(jnp.max(jnp.abs(out - ref))) <= 1e-5


def test_profiler_samples_the_whole_video_not_the_first_10k_rows():
    layout = VideoLayout(num_frames=21, tokens_per_frame=3600, text_placement="first", num_text_tokens=8)
    q, k, v = random_qkv(0, 1, layout.seq_len, layout.seq_len, 1, 16)
    cfg = PRESETS["wan2.1-t2v-14b-720p"]
    *_, rows = profile_heads(q, k, v, config=cfg, layout=layout, key=jax.random.PRNGKey(0))
    rows = np.asarray(rows)
    assert rows.min() >= 8 and rows.max() < layout.seq_len
    assert (rows > 10_000).mean() > 0.5  # the official code never samples past row 10,000


# --- layout transformation ---------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["xla", "xla_select", "pallas_triton"])
@pytest.mark.parametrize("placement", ["none", "first", "last"])
def test_placement_round_trip_and_definition(implementation, placement):
    t, f, ctx = 3, 10, 5
    layout = VideoLayout(
        num_frames=t,
        tokens_per_frame=f,
        text_placement=placement,
        num_text_tokens=0 if placement == "none" else ctx,
    )
    n = layout.seq_len
    x = jax.random.normal(jax.random.PRNGKey(1), (2, n, 3, 16))
    temporal = jnp.array([[True, False, True], [False, False, True]])
    (placed,) = place_heads((x,), layout, temporal, implementation=implementation, interpret=True)
    (back,) = place_heads(
        (placed,), layout, temporal, inverse=True, implementation=implementation, interpret=True
    )
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
    vs = layout.video_start
    xn, pn = np.asarray(x), np.asarray(placed)
    for fr in range(t):
        for p in range(f):
            np.testing.assert_array_equal(pn[0, vs + p * t + fr, 0], xn[0, vs + fr * f + p, 0])  # temporal
            np.testing.assert_array_equal(pn[0, vs + fr * f + p, 1], xn[0, vs + fr * f + p, 1])  # spatial
    text = [i for i in range(n) if not vs <= i < vs + t * f]
    np.testing.assert_array_equal(pn[:, text], xn[:, text])  # text never moves


def test_placement_sources_are_permutations():
    layout = VideoLayout(num_frames=5, tokens_per_frame=7, text_placement="first", num_text_tokens=3)
    temporal = jnp.array([[True, False]])
    for inverse in (False, True):
        src = np.asarray(placement_sources(layout, temporal, inverse=inverse))
        for row in src.reshape(-1, layout.seq_len):
            np.testing.assert_array_equal(np.sort(row), np.arange(layout.seq_len))


# --- svg1_attention ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, text", layouts())
def test_svg1_attention_matches_masked_dense_reference_xla(layout, text):
    q, k, v = random_qkv(7, 2, layout.seq_len, layout.seq_len, 3, 32)
    cfg = dataclasses.replace(SMALL, first_frame_sink=layout.text_placement == "none")
    out, stats = svg1_attention(
        q,
        k,
        v,
        config=cfg,
        layout=layout,
        key=jax.random.PRNGKey(1),
        text=text,
        implementation="xla",
        permute_implementation="xla",
    )
    ref = svg1_attention_reference(q, k, v, stats.head_choice, config=cfg, layout=layout, text=text)
    assert float(jnp.max(jnp.abs(out - ref))) <= 1e-5
    assert stats.head_choice.shape == (2, 3) and stats.density.shape == (2,)
    assert bool(jnp.all((stats.density > 0) & (stats.density <= 1)))


@pytest.mark.parametrize("layout, text", layouts()[1:])
def test_svg1_attention_kernels_match_reference(interpret, layout, text):
    """The Pallas band kernel and the Pallas gather, interpret mode on CPU / compiled on GPU."""
    q, k, v = random_qkv(8, 2, layout.seq_len, layout.seq_len, 2, 32)
    out, stats = svg1_attention(
        q,
        k,
        v,
        config=SMALL,
        layout=layout,
        key=jax.random.PRNGKey(2),
        text=text,
        implementation="pallas_triton",
        permute_implementation="pallas_triton",
        interpret=interpret,
    )
    ref = svg1_attention_reference(q, k, v, stats.head_choice, config=SMALL, layout=layout, text=text)
    assert float(jnp.max(jnp.abs(out - ref))) <= 1e-5


def test_jit_without_host_transfers():
    layout = VideoLayout(num_frames=4, tokens_per_frame=40, text_placement="last", num_text_tokens=24)
    q, k, v = random_qkv(9, 1, layout.seq_len, layout.seq_len, 2, 16)
    valid_len = jnp.array([11], jnp.int32)
    key = jax.random.PRNGKey(4)

    @jax.jit
    def step(q, k, v, valid_len, key):
        return svg1_attention(
            q, k, v, config=SMALL, layout=layout, key=key, text=TextTokens("last", 24, valid_len)
        )

    step(q, k, v, valid_len, key)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        out, stats = step(q, k, v, valid_len, key)
        out.block_until_ready()
    assert out.shape == q.shape and stats.head_choice.dtype == jnp.int32


def test_bf16_runs_and_stays_close():
    layout = VideoLayout(num_frames=4, tokens_per_frame=40)
    q, k, v = random_qkv(10, 1, layout.seq_len, layout.seq_len, 2, 32, jnp.bfloat16)
    out, stats = svg1_attention(q, k, v, config=SMALL, layout=layout, key=jax.random.PRNGKey(0))
    ref = svg1_attention_reference(q, k, v, stats.head_choice, config=SMALL, layout=layout)
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - np.asarray(ref, np.float32)).max()
    assert err <= 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("first_frame_sink", [False, True])
def test_gpu_svg1_on_hopper_runs_mosaic_128_tiles_exactly(first_frame_sink):
    """'auto' on an H100 runs the Mosaic kernel on whole 128×128 mask tiles: same result as the oracle."""
    require_hopper()
    layout = VideoLayout(num_frames=6, tokens_per_frame=300)  # N = 1800, not a tile multiple
    cfg = SVG1Config(density=0.3, first_frame_sink=first_frame_sink, band_rounding="ceil")
    q, k, v = random_qkv(21, 1, layout.seq_len, layout.seq_len, 4, 128, jnp.bfloat16)
    run = jax.jit(
        lambda q, k, v, impl: svg1_attention(
            q, k, v, config=cfg, layout=layout, key=jax.random.key(0), implementation=impl
        ),
        static_argnums=3,
    )
    out, stats = run(q, k, v, "auto")
    triton, _ = run(q, k, v, "pallas_triton")
    ref = svg1_attention_reference(q, k, v, stats.head_choice, config=cfg, layout=layout)
    for got in (out, triton):
        err = float(
            jnp.linalg.norm((got - ref).astype(jnp.float32)) / jnp.linalg.norm(ref.astype(jnp.float32))
        )
        assert err < 2e-2, err
