"""Full-model parity with diffusers' HunyuanVideoTransformer3DModel, and the attention-injection contract.

Goldens come from tools/make_hunyuan_fixtures.py (torch + diffusers, float32 CPU): diffusers' own tiny test
config (``tiny``) and the "patch 2 with padding" config of video_dits.md §6 (``padded``: two samples with
9 and 5 valid text tokens of 12, guidance 6000). Weights go through the real converter (svg-jax convert)
and :func:`svg_jax.load`, like tests/test_wan_parity.py.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from svg_jax.convert import convert_checkpoint
from svg_jax.loading import load
from svg_jax.models import (
    HUNYUAN_PRESETS,
    HunyuanVideoConfig,
    HunyuanVideoTransformer3DModel,
    masked_dense_attention,
    text_kv_lengths,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hunyuan"
REL_TOL_F32 = 1e-5  # max |ours - diffusers| / max |diffusers| in float32
REL_TOL_BF16 = 5e-2  # bf16 weights and compute vs the float32 golden
INPUTS = (
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "pooled_projections",
    "guidance",
)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def model_inputs(io: dict) -> list:
    return [jnp.asarray(io[k]) for k in INPUTS]


@jax.jit
def forward(model, *inputs):
    return model(*inputs)


@jax.jit
def forward_with_attention(model, *inputs):
    return model(*inputs, return_attention=True)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(case, storage dtype) → (model, config, io): converted and loaded once per module; the compute
    dtype is the storage dtype."""
    cache: dict = {}

    def get(case: str, dtype: str = "fp32"):
        if (case, dtype) not in cache:
            dst = tmp_path_factory.mktemp("ckpt") / f"{case}-{dtype}"
            convert_checkpoint(FIXTURES / case / "diffusers", dst, dtype=dtype, progress=False)
            jdtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype]
            model, config = load(dst, dtype=jdtype)
            cache[case, dtype] = model, config, load_file(FIXTURES / case / "io.safetensors")
        return cache[case, dtype]

    return get


@pytest.mark.parametrize("case", ["tiny", "padded"])
def test_forward_matches_diffusers_f32(loaded, case):
    model, _, io = loaded(case)
    out, state, stats = forward_with_attention(model, *model_inputs(io))
    assert state is None and stats == {}  # the default masked dense attention keeps no state
    assert out.shape == io["output"].shape and out.dtype == jnp.float32
    assert rel_err(out, io["output"]) <= REL_TOL_F32


def test_bf16_weights_and_compute_track_f32(loaded):
    model, _, io = loaded("padded", "bf16")
    out = forward(model, *model_inputs(io))
    assert out.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()
    assert rel_err(out, io["output"]) <= REL_TOL_BF16


def test_padded_text_does_not_reach_the_output(loaded):
    """Padded text tokens are masked keys everywhere (refiner and joint attention) and out of the pooled
    mean, so replacing them changes nothing; changing a valid token does change the output."""
    model, _, io = loaded("padded")
    inputs = model_inputs(io)
    base = np.asarray(forward(model, *inputs))
    text, mask = inputs[2], np.asarray(io["encoder_attention_mask"]).astype(bool)
    noise = 5.0 * jax.random.normal(jax.random.key(0), text.shape)
    inputs[2] = jnp.where(jnp.asarray(mask)[..., None], text, noise)
    np.testing.assert_allclose(np.asarray(forward(model, *inputs)), base, rtol=0, atol=1e-6)
    inputs[2] = text.at[1, 0].add(1.0)  # a valid token of sample 1
    changed = np.asarray(forward(model, *inputs))
    assert np.abs(changed[1] - base[1]).max() > 1e-3
    np.testing.assert_allclose(changed[0], base[0], rtol=0, atol=1e-6)


