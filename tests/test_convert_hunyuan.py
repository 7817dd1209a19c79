"""`svg-jax convert` and `svg_jax.load` for HunyuanVideo: family dispatch, sharded round trip, strictness,
and --model / --format refusals. Forward parity through the same path is in tests/test_hunyuan_parity.py."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
import pytest
from safetensors.numpy import load_file, save_file

from svg_jax import cli
from svg_jax.convert import (
    HUNYUAN_VIDEO,
    PRESET_NAMES,
    WAN,
    ConversionError,
    convert_checkpoint,
    detect_format,
    family_for_class,
    family_for_config,
    family_for_preset,
    open_source,
    resolve_config,
)
from svg_jax.convert.params import flatten
from svg_jax.convert.synthetic import write_random_diffusers_checkpoint
from svg_jax.loading import load
from svg_jax.models import HunyuanVideoConfig, HunyuanVideoTransformer3DModel

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PADDED = FIXTURES / "hunyuan" / "padded" / "diffusers"
TINY = FIXTURES / "hunyuan" / "tiny" / "diffusers"
WAN_T2V = FIXTURES / "wan" / "t2v" / "diffusers"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["convert", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def copy_with(folder: pathlib.Path, tensors: dict, *, config: bool = True) -> pathlib.Path:
    """A diffusers folder holding ``tensors`` (and the padded fixture's config.json)."""
    folder.mkdir()
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    if config:
        shutil.copy(PADDED / "config.json", folder / "config.json")
    return folder


def test_family_follows_class_name_and_preset():
    assert family_for_class("HunyuanVideoTransformer3DModel") is HUNYUAN_VIDEO
    assert family_for_class("WanTransformer3DModel") is WAN
    with pytest.raises(ValueError, match=r"_class_name must be one of \['WanTransformer3DModel', 'Hun"):
        family_for_class("AutoencoderKLHunyuanVideo")
    assert family_for_preset("hunyuanvideo-t2v") is HUNYUAN_VIDEO
    assert family_for_preset("wan2.1-t2v-1.3b") is WAN
    assert "hunyuanvideo-t2v" in PRESET_NAMES and "wan2.1-t2v-14b" in PRESET_NAMES
    with pytest.raises(ConversionError, match="--model must be one of"):
        family_for_preset("hunyuanvideo-i2v")
    config = resolve_config(open_source(PADDED), None)
    assert isinstance(config, HunyuanVideoConfig) and config.num_single_layers == 2
    assert family_for_config(config) is HUNYUAN_VIDEO
    assert detect_format(["x_embedder.proj.weight"], HUNYUAN_VIDEO) == "diffusers"


def test_sharded_synthetic_checkpoint_round_trips(tmp_path, capsys):
    """A sharded random checkpoint (every stack two deep) converts through the CLI, is stored one entry
    per layer, and loads back with each tensor in its NNX layout."""
    config = HunyuanVideoConfig(
        in_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_single_layers=3,
        num_refiner_layers=2,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    )
    src = tmp_path / "src"
    write_random_diffusers_checkpoint(src, config, shard_bytes=20_000)
    shards = sorted(src.glob("*.safetensors"))
    assert len(shards) > 1 and (src / "diffusion_pytorch_model.safetensors.index.json").is_file()
    code, out, err = run(capsys, src, tmp_path / "out", "--dtype", "fp32")
    assert code == 0, err
    tensors = {k: v for shard in shards for k, v in load_file(shard).items()}
    assert json.loads(out)["num_tensors"] == len(tensors)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["_class_name"] == "HunyuanVideoTransformer3DModel" and saved["num_single_layers"] == 3
    stored = flatten(ocp.metadata((tmp_path / "out" / "params").absolute()).metadata)
    assert len(stored) == len(tensors)  # one entry per source tensor, block ones per layer
    assert stored["single_transformer_blocks.2.proj_mlp.kernel"].shape == (16, 64)
    assert "context_embedder.token_refiner.refiner_blocks.1.norm1.bias" in stored

    model, loaded = load(tmp_path / "out", dtype=jnp.float32)
    assert isinstance(model, HunyuanVideoTransformer3DModel) and loaded == config
    np.testing.assert_array_equal(
        model.x_embedder.proj.kernel[...], tensors["x_embedder.proj.weight"].transpose(2, 3, 4, 1, 0)
    )
    np.testing.assert_array_equal(
        model.single_transformer_blocks.proj_mlp.kernel[2],
        tensors["single_transformer_blocks.2.proj_mlp.weight"].T,
    )
    np.testing.assert_array_equal(
        model.transformer_blocks.attn.norm_added_k.scale[1],
        tensors["transformer_blocks.1.attn.norm_added_k.weight"],
    )
    refiner = model.context_embedder.token_refiner.refiner_blocks
    np.testing.assert_array_equal(
        refiner.norm1.bias[1], tensors["context_embedder.token_refiner.refiner_blocks.1.norm1.bias"]
    )


def test_strict_plan_lists_every_problem_and_writes_nothing(tmp_path, capsys):
    tensors = load_file(PADDED / "diffusion_pytorch_model.safetensors")
    del tensors["single_transformer_blocks.1.proj_mlp.weight"]
    del tensors["context_embedder.token_refiner.refiner_blocks.0.norm2.bias"]
    tensors["transformer_blocks.0.attn.extra.weight"] = np.zeros((2, 2), np.float32)
    tensors["transformer_blocks.2.ff.net.2.bias"] = np.zeros((32,), np.float32)  # num_layers is 2
    tensors["proj_out.weight"] = tensors["proj_out.weight"][:-1]
    src = copy_with(tmp_path / "bad", tensors)
    code, out, err = run(capsys, src, tmp_path / "out")
    assert code == 1 and out == "" and "5 problem(s)" in err
    for needle in [
        "missing: single_transformer_blocks.1.proj_mlp.weight "
        "(fills single_transformer_blocks.proj_mlp.kernel layer 1)",
        "missing: context_embedder.token_refiner.refiner_blocks.0.norm2.bias",
        "unexpected: transformer_blocks.0.attn.extra.weight (no rule maps it",
        "unexpected: transformer_blocks.2.ff.net.2.bias: layer 2 >= num_layers=2",
        "shape mismatch: proj_out.weight has shape (15, 32)",
    ]:
        assert needle in err, needle
    assert not (tmp_path / "out").exists()


def test_model_flag_must_match_the_family_and_config(tmp_path, capsys):
    code, _, err = run(capsys, TINY, tmp_path / "out", "--model", "hunyuanvideo-t2v")
    assert code == 1 and "--model hunyuanvideo-t2v disagrees with SRC's config.json" in err
    assert "num_layers: config.json 1 vs --model 20" in err
    code, _, err = run(capsys, TINY, tmp_path / "out", "--model", "wan2.1-t2v-1.3b")
    assert code == 1 and (
        "--model wan2.1-t2v-1.3b is a Wan 2.1 preset but SRC's config.json is a "
        "HunyuanVideoTransformer3DModel; drop --model or pass a HunyuanVideo preset" in err
    )
    code, _, err = run(capsys, WAN_T2V, tmp_path / "out", "--model", "hunyuanvideo-t2v")
    assert code == 1 and "is a HunyuanVideo preset but SRC's config.json is a WanTransformer3DModel" in err
    src = copy_with(
        tmp_path / "noconfig", load_file(TINY / "diffusion_pytorch_model.safetensors"), config=False
    )
    code, _, err = run(capsys, src, tmp_path / "out")
    assert code == 1 and "pass --model" in err and "HunyuanVideoTransformer3DModel" in err
    assert not (tmp_path / "out").exists()


def test_original_format_is_refused_with_a_fix(tmp_path):
    message = "original format not supported for HunyuanVideo yet; convert the diffusers format"
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(TINY, tmp_path / "out", fmt="original", progress=False)
    with pytest.raises(ConversionError, match=message):
        detect_format(["img_in.proj.weight", "double_blocks.0.img_attn_qkv.weight"], HUNYUAN_VIDEO)
    with pytest.raises(ConversionError, match="pass --format diffusers$"):
        detect_format(["encoder.conv_in.weight"], HUNYUAN_VIDEO)


def test_load_rejects_an_unknown_class_name(tmp_path):
    convert_checkpoint(TINY, tmp_path / "out", dtype="fp32", progress=False)
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"_class_name": "CogVideoXTransformer3DModel"}))
    with pytest.raises(ValueError, match="_class_name must be one of .*got 'CogVideoXTransformer3DModel'"):
        load(tmp_path / "out")
