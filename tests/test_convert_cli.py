"""`svg-jax convert` end to end: outputs, strictness, atomicity, refusals; and `svg_jax.loading.load`."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from svg_jax import cli
from svg_jax.convert import convert_checkpoint
from svg_jax.convert import source as source_module
from svg_jax.loading import load

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "wan"
T2V = FIXTURES / "t2v" / "diffusers"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["convert", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: pathlib.Path) -> list[str]:
    """Temporary folders the writer may have left next to DST."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def t2v_tensors() -> dict[str, np.ndarray]:
    tensors = {}
    for shard in sorted(T2V.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def write_single(folder: pathlib.Path, tensors: dict, *, config: bool = True) -> pathlib.Path:
    folder.mkdir()
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    if config:
        shutil.copy(T2V / "config.json", folder / "config.json")
    return folder


def test_convert_writes_orbax_and_config_and_reports_json(tmp_path, capsys):
    code, out, err = run(capsys, T2V, tmp_path / "out", "--dtype", "fp32")
    assert code == 0, err
    result = json.loads(out)
    assert result == {
        "dst": str(tmp_path / "out"),
        "source_format": "diffusers",
        "param_dtype": "float32",
        "num_params": 25592,
        "num_tensors": 69,
    }
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and config["num_layers"] == 2
    assert config["_svg_jax"] == {"format_version": 1, "param_dtype": "float32", "source_format": "diffusers"}
    assert (tmp_path / "out" / "params").is_dir() and leftovers(tmp_path) == []


def test_loaded_parameters_equal_the_source_tensors(tmp_path, capsys):
    assert run(capsys, T2V, tmp_path / "out", "--dtype", "fp32")[0] == 0
    model, config = load(tmp_path / "out", dtype=jnp.float32)
    src = t2v_tensors()
    np.testing.assert_array_equal(model.blocks.attn1.to_q.kernel[1], src["blocks.1.attn1.to_q.weight"].T)
    np.testing.assert_array_equal(model.blocks.norm2.scale[0], src["blocks.0.norm2.weight"])
    np.testing.assert_array_equal(
        model.patch_embedding.kernel[...], src["patch_embedding.weight"].transpose(2, 3, 4, 1, 0)
    )
    np.testing.assert_array_equal(model.scale_shift_table[...], src["scale_shift_table"])
    assert config.num_layers == 2 and model.dtype == jnp.float32


def test_relative_paths_convert_and_load(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, T2V, "out", "--dtype", "fp32")[0] == 0
    model, _ = load("out", dtype=jnp.float32)  # orbax itself wants absolute paths
    assert model.blocks.attn1.to_q.kernel.shape[0] == 2


def test_bf16_storage_keeps_float32_islands(tmp_path, capsys):
    assert run(capsys, T2V, tmp_path / "out")[0] == 0  # default --dtype bf16
    model, _ = load(tmp_path / "out")
    assert model.blocks.attn1.to_q.kernel.dtype == jnp.bfloat16
    assert model.blocks.scale_shift_table.dtype == jnp.float32
    assert model.condition_embedder.time_embedder.linear_1.kernel.dtype == jnp.float32


def test_existing_dst_is_refused_without_force(tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = run(capsys, T2V, dst)
    assert code == 1 and "exists; pass --force" in err
    assert (dst / "keep.txt").read_text() == "mine"
    code, _, err = run(capsys, T2V, dst, "--force")
    assert code == 0, err
    assert not (dst / "keep.txt").exists() and (dst / "config.json").exists()
    assert leftovers(tmp_path) == []


def test_bad_checkpoint_lists_every_offending_key_and_writes_nothing(tmp_path, capsys):
    tensors = t2v_tensors()
    del tensors["blocks.1.attn1.to_q.weight"]
    tensors["blocks.0.attn1.to_qkv.weight"] = np.zeros((72, 24), np.float32)
    tensors["proj_out.bias"] = np.zeros((17,), np.float32)
    src = write_single(tmp_path / "bad", tensors)
    code, out, err = run(capsys, src, tmp_path / "out")
    assert code == 1 and out == ""
    assert "3 problem(s)" in err
    assert "missing: blocks.1.attn1.to_q.weight" in err
    assert "unexpected: blocks.0.attn1.to_qkv.weight" in err
    assert "shape mismatch: proj_out.bias has shape (17,)" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real_read = source_module.read_tensor

    def flaky_read(spec):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError("disk went away")
        return real_read(spec)

    monkeypatch.setattr("svg_jax.convert.api.read_tensor", flaky_read)
    with pytest.raises(OSError, match="disk went away"):  # after several partial saves (1 kB buffer)
        convert_checkpoint(T2V, tmp_path / "out", buffer_bytes=1000, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    code, _, err = run(capsys, T2V, tmp_path / "out", "--buffer-mb", "0")
    assert code == 1 and "--buffer-mb >= 1" in err


def test_original_format_needs_an_architecture(tmp_path, capsys):
    src = tmp_path / "orig"
    src.mkdir()
    shutil.copy(FIXTURES / "i2v" / "original" / "diffusion_pytorch_model.safetensors", src)
    code, _, err = run(capsys, src, tmp_path / "out")
    assert code == 1 and "pass --model" in err
    code, _, err = run(capsys, src, tmp_path / "out", "--model", "wan2.1-i2v-14b-480p")
    assert code == 1 and "shape mismatch" in err  # a tiny checkpoint is not the 14B preset


def test_model_flag_must_agree_with_config_json(tmp_path, capsys):
    code, _, err = run(capsys, T2V, tmp_path / "out", "--model", "wan2.1-t2v-1.3b")
    assert (
        code == 1
        and "disagrees with SRC's config.json" in err
        and "num_layers: config.json 2 vs --model 30" in err
    )


def test_format_flag_overrides_detection(tmp_path, capsys):
    code, _, err = run(capsys, T2V, tmp_path / "out", "--format", "original")
    assert code == 1 and "unexpected: blocks.0.attn1.to_q.weight (no original" in err


@pytest.mark.parametrize("name", ["model.bin", "model.pt", "diffusion_pytorch_model.pth"])
def test_pickle_checkpoints_are_refused(tmp_path, capsys, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    code, _, err = run(capsys, tmp_path / name, tmp_path / "out")
    assert code == 1 and "pickle checkpoints" in err and "refused" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(tmp_path / name, folder / name)
    code, _, err = run(capsys, folder, tmp_path / "out")
    assert code == 1 and "pickle checkpoints" in err


def test_sharded_index_must_match_its_shards(tmp_path, capsys):
    src = tmp_path / "sharded"
    shutil.copytree(T2V, src)
    index = src / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["blocks.0.attn1.to_q.weight"] = "diffusion_pytorch_model-00003-of-00003.safetensors"
    data["weight_map"]["ghost.weight"] = "diffusion_pytorch_model-00001-of-00003.safetensors"
    index.write_text(json.dumps(data))
    code, _, err = run(capsys, src, tmp_path / "out")
    assert code == 1
    assert "index mismatch: blocks.0.attn1.to_q.weight" in err and "index mismatch: ghost.weight" in err


def test_single_file_and_index_paths_are_accepted(tmp_path, capsys):
    index = T2V / "diffusion_pytorch_model.safetensors.index.json"
    assert run(capsys, index, tmp_path / "a", "--dtype", "fp32")[0] == 0
    single = FIXTURES / "i2v" / "diffusers" / "diffusion_pytorch_model.safetensors"
    code, out, err = run(capsys, single, tmp_path / "b")
    assert code == 0, err  # config.json is read from the file's folder
    assert json.loads(out)["num_params"] > 25592


def test_unsupported_dtype_is_reported(tmp_path, capsys):
    tensors = t2v_tensors()
    tensors["proj_out.bias"] = tensors["proj_out.bias"].astype(np.int8)
    code, _, err = run(capsys, write_single(tmp_path / "int8", tensors), tmp_path / "out")
    assert code == 1 and "unsupported dtype: proj_out.bias is I8" in err


def test_load_rejects_folders_that_are_not_converted(tmp_path):
    with pytest.raises(FileNotFoundError, match="svg-jax convert SRC DST"):
        load(tmp_path)


def test_cli_help_lists_convert(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "convert" in capsys.readouterr().out