def test_injected_attn_fn_sees_global_layers_and_restacks_state(loaded):
    """A recording attn_fn: layers 0..L-1 in order (double then single), its per-layer state slice, and
    stats stacked over all layers; with the caller's key mask it reproduces the default output."""
    model, config, io = loaded("padded")
    inputs = model_inputs(io)
    total = config.num_layers + config.num_single_layers
    b, _, f, h, w = io["hidden_states"].shape
    num_video = f * (h // config.patch_size) * (w // config.patch_size)
    num_joint = num_video + io["encoder_hidden_states"].shape[1]
    masked = masked_dense_attention(text_kv_lengths(num_video, inputs[3]))

    def recording(q, k, v, *, layer, state):
        assert q.shape == k.shape == v.shape == (b, num_joint, config.num_attention_heads, 16)
        out, _, _ = masked(q, k, v, layer=layer, state=None)
        new_state = {"count": state["count"] + 1, "seen": state["seen"] + layer}
        return out, new_state, {"layer": layer, "q_mean": jnp.mean(q.astype(jnp.float32))}

    state = {"count": jnp.zeros((total,), jnp.int32), "seen": jnp.full((total, 2), 100, jnp.int32)}

    @jax.jit
    def run(model, state, *inputs):
        return model(*inputs, attn_fn=recording, attn_state=state, return_attention=True)

    out, new_state, stats = run(model, state, *inputs)
    np.testing.assert_array_equal(stats["layer"], np.arange(total))
    assert stats["q_mean"].shape == (total,)
    np.testing.assert_array_equal(new_state["count"], np.ones(total))
    np.testing.assert_array_equal(new_state["seen"], 100 + np.arange(total)[:, None] + np.zeros((1, 2)))
    assert rel_err(out, io["output"]) <= REL_TOL_F32

    with pytest.raises(ValueError, match=f"num_layers \\+ num_single_layers = {total}"):
        model(*inputs, attn_fn=recording, attn_state={"count": jnp.zeros((config.num_layers,))})


@pytest.fixture(scope="module")
def small():
    config = HunyuanVideoConfig(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    )
    # Abstract: the input checks run before any parameter is touched.
    model = nnx.eval_shape(
        lambda: HunyuanVideoTransformer3DModel(config, rngs=nnx.Rngs(0), dtype=jnp.float32)
    )
    return model, config


def good_inputs() -> dict:
    return dict(
        hidden_states=jnp.zeros((2, 4, 1, 4, 4)),
        timestep=jnp.full((2,), 500.0),
        encoder_hidden_states=jnp.zeros((2, 6, 16)),
        encoder_attention_mask=jnp.ones((2, 6), jnp.int32),
        pooled_projections=jnp.zeros((2, 8)),
        guidance=jnp.full((2,), 6000.0),
    )


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("hidden_states", jnp.zeros((2, 4, 4, 4)), r"\[B, C, F, H, W\]"),
        ("hidden_states", jnp.zeros((2, 3, 1, 4, 4)), "in_channels=4"),
        ("hidden_states", jnp.zeros((2, 4, 1, 5, 4)), "H=5 must be divisible by the patch size 2"),
        ("timestep", jnp.zeros((3,)), r"timestep must have shape \[B\] = \(2,\)"),
        ("encoder_hidden_states", jnp.zeros((2, 6, 15)), "text_embed_dim=16"),
        ("encoder_attention_mask", jnp.ones((2, 5)), r"encoder_attention_mask must be \[B, L\]"),
        ("pooled_projections", jnp.zeros((2, 7)), "pooled_projection_dim"),
        ("guidance", None, "guidance is required"),
        ("guidance", jnp.zeros((1,)), r"guidance must have shape \[B\]"),
    ],
)
def test_bad_inputs_name_the_argument(small, name, value, match):
    model, _ = small
    inputs = good_inputs() | {name: value}
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_guidance_rejected_without_guidance_embeds(small):
    _, config = small
    model = nnx.eval_shape(
        lambda: HunyuanVideoTransformer3DModel(
            dataclasses.replace(config, guidance_embeds=False), rngs=nnx.Rngs(0), dtype=jnp.float32
        )
    )
    assert model.time_text_embed.guidance_embedder is None
    with pytest.raises(ValueError, match="guidance must be None"):
        model(**good_inputs())


def test_preset_is_the_release_config():
    config = HUNYUAN_PRESETS["hunyuanvideo-t2v"]
    assert HunyuanVideoConfig.preset("hunyuanvideo-t2v") is config
    assert (config.inner_dim, config.num_layers, config.num_single_layers, config.mlp_dim) == (
        3072,
        20,
        40,
        12288,
    )
    assert config.rope_axes_dim == (16, 56, 56) and config.rope_theta == 256.0 and config.guidance_embeds
    assert HunyuanVideoConfig.from_diffusers_config(config.to_diffusers_config()) == config
    with pytest.raises(ValueError, match="unknown HunyuanVideo preset"):
        HunyuanVideoConfig.preset("hunyuanvideo-i2v")


def test_release_param_count_matches_diffusers():
    """12.821B parameters (video_dits.md §0, counted on diffusers' meta model)."""
    abstract = nnx.eval_shape(
        lambda: HunyuanVideoTransformer3DModel(HUNYUAN_PRESETS["hunyuanvideo-t2v"], rngs=nnx.Rngs(0))
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    assert round(count / 1e9, 3) == 12.821


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(rope_axes_dim=(16, 56, 54)), ValueError, "must sum to attention_head_dim=128"),
        (dict(rope_axes_dim=(15, 57, 56)), ValueError, "positive even ints"),
        (dict(num_single_layers=0), ValueError, "num_single_layers must be a positive int"),
        (dict(mlp_ratio=0.0), ValueError, "mlp_ratio must be a positive number"),
        (dict(qk_norm="layer_norm"), NotImplementedError, "qk_norm must be 'rms_norm'"),
        (
            dict(image_condition_type="token_replace"),
            NotImplementedError,
            "image_condition_type must be None",
        ),
    ],
)
def test_config_validation_names_the_field(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(HUNYUAN_PRESETS["hunyuanvideo-t2v"], **change)


def test_from_diffusers_config_rejects_unknown_keys():
    raw = HUNYUAN_PRESETS["hunyuanvideo-t2v"].to_diffusers_config() | {"sample_frames": 9}
    with pytest.raises(ValueError, match=r"does not know: \['sample_frames'\]"):
        HunyuanVideoConfig.from_diffusers_config(raw)
