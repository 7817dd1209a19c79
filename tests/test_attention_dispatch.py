"""Attention dispatch in the tiny Wan model: exactness at density 1 / top-p 1, real settings under jit,
the dense schedule, state round-trips, no recompilation per step, and config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from wan_tiny import TINY

from svg_jax import (
    AttentionConfig,
    AttentionState,
    AttentionStats,
    SVG1Config,
    SVG2Config,
    VideoLayout,
    init_attention_state,
    make_attn_fn,
)
from svg_jax.models import WanTransformer3DModel

# Tiny Wan (tests/wan_tiny.py): 4 frames of 8×8 latents → T=4 frames of 4×4=16 tokens, N=64.
FRAMES, SIZE = 4, 8
LAYOUT = VideoLayout(num_frames=FRAMES, tokens_per_frame=(SIZE // 2) ** 2)
HEADS, HEAD_DIM, LAYERS = TINY.num_attention_heads, TINY.attention_head_dim, TINY.num_layers

# Exact settings: a density-1 band covers every tile, top-p 1 keeps every cluster pair. The narrow
# profiling band makes the spatial and temporal candidates differ, so temporal heads (token-major
# placement) occur too.
SVG1_EXACT = SVG1Config(
    density=1.0,
    block_size=16,
    num_sampled_rows=8,
    first_frame_sink=True,
    band_rounding="ceil",
    profile_band_frames=1.0,
)
SVG2_EXACT = SVG2Config(
    num_q_clusters=4,
    num_k_clusters=8,
    top_p=1.0,
    min_k_cluster_ratio=0.0,
    kmeans_init_iters=4,
    kmeans_warm_iters=1,
    dense_steps=0,
    dense_layers=0,
)
# Real settings, with the first layer dense and two dense warm-up steps.
SVG1_REAL = SVG1Config(
    density=0.3,
    block_size=16,
    num_sampled_rows=8,
    first_frame_sink=True,
    band_rounding="ceil",
    profile_band_frames=2.0,
    dense_steps=2,
    dense_layers=1,
)
SVG2_REAL = SVG2Config(
    num_q_clusters=4,
    num_k_clusters=8,
    top_p=0.7,
    min_k_cluster_ratio=0.25,
    kmeans_init_iters=8,
    kmeans_warm_iters=2,
    dense_steps=2,
    dense_layers=1,
)


def _inputs(batch: int = 1):
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (batch, TINY.in_channels, FRAMES, SIZE, SIZE))
    ctx = jax.random.normal(keys[1], (batch, 12, TINY.text_dim))
    return x, jnp.full((batch,), 500, jnp.int32), ctx


@pytest.fixture(scope="module")
def model():
    return nnx.jit(lambda: WanTransformer3DModel(TINY, rngs=nnx.Rngs(0), dtype=jnp.float32))()


@pytest.fixture(scope="module")
def dense_out(model):
    x, t, ctx = _inputs()
    return jax.jit(lambda m: m(x, t, ctx))(model)


def _state(config: AttentionConfig, batch: int = 1) -> AttentionState:
    return init_attention_state(
        config, num_layers=LAYERS, batch=batch, heads=HEADS, head_dim=HEAD_DIM, key=jax.random.key(7)
    )


def _runner(config: AttentionConfig, phase, trace_log: list | None = None):
    """A jitted model call with the config static (closed over) and the step traced."""

    def run(model, x, t, ctx, state, step):
        if trace_log is not None:
            trace_log.append(1)  # runs once per trace
        attn_fn = make_attn_fn(config, layout=LAYOUT, step=step, phase=phase)
        return model(x, t, ctx, attn_fn=attn_fn, attn_state=state, return_attention=True)

    return jax.jit(run)


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(AttentionConfig(method="svg1", svg1=SVG1_EXACT), id="svg1-density1"),
        pytest.param(AttentionConfig(method="svg2", svg2=SVG2_EXACT), id="svg2-top_p1"),
    ],
)
def test_full_density_reproduces_dense(model, dense_out, config):
    x, t, ctx = _inputs()
    state = _state(config)
    out, new_state, stats = _runner(config, "sparse")(model, x, t, ctx, state, jnp.int32(5))
    assert not bool(stats.dense.any())  # every layer really took the sparse path
    np.testing.assert_allclose(stats.density, 1.0, rtol=1e-6)
    assert _rel(out, dense_out) <= 1e-5, _rel(out, dense_out)
    if config.method == "svg1":
        assert bool((stats.head_choice == 1).any())  # the temporal placement round trip is covered
    if config.method == "svg2":
        np.testing.assert_allclose(stats.estimated_recall, 1.0, rtol=1e-6)
        assert bool(new_state.svg2.warm.all())


@pytest.mark.parametrize("method", ["svg1", "svg2"])
@pytest.mark.parametrize("placement, ctx", [("first", 20), ("last", 40)])
def test_full_density_with_text_tokens_is_dense(method, placement, ctx):
    """CogVideoX/HunyuanVideo layouts: density 1 must cover the video corners the text budget leaves."""
    layout = VideoLayout(num_frames=4, tokens_per_frame=32, text_placement=placement, num_text_tokens=ctx)
    config = AttentionConfig(method=method, svg1=SVG1_EXACT, svg2=SVG2_EXACT)
    q, k, v = (
        jax.random.normal(kk, (1, layout.seq_len, HEADS, 16)) for kk in jax.random.split(jax.random.key(3), 3)
    )
    state = init_attention_state(
        config, num_layers=1, batch=1, heads=HEADS, head_dim=16, key=jax.random.key(0)
    )
    fn = jax.jit(make_attn_fn(config, layout=layout, step=0))  # eager SVG1 is slow
    out, _, stats = fn(q, k, v, layer=jnp.int32(0), state=jax.tree.map(lambda a: a[0], state))
    np.testing.assert_allclose(stats.density, 1.0, rtol=1e-6)
    ref = jax.nn.dot_product_attention(q, k, v)
    assert _rel(out, ref) <= 1e-5, _rel(out, ref)


@pytest.mark.parametrize("placement", ["first", "last"])
def test_dense_masks_padded_text_keys(placement):
    """Dense attention with HunyuanVideo-style padding: padded text keys are masked for every query."""
    ctx, video = 6, 10
    layout = VideoLayout(num_frames=2, tokens_per_frame=5, text_placement=placement, num_text_tokens=ctx)
    q, k, v = (jax.random.normal(kk, (2, video + ctx, 2, 8)) for kk in jax.random.split(jax.random.key(4), 3))
    valid_len = jnp.asarray([4, 6], jnp.int32)
    text = layout.text_tokens(valid_len)
    fn = make_attn_fn(AttentionConfig(method="dense"), layout=layout, step=0, text=text)
    out, _, _ = fn(q, k, v, layer=jnp.int32(0), state=None)
    start = 0 if placement == "first" else video
    pos = jnp.arange(video + ctx)
    pad = (pos[None] >= start + valid_len[:, None]) & (pos[None] < start + ctx)  # [B, M] padded keys
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
    p = jax.nn.softmax(jnp.where(pad[:, None, None, :], -jnp.inf, s), axis=-1)
    ref = jnp.einsum("bhqk,bkhd->bqhd", p, v)
    assert _rel(out, ref) <= 1e-5, _rel(out, ref)
    full = make_attn_fn(AttentionConfig(method="dense"), layout=layout, step=0)(
        q, k, v, layer=jnp.int32(0), state=None
    )[0]
    assert _rel(full, ref) > 1e-3  # without valid_len nothing is masked


def test_svg1_real_settings_end_to_end(model):
    config = AttentionConfig(method="svg1", svg1=SVG1_REAL)
    x, t, ctx = _inputs()
    state = jax.device_put(_state(config))
    step = jax.device_put(jnp.int32(3))
    fn = _runner(config, "sparse")
    with jax.transfer_guard("disallow"):
        out, new_state, stats = fn(model, x, t, ctx, state, step)
        out.block_until_ready()
    assert out.shape == x.shape and bool(jnp.isfinite(out).all())
    assert isinstance(stats, AttentionStats) and stats.estimated_recall is None
    assert stats.dense.shape == (LAYERS,) and stats.density.shape == (LAYERS, 1, HEADS)
    np.testing.assert_array_equal(stats.dense, [True, False])  # dense_layers=1
    np.testing.assert_array_equal(stats.head_choice[0], -1)
    assert set(np.unique(stats.head_choice[1])) <= {0, 1}
    assert float(stats.density[1].max()) < 1.0 and float(stats.density[0].min()) == 1.0
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert bool((jax.random.key_data(new_state.key) == jax.random.key_data(state.key)).all())


def test_svg2_real_settings_warm_second_call_and_no_recompile(model):
    config = AttentionConfig(method="svg2", svg2=SVG2_REAL)
    x, t, ctx = _inputs()
    state = jax.device_put(_state(config))
    steps = [jax.device_put(jnp.int32(s)) for s in (2, 3)]
    traces: list = []
    fn = _runner(config, "sparse", traces)
    with jax.transfer_guard("disallow"):
        out1, state1, stats1 = fn(model, x, t, ctx, state, steps[0])
        out2, state2, stats2 = fn(model, x, t, ctx, state1, steps[1])
        out2.block_until_ready()
    assert len(traces) == 1 and fn._cache_size() == 1  # the step is data: one executable per phase
    for out in (out1, out2):
        assert out.shape == x.shape and bool(jnp.isfinite(out).all())
    assert stats1.density.shape == (LAYERS, 1, HEADS) and stats1.q_kmeans_iters.shape == (LAYERS,)
    np.testing.assert_array_equal(stats1.dense, [True, False])
    np.testing.assert_array_equal(state1.svg2.warm, [False, True])  # the dense layer never clusters
    assert [a.shape for a in jax.tree.leaves(state1)] == [a.shape for a in jax.tree.leaves(state)]
    # Cold start (≤ kmeans_init_iters) then warm start (≤ kmeans_warm_iters) in the sparse layer.
    assert 1 <= int(stats1.q_kmeans_iters[1]) <= SVG2_REAL.kmeans_init_iters
    assert 1 <= int(stats2.q_kmeans_iters[1]) <= SVG2_REAL.kmeans_warm_iters
    assert int(stats1.q_kmeans_iters[0]) == 0 and float(stats1.estimated_recall[0].min()) == 1.0
    assert stats1.query_tiling.shape == (LAYERS,) and int(stats1.query_tiling[0]) == -1  # dense: -1
    assert int(stats1.query_tiling[1]) in (0, 1)  # a CPU tiling (fixed or aligned)
    assert 0.0 < float(stats2.density[1].max()) < 1.0
    assert not np.allclose(state2.svg2.q_centroids[1], 0.0)


def test_traced_step_without_phase_runs_the_warm_up_dense(model, dense_out):
    """``phase=None`` with a traced step: the dense warm-up is a ``lax.cond`` in one executable."""
    config = AttentionConfig(method="svg1", svg1=SVG1_REAL)
    x, t, ctx = _inputs()
    state = _state(config)
    fn = _runner(config, None)
    out0, _, stats0 = fn(model, x, t, ctx, state, jnp.int32(0))
    out5, _, stats5 = fn(model, x, t, ctx, state, jnp.int32(5))
    assert fn._cache_size() == 1
    np.testing.assert_array_equal(stats0.dense, [True, True])
    np.testing.assert_array_equal(stats5.dense, [True, False])
    assert _rel(out0, dense_out) <= 1e-5
    assert _rel(out5, dense_out) > 1e-5  # the sparse layer changes the output


def test_static_phases_and_dense_method():
    dense_cfg = AttentionConfig(method="dense")
    q = jax.random.normal(jax.random.key(0), (1, LAYOUT.seq_len, HEADS, HEAD_DIM))
    out, st, stats = make_attn_fn(dense_cfg, layout=None, step=0)(q, q, q, layer=jnp.int32(0), state=None)
    assert st is None and bool(stats.dense) and stats.head_choice is None
    # A Python-int step picks the phase: step 0 < dense_steps=2 → dense even in a sparse layer.
    config = AttentionConfig(method="svg1", svg1=SVG1_REAL)
    state = jax.tree.map(lambda a: a[1], _state(config))
    _, _, stats = make_attn_fn(config, layout=LAYOUT, step=0)(q, q, q, layer=jnp.int32(1), state=state)
    assert bool(stats.dense) and int(stats.head_choice.min()) == -1
    _, _, stats = make_attn_fn(config, layout=LAYOUT, step=2)(q, q, q, layer=jnp.int32(1), state=state)
    assert not bool(stats.dense)
    assert config.phase(1) == "dense" and config.phase(2) == "sparse" and dense_cfg.phase(9) == "dense"
    assert (config.dense_steps, config.dense_layers) == (2, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="svg3"), r"AttentionConfig.method must be one of|svg3"),
        (dict(method="svg1"), "AttentionConfig.svg1 is required when method='svg1'"),
        (dict(method="svg2", svg1=SVG1_REAL), "AttentionConfig.svg2 is required when method='svg2'"),
        (dict(method="svg1", svg1=SVG2_REAL), r"AttentionConfig.svg1 must be an SVG1Config|svg1"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    # Under `pytest --jaxtyping-packages=svg_jax,...` the Literal/class annotations reject wrong types
    # first (a TypeError naming the parameter); plain runs reach __post_init__'s ValueError.
    with pytest.raises((ValueError, TypeError), match=match):
        AttentionConfig(**kwargs)


def test_bad_arguments_name_the_field():
    config = AttentionConfig(method="svg2", svg2=SVG2_REAL)
    with pytest.raises((ValueError, TypeError), match=r"phase must be 'dense', 'sparse' or None|phase"):
        make_attn_fn(config, layout=LAYOUT, step=3, phase="warm")
    with pytest.raises(ValueError, match="phase='sparse' disagrees with step=1: dense_steps=2"):
        make_attn_fn(config, layout=LAYOUT, step=1, phase="sparse")
    with pytest.raises(ValueError, match="layout is required for method='svg2'"):
        make_attn_fn(config, step=3)
    too_many = AttentionConfig(method="svg2", svg2=dataclasses.replace(SVG2_REAL, num_k_clusters=65))
    with pytest.raises(ValueError, match="num_k_clusters=65 exceeds the 64 video tokens"):
        make_attn_fn(too_many, layout=LAYOUT, step=3)
    with pytest.raises(ValueError, match="init_attention_state: heads must be a positive int; got 0"):
        init_attention_state(config, num_layers=2, batch=1, heads=0, head_dim=12, key=jax.random.key(0))
    q = jnp.zeros((1, LAYOUT.seq_len, HEADS, HEAD_DIM))
    fn = make_attn_fn(config, layout=LAYOUT, step=3)
    with pytest.raises(ValueError, match="attn_state must be the AttentionState"):
        fn(q, q, q, layer=jnp.int32(1), state=None)
    no_cache = AttentionState(key=jax.random.key(0))
    with pytest.raises(ValueError, match="attn_state.svg2 is None"):
        fn(q, q, q, layer=jnp.int32(1), state=no_cache)
