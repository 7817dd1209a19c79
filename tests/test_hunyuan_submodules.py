"""Submodule parity with diffusers (sinusoid, RoPE, condition embedding, token refiner, double block 0) and
the key-mapping rules. When the full-model parity fails, these say where.

Goldens: tools/make_hunyuan_fixtures.py (diffusers hooks on ``time_text_embed``, ``context_embedder`` and
``transformer_blocks[0]``, ``model.rope``, and ``Timesteps(256)``).
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from svg_jax.convert import HUNYUAN_VIDEO, convert_checkpoint, target_shapes
from svg_jax.convert.hunyuan_rules import map_hunyuan_key
from svg_jax.loading import load
from svg_jax.models import (
    HUNYUAN_PRESETS,
    masked_dense_attention,
    text_kv_lengths,
)
from svg_jax.models.hunyuan_video_embeddings import hunyuan_rope, hunyuan_sinusoid

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hunyuan"
REL_TOL_F32 = 1e-5


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=["tiny", "padded"])
def case(request, tmp_path_factory):
    dst = tmp_path_factory.mktemp("ckpt") / request.param
    convert_checkpoint(FIXTURES / request.param / "diffusers", dst, dtype="fp32", progress=False)
    model, config = load(dst, dtype=jnp.float32)
    return model, config, load_file(FIXTURES / request.param / "io.safetensors")


def test_sinusoid_matches_diffusers_up_to_guidance_10000():
    """Bit-identical frequencies, so even the embedded guidance (angles up to 1e4 rad) agrees to rounding."""
    golden = load_file(FIXTURES / "sinusoid.safetensors")
    ours = np.asarray(hunyuan_sinusoid(jnp.asarray(golden["t"])))
    np.testing.assert_allclose(ours, golden["sinusoid"], rtol=0, atol=2e-7)


def test_rope_matches_diffusers(case):
    model, config, io = case
    _, _, f, h, w = io["hidden_states"].shape
    grid = (f // config.patch_size_t, h // config.patch_size, w // config.patch_size)
    cos, sin = hunyuan_rope(config.rope_axes_dim, grid, theta=config.rope_theta)
    assert cos.shape == (np.prod(grid), config.attention_head_dim // 2)
    np.testing.assert_allclose(cos, io["rope_cos"][:, 0::2], rtol=0, atol=1e-7)
    np.testing.assert_allclose(sin, io["rope_sin"][:, 1::2], rtol=0, atol=1e-7)
    # diffusers' tables repeat each pair value twice: the half tables lose nothing.
    np.testing.assert_array_equal(io["rope_cos"][:, 0::2], io["rope_cos"][:, 1::2])


def test_condition_embedding_matches(case):
    model, _, io = case
    temb = model.time_text_embed(
        jnp.asarray(io["timestep"]), jnp.asarray(io["pooled_projections"]), jnp.asarray(io["guidance"])
    )
    assert rel_err(temb, io["temb"]) <= REL_TOL_F32


def test_token_refiner_matches(case):
    """Masked mean pooling, the [B,1,L,L] mask with key 0 always visible, and the gated blocks."""
    model, _, io = case
    out = model.context_embedder(
        jnp.asarray(io["encoder_hidden_states"]),
        jnp.asarray(io["timestep"]),
        jnp.asarray(io["encoder_attention_mask"]).astype(bool),
    )
    assert rel_err(out, io["refiner_out"]) <= REL_TOL_F32


def test_block0_matches(case):
    model, config, io = case
    _, _, f, h, w = io["hidden_states"].shape
    rope = model.rope((f, h // config.patch_size, w // config.patch_size))
    x_in = jnp.asarray(io["block0_hidden"])
    attn_fn = masked_dense_attention(
        text_kv_lengths(x_in.shape[1], jnp.asarray(io["encoder_attention_mask"]))
    )
    x, text, state, stats = model.block(0)(
        x_in,
        jnp.asarray(io["block0_text"]),
        jnp.asarray(io["block0_temb"]),
        rope,
        attn_fn=attn_fn,
        layer=jnp.int32(0),
        state=None,
    )
    assert state is None and stats == {}
    assert rel_err(x, io["block0_out_hidden"]) <= REL_TOL_F32
    assert rel_err(text, io["block0_out_text"]) <= REL_TOL_F32


def test_rules_cover_every_release_parameter_once():
    """Every parameter of the released architecture is the image of exactly one diffusers key (the
    inverse of our naming: block index re-inserted, ``kernel``/``scale`` → ``weight``)."""
    config = HUNYUAN_PRESETS["hunyuanvideo-t2v"]
    depths = {
        "transformer_blocks": config.num_layers,
        "single_transformer_blocks": config.num_single_layers,
        "context_embedder.token_refiner.refiner_blocks": config.num_refiner_layers,
    }
    assert {s.prefix for s in HUNYUAN_VIDEO.stacks} == set(depths)
    for target, (shape, _) in target_shapes(config, np.float32).items():
        stack = next((s for s in depths if target.startswith(s + ".")), None)
        assert stack is None or shape[0] == depths[stack], target
        for layer in range(depths[stack]) if stack else [None]:
            key = HUNYUAN_VIDEO.expected_key(target, layer)
            mapped = map_hunyuan_key(key)
            assert mapped is not None and (mapped.target, mapped.layer) == (target, layer), key


def test_fixture_keys_all_map_and_conv_is_transposed():
    path = FIXTURES / "padded" / "diffusers" / "diffusion_pytorch_model.safetensors"
    with safe_open(path, "np") as f:
        keys = list(f.keys())
    assert all(map_hunyuan_key(k) is not None for k in keys)
    assert map_hunyuan_key("x_embedder.proj.weight").transform.name == "conv3d_w"
    assert map_hunyuan_key("transformer_blocks.1.attn.norm_added_k.weight").target == (
        "transformer_blocks.attn.norm_added_k.scale"
    )
    assert map_hunyuan_key("blocks.0.attn1.to_q.weight") is None  # a Wan key
