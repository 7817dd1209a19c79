"""`svg-jax generate`: outputs, parity with diffusers through the CLI, up-front validation, atomic writes."""

import json
import pathlib
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from svg_jax import generate as generate_module
from svg_jax.cli import main
from svg_jax.convert import convert_checkpoint

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = load_file(FIXTURES / "sampling" / "wan_t2v_cfg.safetensors")
CASE = json.loads((FIXTURES / "sampling" / "cases.json").read_text())["cases"]["wan_t2v_cfg"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    convert_checkpoint(FIXTURES / "wan" / "t2v" / "diffusers", root / "ckpt", dtype="fp32", progress=False)
    save_file({"prompt_embeds": GOLDEN["prompt_embeds"][0]}, root / "prompt.safetensors")  # [L, D]
    np.savez(root / "negative.npz", negative_prompt_embeds=GOLDEN["negative_embeds"])
    save_file({"latents": GOLDEN["latents"]}, root / "noise.safetensors")
    return root


def argv(files: pathlib.Path, out: pathlib.Path, *extra) -> list[str]:
    base = [
        "generate",
        "--checkpoint",
        files / "ckpt",
        "--prompt-embeds",
        files / "prompt.safetensors",
        "--negative-embeds",
        files / "negative.npz",
        "--init-latents",
        files / "noise.safetensors",
        "--height",
        128,
        "--width",
        128,
        "--frames",
        5,
        "--steps",
        CASE["steps"],
        "--guidance",
        CASE["guidance_scale"],
        "--flow-shift",
        CASE["flow_shift"],
        "--dtype",
        "fp32",
        "--out",
        out,
        "--quiet",
    ]
    return [str(a) for a in [*base, *extra]]


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_dense_generate_matches_diffusers_and_writes_outputs(files, tmp_path, capsys):
    out = tmp_path / "dense"
    assert main(argv(files, out, "--attention", "dense")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attention"] == "dense" and summary["steps"] == CASE["steps"]
    latents = load_file(out / "latents.safetensors")["latents"]
    err = np.abs(latents - GOLDEN["final"]).max() / np.abs(GOLDEN["final"]).max()
    assert err <= 1e-4, err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(CASE["steps"]))
    assert [r["timestep"] for r in log] == GOLDEN["timesteps"].tolist()
    assert all(r["density"] == 1.0 and len(r["layers"]) == 2 for r in log)
    assert all(r["time_s"] > 0 for r in log) and log[0]["includes_compile"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["attention"] == {"method": "dense"} and run["summary"] == summary
    assert leftovers(tmp_path) == []


def test_svg1_and_svg2_logs_carry_method_stats(files, tmp_path, capsys):
    out1 = tmp_path / "svg1"
    common = ["--dense-steps", "2", "--dense-layers", "1"]
    assert main(argv(files, out1, "--attention", "svg1", "--density", "0.5", *common)) == 0
    log = [json.loads(line) for line in (out1 / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["dense"] * 2 + ["sparse"] * (CASE["steps"] - 2)
    sparse_layer = log[2]["layers"][1]
    assert not sparse_layer["dense"]  # ran SVG1 (its 128-token tiles cover these 128 tokens: density 1)
    assert np.asarray(sparse_layer["head_choice"]).shape == (2, 1, 2)  # [pass, batch, head]
    assert log[2]["includes_compile"] and not log[3]["includes_compile"]

    out2 = tmp_path / "svg2"
    extra = ["--q-clusters", "4", "--k-clusters", "8", "--top-p", "0.8", *common]
    assert main(argv(files, out2, "--attention", "svg2", *extra)) == 0
    capsys.readouterr()
    log = [json.loads(line) for line in (out2 / "log.jsonl").read_text().splitlines()]
    assert 0 < log[-1]["layers"][1]["estimated_recall"] <= 1
    tilings = log[-1]["layers"][1]["query_tiling"]  # one per CFG pass (CPU: no paged kernel)
    assert len(tilings) == 2 and set(tilings) <= {"fixed", "aligned"}
    assert log[-1]["layers"][0]["query_tiling"] == ["dense", "dense"]  # the first layer runs dense
    run = json.loads((out2 / "run.json").read_text())
    assert run["settings"]["attention"]["num_q_clusters"] == 4
    assert run["settings"]["attention"]["dense_steps"] == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--frames", "6"], "--frames must be 4k\\+1.*try 5"),
        (["--height", "120"], "--height must be a positive multiple of 16"),
        (["--attention", "svg2", "--q-clusters", "1000"], "--q-clusters=1000 exceeds the 128 video tokens"),
        (["--attention", "svg2", "--density", "0.3"], "--density only apply to --attention svg1"),
        (["--attention", "dense", "--dense-steps", "2"], "only apply to --attention svg1 or svg2"),
        (["--attention", "svg2", "--top-p", "1.5"], "top_p must be a float in"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--prompt-embeds", "missing.npz"], "--prompt-embeds missing.npz: no such file"),
        (["--checkpoint", "."], "--checkpoint"),
    ],
)
def test_bad_arguments_fail_before_compute_and_write_nothing(files, tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert main(argv(files, out, *extra)) == 2
    err = capsys.readouterr().err
    assert "svg-jax generate: error:" in err
    assert re.search(match, err), err
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_negative_embeds_with_guidance(files, tmp_path, capsys):
    args = argv(files, tmp_path / "out")
    i = args.index("--negative-embeds")
    del args[i : i + 2]
    assert main(args) == 2
    assert "needs --negative-embeds" in capsys.readouterr().err
    assert main([*args, "--attention", "dense", "--guidance", "1"]) == 0  # no guidance: no negative pass


def test_wrong_embedding_width_is_reported(files, tmp_path, capsys):
    np.savez(tmp_path / "wide.npz", prompt_embeds=np.zeros((12, 32), np.float32))
    args = argv(files, tmp_path / "out")
    args[args.index("--prompt-embeds") + 1] = str(tmp_path / "wide.npz")
    assert main(args) == 2
    assert "must have last axis 16" in capsys.readouterr().err


def test_a_hunyuan_checkpoint_is_refused_clearly(files, tmp_path, capsys):
    ckpt = tmp_path / "hunyuan"
    convert_checkpoint(FIXTURES / "hunyuan" / "tiny" / "diffusers", ckpt, dtype="fp32", progress=False)
    args = argv(files, tmp_path / "out")
    args[args.index("--checkpoint") + 1] = str(ckpt)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a HunyuanVideoTransformer3DModel" in err and "Wan 2.1 checkpoints only" in err
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_force_and_failures_leave_nothing(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(argv(files, out, "--attention", "dense", "--steps", "1")) == 2
    assert "exists; pass --force" in capsys.readouterr().err

    def boom(*a, **kw):
        raise RuntimeError("device lost")

    monkeypatch.setattr(generate_module, "sample", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        main(argv(files, out, "--attention", "dense", "--steps", "1", "--force"))
    assert (out / "keep").read_text() == "x" and leftovers(tmp_path) == []  # old output untouched
    monkeypatch.undo()
    assert main(argv(files, out, "--attention", "dense", "--steps", "1", "--force")) == 0
    assert not (out / "keep").exists() and (out / "latents.safetensors").exists()


def _resolve(**overrides):
    unset = (
        "height",
        "width",
        "frames",
        "steps",
        "guidance",
        "flow_shift",
        "dense_steps",
        "dense_layers",
        "density",
        "q_clusters",
        "k_clusters",
        "top_p",
        "min_k_token_ratio",
        "query_tiles",
        "negative_embeds",
        "image_inputs",
        "init_latents",
    )
    paths = {name: pathlib.Path(name[0]) for name in ("checkpoint", "prompt_embeds", "out")}
    args = dict.fromkeys(unset) | paths | dict(preset="wan2.1-t2v-14b-720p", seed=0, dtype="bf16")
    return generate_module.resolve(**(args | overrides))


def test_presets_fill_the_official_settings():
    request = _resolve(attention="svg2")
    assert (request.height, request.width, request.frames, request.steps) == (720, 1280, 81, 50)
    assert request.flow_shift == 5.0 and request.guidance_scale == 5.0
    assert request.attention.svg2.num_q_clusters == 300 and request.attention.dense_steps == 10
    fewer = _resolve(attention="svg1", steps=30)
    assert fewer.attention.dense_steps == 6  # floor(0.2 · 30), the official first_times_fp rule
    assert _resolve(attention="svg1", steps=30, dense_steps=0).attention.dense_steps == 0
    floor = _resolve(attention="svg2", top_p=1e-6, min_k_token_ratio=0.13).attention.svg2
    assert (floor.top_p, floor.min_k_token_ratio, floor.num_k_clusters) == (1e-6, 0.13, 1000)
    assert _resolve(attention="svg2", query_tiles="aligned").attention.svg2.query_tiles == "aligned"
    assert _resolve(attention="svg2").attention.svg2.query_tiles == "auto"
    with pytest.raises(generate_module.GenerateError, match="--query-tiles only apply to --attention svg2"):
        _resolve(attention="svg1", query_tiles="fixed")
    only_svg2 = "--min-k-token-ratio only apply to --attention svg2"
    with pytest.raises(generate_module.GenerateError, match=only_svg2):
        _resolve(attention="svg1", min_k_token_ratio=0.13)
    with pytest.raises(generate_module.GenerateError, match="--preset must be one of"):
        _resolve(attention="dense", preset="wan9")
    with pytest.raises(generate_module.GenerateError, match="--height, --width, --frames required"):
        _resolve(attention="dense", preset=None)


def test_help_lists_generate(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate" in capsys.readouterr().out
