"""Submodule parity with diffusers (RoPE, timestep sinusoid, patch and condition embedding, one block).

When the full-model parity fails, these say where. Goldens: tools/make_wan_fixtures.py (diffusers hooks on
``condition_embedder`` and ``blocks[0]``, and diffusers' real-size RoPE buffers).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from svg_jax.convert import convert_checkpoint
from svg_jax.loading import load
from svg_jax.models import WAN_TEXT_LEN, dense_attention
from svg_jax.models.embeddings import timestep_sinusoid
from svg_jax.models.rope import apply_rope, rope_axis_dims, wan_rope

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "wan"
REL_TOL_F32 = 1e-5


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=["t2v", "i2v", "flf2v"])
def case(request, tmp_path_factory):
    """(model, config, goldens) for one tiny config, loaded through the converter in float32."""
    dst = tmp_path_factory.mktemp("ckpt") / request.param
    convert_checkpoint(FIXTURES / request.param / "diffusers", dst, dtype="fp32", progress=False)
    model, config = load(dst, dtype=jnp.float32)
    return model, config, load_file(FIXTURES / request.param / "io.safetensors")


def test_rope_axis_split_matches_wan():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(12) == (4, 4, 4)


def test_rope_real_size_tables_match_diffusers_buffers():
    """Rows 0-7, 500-507, 1016-1023 of diffusers' [t | h | w] float64→float32 tables at head_dim 128."""
    golden = load_file(FIXTURES / "rope_d128.safetensors")
    t_dim, h_dim, _ = (d // 2 for d in rope_axis_dims(128))
    per_axis = [wan_rope(128, grid, max_seq_len=1024) for grid in ((1024, 1, 1), (1, 1024, 1), (1, 1, 1024))]
    cos = np.concatenate(
        [
            np.asarray(per_axis[0][0])[:, :t_dim],
            np.asarray(per_axis[1][0])[:, t_dim : t_dim + h_dim],
            np.asarray(per_axis[2][0])[:, t_dim + h_dim :],
        ],
        axis=1,
    )
    sin = np.concatenate(
        [
            np.asarray(per_axis[0][1])[:, :t_dim],
            np.asarray(per_axis[1][1])[:, t_dim : t_dim + h_dim],
            np.asarray(per_axis[2][1])[:, t_dim + h_dim :],
        ],
        axis=1,
    )
    rows = golden["rows"]
    np.testing.assert_allclose(cos[rows], golden["freqs_cos"][:, 0::2], rtol=0, atol=1e-7)
    np.testing.assert_allclose(sin[rows], golden["freqs_sin"][:, 1::2], rtol=0, atol=1e-7)
    # diffusers' tables repeat each pair value twice: the half tables lose nothing.
    np.testing.assert_array_equal(golden["freqs_cos"][:, 0::2], golden["freqs_cos"][:, 1::2])


def test_rope_grid_matches_diffusers(case):
    model, config, io = case
    _, _, f, h, w = io["hidden_states"].shape
    grid = (f // config.patch_size[0], h // config.patch_size[1], w // config.patch_size[2])
    cos, sin = wan_rope(config.attention_head_dim, grid, max_seq_len=config.rope_max_seq_len)
    np.testing.assert_allclose(cos, io["rope_cos"][0, :, 0, 0::2], rtol=0, atol=1e-7)
    np.testing.assert_allclose(sin, io["rope_sin"][0, :, 0, 1::2], rtol=0, atol=1e-7)


def test_apply_rope_rotates_interleaved_pairs():
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    cos, sin = wan_rope(4, (3, 1, 1), max_seq_len=8)
    out = np.asarray(apply_rope(x, cos, sin))
    angle = np.asarray(jnp.arctan2(sin, cos))  # [N, 2]
    x = np.asarray(x)
    expected = np.empty_like(x)
    expected[..., 0::2] = (
        x[..., 0::2] * np.cos(angle)[None, :, None] - x[..., 1::2] * np.sin(angle)[None, :, None]
    )
    expected[..., 1::2] = (
        x[..., 0::2] * np.sin(angle)[None, :, None] + x[..., 1::2] * np.cos(angle)[None, :, None]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_rope_rejects_grid_beyond_table():
    with pytest.raises(ValueError, match="rope_max_seq_len=32"):
        wan_rope(12, (2, 33, 8), max_seq_len=32)


def test_timestep_sinusoid_matches_diffusers_up_to_t999():
    """Bit-level agreement except where torch's float32 exp is 1 ulp off (2 of 128 frequencies).

    There the angle differs by up to t·2⁻²⁴ rad; everywhere else the error is float32 rounding of cos/sin.
    """
    golden = load_file(FIXTURES / "rope_d128.safetensors")
    err = np.abs(np.asarray(timestep_sinusoid(jnp.asarray(golden["timesteps"]), 256)) - golden["sinusoid"])
    t = golden["timesteps"]
    assert (err.max(axis=1) <= np.maximum(t, 1) * 2.0**-24 * 1.1).all(), err.max(axis=1)
    assert ((err > 1e-6).sum(axis=1) <= 4).all()  # cos and sin of at most 2 frequencies


def test_patch_embedding_matches_conv3d(case):
    model, _, io = case
    ours = model.patch_embedding(jnp.asarray(io["hidden_states"]))
    assert rel_err(ours, io["block0_hidden"]) <= REL_TOL_F32


def test_condition_embedder_matches(case):
    model, _, io = case
    image = io.get("encoder_hidden_states_image")
    temb, timestep_proj, text, image_emb = model.condition_embedder(
        jnp.asarray(io["timestep"]),
        jnp.asarray(io["encoder_hidden_states"]),
        None if image is None else jnp.asarray(image),
    )
    assert rel_err(temb, io["temb"]) <= REL_TOL_F32
    assert rel_err(timestep_proj, io["timestep_proj"]) <= REL_TOL_F32
    assert rel_err(text, io["text_emb"]) <= REL_TOL_F32
    if image is not None:
        assert rel_err(image_emb, io["image_emb"]) <= REL_TOL_F32


def test_block0_matches(case):
    model, config, io = case
    context = jnp.asarray(io["block0_context"])
    text, image = context, None
    if config.is_i2v:  # diffusers passes [image | text]; the block takes them apart like WanAttnProcessor
        text, image = context[:, -WAN_TEXT_LEN:], context[:, :-WAN_TEXT_LEN]
    _, _, f, h, w = io["hidden_states"].shape
    rope = wan_rope(config.attention_head_dim, (f, h // 2, w // 2), max_seq_len=config.rope_max_seq_len)
    out, state, stats = model.block(0)(
        jnp.asarray(io["block0_hidden"]),
        text,
        image,
        jnp.asarray(io["block0_timestep_proj"]),
        rope,
        attn_fn=dense_attention,
        layer=jnp.int32(0),
        state=None,
    )
    assert state is None and stats == {}
    assert rel_err(out, io["block0_out"]) <= REL_TOL_F32
