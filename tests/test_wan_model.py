"""WanConfig, the attention injection protocol, scan over layers, dtype policy and input validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from wan_tiny import TINY, TINY_I2V

from svg_jax.models import WAN_PRESETS, WanConfig, WanTransformer3DModel, dense_attention
from svg_jax.models.rope import apply_rope, wan_rope


def make(config: WanConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=jnp.float32)


def inputs(config: WanConfig, *, batch=1, frames=2, size=8, text_len=12, image_len=5):
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (batch, config.in_channels, frames, size, size))
    ctx = jax.random.normal(keys[1], (batch, text_len, config.text_dim))
    image = None
    if config.image_dim is not None:
        image = jax.random.normal(keys[2], (batch, image_len, config.image_dim))
    return x, jnp.full((batch,), 500, jnp.int32), ctx, image


@jax.jit
def forward(model, x, t, ctx):
    return model(x, t, ctx)


@pytest.fixture(scope="module")
def tiny():
    return nnx.jit(lambda: make(TINY))()  # one compiled init instead of hundreds of eager ops


# --- WanConfig ---------------------------------------------------------------------------------------


def test_presets_match_released_architectures():
    assert set(WAN_PRESETS) >= {
        "wan2.1-t2v-1.3b",
        "wan2.1-t2v-14b",
        "wan2.1-i2v-14b-480p",
        "wan2.1-i2v-14b-720p",
    }
    small = WAN_PRESETS["wan2.1-t2v-1.3b"]
    assert (small.inner_dim, small.ffn_dim, small.num_layers, small.is_i2v) == (1536, 8960, 30, False)
    i2v = WAN_PRESETS["wan2.1-i2v-14b-720p"]
    assert (i2v.inner_dim, i2v.in_channels, i2v.image_dim, i2v.added_kv_proj_dim) == (5120, 36, 1280, 5120)
    assert WAN_PRESETS["wan2.1-i2v-14b-480p"] == i2v
    assert len({hash(c) for c in WAN_PRESETS.values()}) == 4  # hashable (a static jit argument)
    with pytest.raises(ValueError, match="unknown Wan preset 'wan9'.*wan2.1-t2v-14b"):
        WanConfig.preset("wan9")


def test_from_diffusers_config_round_trip():
    for config in WAN_PRESETS.values():
        raw = config.to_diffusers_config()
        assert raw["_class_name"] == "WanTransformer3DModel" and raw["patch_size"] == [1, 2, 2]
        assert WanConfig.from_diffusers_config(raw) == config
    raw = dict(TINY.to_diffusers_config(), out_channels=None, _diffusers_version="0.42.1")
    assert WanConfig.from_diffusers_config(raw).out_channels == TINY.in_channels  # diffusers: out or in


def test_from_diffusers_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"does not know: \['window_size'\]"):
        WanConfig.from_diffusers_config(dict(TINY.to_diffusers_config(), window_size=[-1, -1]))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(num_layers=0), ValueError, "num_layers must be a positive int; got 0"),
        (dict(patch_size=(1, 0, 2)), ValueError, r"patch_size must be 3 positive ints"),
        (dict(attention_head_dim=7), ValueError, "even RoPE parts"),
        (dict(qk_norm="rms_norm"), NotImplementedError, "rms_norm_across_heads"),
        (dict(added_kv_proj_dim=24), ValueError, "added_kv_proj_dim needs image_dim"),
        (
            dict(image_dim=8, added_kv_proj_dim=16),
            ValueError,
            "must equal num_attention_heads·attention_head_dim = 24",
        ),
        (dict(pos_embed_seq_len=10), ValueError, "pos_embed_seq_len needs image_dim"),
        (dict(eps=0.0), ValueError, "eps must be a positive float"),
    ],
)
def test_config_validates_itself(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(TINY, **change)


# --- attention injection protocol --------------------------------------------------------------------


def test_default_attention_is_dense(tiny):
    x, t, ctx, _ = inputs(TINY)
    out = forward(tiny, x, t, ctx)
    explicit = jax.jit(lambda m: m(x, t, ctx, attn_fn=dense_attention))(tiny)
    np.testing.assert_allclose(out, explicit, rtol=1e-5, atol=1e-6)  # separately compiled: fusion may differ
    out2, state, stats = jax.jit(lambda m: m(x, t, ctx, return_attention=True))(tiny)
    np.testing.assert_allclose(out, out2, rtol=1e-5, atol=1e-6)
    assert state is None and stats == {}


def test_attn_fn_gets_layer_and_state_slices_under_jit(tiny):
    """layer is traced (int32), state is sliced per layer, new state and stats are stacked over layers."""
    x, t, ctx, _ = inputs(TINY)
    num_layers = TINY.num_layers

    def counting_attention(q, k, v, *, layer, state):
        out, _, _ = dense_attention(q, k, v, layer=layer, state=None)
        assert isinstance(layer, jax.core.Tracer) and layer.dtype == jnp.int32 and layer.shape == ()
        new_state = {"calls": state["calls"] + 1, "layer": layer + state["layer"]}
        return out, new_state, {"q_rms": jnp.sqrt(jnp.mean(jnp.square(q))), "shape": jnp.array(q.shape)}

    state = {"calls": jnp.zeros((num_layers,), jnp.int32), "layer": jnp.full((num_layers,), 10, jnp.int32)}
    run = jax.jit(lambda m, s: m(x, t, ctx, attn_fn=counting_attention, attn_state=s, return_attention=True))
    out, new_state, stats = run(tiny, state)
    np.testing.assert_array_equal(new_state["calls"], [1, 1])
    np.testing.assert_array_equal(new_state["layer"], [10, 11])
    assert stats["q_rms"].shape == (num_layers,)
    np.testing.assert_array_equal(stats["shape"], [[1, 32, 2, 12]] * num_layers)  # [B, N, H, D]
    np.testing.assert_allclose(out, forward(tiny, x, t, ctx), rtol=1e-6, atol=1e-6)


def test_attn_fn_can_branch_on_layer(tiny):
    """A per-layer choice (here: zero attention in layer 1 only) must use traced ops, and takes effect."""
    x, t, ctx, _ = inputs(TINY)

    def skip_layer_1(q, k, v, *, layer, state):
        out, state, stats = dense_attention(q, k, v, layer=layer, state=state)
        return jnp.where(layer == 1, jnp.zeros_like(out), out), state, stats

    dense = forward(tiny, x, t, ctx)
    skipped = jax.jit(lambda m: m(x, t, ctx, attn_fn=skip_layer_1))(tiny)
    assert np.abs(np.asarray(dense) - np.asarray(skipped)).max() > 1e-3


def test_attn_fn_sees_q_k_after_qk_norm_and_rope(tiny):
    """The diffusers order: to_q → norm_q (across heads) → split heads → RoPE, then attention."""
    attn = tiny.block(0).attn1
    n = jax.random.normal(jax.random.key(3), (1, 32, TINY.inner_dim))
    rope = wan_rope(TINY.attention_head_dim, (2, 4, 4), max_seq_len=TINY.rope_max_seq_len)
    seen = {}

    def capture(q, k, v, *, layer, state):
        seen.update(q=q, k=k, v=v)
        return dense_attention(q, k, v, layer=layer, state=state)

    attn.self_attention(n, rope, attn_fn=capture, layer=jnp.int32(0), state=None)
    split = lambda a: a.reshape(1, 32, TINY.num_attention_heads, TINY.attention_head_dim)  # [B, N, H, D]
    np.testing.assert_allclose(seen["q"], apply_rope(split(attn.norm_q(attn.to_q(n))), *rope), rtol=1e-6)
    np.testing.assert_allclose(seen["k"], apply_rope(split(attn.norm_k(attn.to_k(n))), *rope), rtol=1e-6)
    np.testing.assert_allclose(seen["v"], split(attn.to_v(n)), rtol=1e-6)


def test_attn_state_needs_leading_layer_axis(tiny):
    x, t, ctx, _ = inputs(TINY)
    with pytest.raises(ValueError, match="leading num_layers = 2 axis; got shape \\(3,\\)"):
        tiny(x, t, ctx, attn_state={"c": jnp.zeros((3,))})


# --- scan over layers, dtype policy ----------------------------------------------------------------


def _jaxpr_size(num_layers: int) -> tuple[int, list[int]]:
    config = dataclasses.replace(TINY, num_layers=num_layers)
    model = nnx.eval_shape(lambda: make(config))
    x, t, ctx, _ = inputs(config)
    jaxpr = jax.make_jaxpr(lambda m: m(x, t, ctx))(model)
    scans = [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]
    return len(jaxpr.eqns), scans


def test_blocks_run_in_one_scan_so_the_graph_does_not_grow_with_depth():
    size_2, scans_2 = _jaxpr_size(2)
    size_12, scans_12 = _jaxpr_size(12)
    assert scans_2 == [2] and scans_12 == [12]
    assert size_2 == size_12


def test_float32_islands_in_a_bf16_model():
    model = nnx.eval_shape(
        lambda: WanTransformer3DModel(
            TINY_I2V, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
        )
    )
    islands = (
        "scale_shift_table",
        "blocks.norm2.",
        "time_embedder.",
        "image_embedder.norm1.",
        "image_embedder.norm2.",
    )
    for path, var in nnx.to_flat_state(nnx.state(model)):
        name = ".".join(map(str, path))
        expected = jnp.float32 if any(s in name for s in islands) else jnp.bfloat16
        assert var.dtype == expected, name


# --- bad input -------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_with_the_fix(tiny):
    x, t, ctx, _ = inputs(TINY)
    with pytest.raises(ValueError, match="in_channels=4 channels; got 3"):
        tiny(x[:, :3], t, ctx)
    with pytest.raises(ValueError, match=r"H=7 must be divisible by patch_size \(1, 2, 2\)"):
        tiny(x[:, :, :, :7], t, ctx)
    with pytest.raises(ValueError, match=r"W=5 must be divisible"):
        tiny(x[..., :5], t, ctx)
    # Under `pytest --jaxtyping-packages=svg_jax,...` the " B" annotation rejects it first (a TypeError).
    with pytest.raises((ValueError, TypeError), match=r"timestep|0 dimensions"):
        tiny(x, t[0], ctx)
    with pytest.raises(ValueError, match="text_dim=16"):
        tiny(x, t, ctx[..., :8])
    with pytest.raises(ValueError, match="must be None for a model without image_dim"):
        tiny(x, t, ctx, jnp.zeros((1, 5, 8)))


def test_frames_not_divisible_by_temporal_patch():
    model = nnx.eval_shape(lambda: make(dataclasses.replace(TINY, patch_size=(2, 2, 2))))
    x, t, ctx, _ = inputs(TINY, frames=3)
    with pytest.raises(ValueError, match=r"F=3 must be divisible by patch_size \(2, 2, 2\)"):
        model(x, t, ctx)


def test_i2v_input_errors():
    model = nnx.eval_shape(lambda: make(TINY_I2V))
    x, t, ctx, image = inputs(TINY_I2V, text_len=512)
    with pytest.raises(ValueError, match=r"exactly 512 text tokens for I2V.*got 12: zero-pad"):
        model(x, t, ctx[:, :12], image)
    with pytest.raises(ValueError, match=r"encoder_hidden_states_image is required.*\[B, 257, 8\]"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match=r"in_channels=36 channels; got 16 \(I2V input is cat"):
        model(x[:, :16], t, ctx, image)
    with pytest.raises(ValueError, match="image_dim=8"):
        model(x, t, ctx, image[..., :4])
