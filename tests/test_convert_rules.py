"""Key-mapping rules and the strict plan, including full-size coverage of the released checkpoints.

``fixtures/wan/manifest.json`` lists every key and shape of Wan2.1 T2V-1.3B, T2V-14B, I2V-14B and
FLF2V-14B in diffusers and original naming (built by tools/make_wan_fixtures.py with diffusers on the
meta device). The converter must map all of them onto ``nnx.eval_shape`` of our model, shapes included.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from svg_jax.convert import WAN, ConversionError, detect_format, plan_conversion, target_shapes
from svg_jax.convert.rules import (
    DIFFUSERS_RULES,
    ORIGINAL_RULES,
    TRANSFORMS,
    expected_diffusers_key,
    map_diffusers_key,
    original_to_diffusers,
)
from svg_jax.models import WAN_PRESETS, WanConfig

MANIFEST = json.loads((pathlib.Path(__file__).parent / "fixtures" / "wan" / "manifest.json").read_text())
MODELS = MANIFEST["models"]
PRESET_OF = {
    "wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b",
    "wan2.1-t2v-14b": "wan2.1-t2v-14b",
    "wan2.1-i2v-14b": "wan2.1-i2v-14b-720p",
    "wan2.1-flf2v-14b": "wan2.1-flf2v-14b-720p",
}


@pytest.fixture(scope="module")
def targets():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = target_shapes(WanConfig.from_diffusers_config(MODELS[name]["config"]), jnp.bfloat16)
        return cache[name]

    return get


def shapes_of(name: str, fmt: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in MODELS[name][fmt].items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_manifest_config_is_our_preset(name):
    assert WanConfig.from_diffusers_config(MODELS[name]["config"]) == WAN_PRESETS[PRESET_OF[name]]


@pytest.mark.parametrize("fmt", ["diffusers", "original"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_size_checkpoint_maps_onto_eval_shape(targets, name, fmt):
    plan = plan_conversion(shapes_of(name, fmt), targets(name), family=WAN, fmt=fmt)
    assert {leaf.target for leaf in plan} == set(targets(name))  # every parameter filled
    assert sum(len(leaf.sources) for leaf in plan) == len(MODELS[name][fmt])  # every key used once
    assert sum(int(np.prod(leaf.shape)) for leaf in plan) == MODELS[name]["num_params"]
    assert detect_format(list(MODELS[name][fmt]), WAN) == fmt


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_key_matches_exactly_one_rule(name):
    for key in MODELS[name]["diffusers"]:
        assert sum(rule.apply(key) is not None for rule in DIFFUSERS_RULES) == 1, key
    for key in MODELS[name]["original"]:
        assert sum(rule.apply(key) is not None for rule in ORIGINAL_RULES) == 1, key


@pytest.mark.parametrize("name", sorted(MODELS))
def test_original_rename_is_the_inverse_of_the_fixture_script(name):
    """The fixture script renames diffusers → original independently; we must undo it exactly."""
    renamed = {original_to_diffusers(k): tuple(v) for k, v in MODELS[name]["original"].items()}
    assert renamed == shapes_of(name, "diffusers")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_key_names_round_trip(name):
    for key in MODELS[name]["diffusers"]:
        mapped = map_diffusers_key(key)
        assert expected_diffusers_key(mapped.target, mapped.layer) == key


def test_transforms_move_axes_like_torch_layouts():
    w = np.arange(6, dtype=np.float32).reshape(3, 2)  # torch Linear [out=3, in=2]
    np.testing.assert_array_equal(TRANSFORMS["linear_w"].apply(w), w.T)
    conv = np.zeros((5, 4, 1, 2, 3))  # [out, in, t, h, w]
    assert (
        TRANSFORMS["conv3d_w"].apply(conv).shape
        == (1, 2, 3, 4, 5)
        == TRANSFORMS["conv3d_w"].shape(conv.shape)
    )
    with pytest.raises(ValueError, match="needs a rank-2 tensor; got shape \\(4,\\)"):
        TRANSFORMS["linear_w"].shape((4,))


def test_plan_reports_every_problem_at_once(targets):
    name = "wan2.1-t2v-1.3b"
    shapes = shapes_of(name, "diffusers")
    del shapes["blocks.7.attn1.to_q.weight"], shapes["scale_shift_table"]
    shapes["blocks.3.attn1.to_qkv.weight"] = (4608, 1536)  # fused projections are not a checkpoint format
    shapes["blocks.30.ffn.net.2.bias"] = (1536,)  # one layer too many
    shapes["proj_out.weight"] = (64, 1535)
    shapes["blocks.2.norm2.weight"] = (1536, 1)
    with pytest.raises(ConversionError) as info:
        plan_conversion(shapes, targets(name), family=WAN, fmt="diffusers")
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = str(info.value)
    for needle in [
        "missing: blocks.7.attn1.to_q.weight (fills blocks.attn1.to_q.kernel layer 7)",
        "missing: scale_shift_table",
        "unexpected: blocks.3.attn1.to_qkv.weight",
        "blocks.30.ffn.net.2.bias: layer 30 >= num_layers=30",
        "shape mismatch: proj_out.weight has shape (64, 1535)",
        "shape mismatch: blocks.2.norm2.weight",
    ]:
        assert needle in text, needle


def test_plan_flags_t2v_weights_into_an_i2v_model(targets):
    """A checkpoint of another architecture fails with every missing image-branch parameter named."""
    with pytest.raises(ConversionError) as info:
        plan_conversion(
            shapes_of("wan2.1-t2v-14b", "diffusers"),
            targets("wan2.1-i2v-14b"),
            family=WAN,
            fmt="diffusers",
        )
    text = str(info.value)
    assert "missing: blocks.39.attn2.add_k_proj.weight" in text
    assert "missing: condition_embedder.image_embedder.norm1.weight" in text
    assert "shape mismatch: patch_embedding.weight" in text  # 16 vs 36 input channels


def test_ignored_and_unknown_original_keys(targets):
    name = "wan2.1-i2v-14b"
    shapes = shapes_of(name, "diffusers")
    shapes["blocks.0.attn2.norm_added_q.weight"] = (5120,)  # diffusers drops it on load; so do we
    plan_conversion(shapes, targets(name), family=WAN, fmt="diffusers")
    original = shapes_of(name, "original")
    original["blocks.0.self_attn.qkv.weight"] = (15360, 5120)
    with pytest.raises(ConversionError, match="unexpected: blocks.0.self_attn.qkv.weight \\(no original"):
        plan_conversion(original, targets(name), family=WAN, fmt="original")


def test_detect_format_needs_known_keys():
    with pytest.raises(ConversionError, match="pass --format"):
        detect_format(["encoder.conv_in.weight"], WAN)
