"""Regenerate the HunyuanVideo parity fixtures under tests/fixtures/hunyuan/ from diffusers (torch, CPU).

Run with a Python 3.11 venv outside the repo that has torch and diffusers (CI has neither)::

    python3.11 -m venv /work/venv311 && /work/venv311/bin/pip install torch==2.13.0 diffusers safetensors
    /work/venv311/bin/python tools/make_hunyuan_fixtures.py

Writes, for each tiny random config (diffusers' own HunyuanVideo test config, and the "patch 2 with
padding" config of video_dits.md §6: two samples whose text masks end in zeros, guidance 6000):

* ``<name>/diffusers/``: ``save_pretrained`` output (config.json + safetensors);
* ``<name>/io.safetensors``: inputs, the float32 output, and submodule goldens: the RoPE tables, the
  condition embedding ``temb``, the token-refiner output, and double block 0's inputs and outputs.

Plus ``sinusoid.safetensors`` (diffusers' 256-wide timestep sinusoid at timesteps and embedded guidance
values up to 10000) and ``versions.json`` (torch and diffusers versions).
"""

import json
import pathlib
import shutil

import diffusers
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.embeddings import Timesteps
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hunyuan"

# diffusers tests/models/transformers/test_models_transformer_hunyuan_video.py
TINY = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=10,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=1,
    patch_size_t=1,
    guidance_embeds=True,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(2, 4, 4),
    image_condition_type=None,
)
# video_dits.md §6 "Hunyuan with patch 2 and padding".
PADDED = dict(
    TINY, attention_head_dim=16, rope_axes_dim=(4, 6, 6), patch_size=2, num_layers=2, num_single_layers=2
)


def build(config: dict, seed: int) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(**config).eval()
    with torch.no_grad():  # perturb every parameter so norms/biases/zero-inits are not trivially 1/0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def capture(module: torch.nn.Module, store: dict, name: str):
    def hook(_, args, kwargs, output):
        store[name] = output
        store[name + "_args"] = args

    return module.register_forward_hook(hook, with_kwargs=True)


def make_case(name: str, config: dict, inputs: dict, *, seed: int) -> None:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    model = build(config, seed)
    store: dict = {}
    hooks = [
        capture(model.time_text_embed, store, "cond"),
        capture(model.context_embedder, store, "refiner"),
        capture(model.transformer_blocks[0], store, "block0"),
    ]
    with torch.no_grad():
        output = model(**inputs, return_dict=False)[0]
        rope_cos, rope_sin = model.rope(inputs["hidden_states"])
    for h in hooks:
        h.remove()
    block_x, block_text, block_temb = store["block0_args"][:3]
    io = dict(
        inputs,
        output=output,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        temb=store["cond"][0],
        refiner_out=store["refiner"],
        block0_hidden=block_x,
        block0_text=block_text,
        block0_temb=block_temb,
        block0_out_hidden=store["block0"][0],
        block0_out_text=store["block0"][1],
    )
    out.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in io.items()}, out / "io.safetensors")
    model.save_pretrained(out / "diffusers")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(100)
    make_case(
        "tiny",
        TINY,
        dict(
            hidden_states=torch.randn(1, 4, 1, 16, 16, generator=gen),
            timestep=torch.tensor([732.0]),
            encoder_hidden_states=torch.randn(1, 12, 16, generator=gen),
            encoder_attention_mask=torch.ones(1, 12),
            pooled_projections=torch.randn(1, 8, generator=gen),
            guidance=torch.tensor([3500.0]),
        ),
        seed=0,
    )
    valid = torch.tensor([9, 5])
    make_case(
        "padded",
        PADDED,
        dict(
            hidden_states=torch.randn(2, 4, 2, 8, 8, generator=gen),
            timestep=torch.tensor([912.5, 15.0]),
            encoder_hidden_states=torch.randn(2, 12, 16, generator=gen),
            encoder_attention_mask=(torch.arange(12)[None, :] < valid[:, None]).to(torch.int64),
            pooled_projections=torch.randn(2, 8, generator=gen),
            guidance=torch.tensor([6000.0, 6000.0]),
        ),
        seed=1,
    )
    t = torch.tensor([0.0, 1.0, 15.0, 912.5, 999.0, 1000.0, 3500.0, 6000.0, 10000.0])
    save_file(
        {"t": t, "sinusoid": Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t)},
        OUT / "sinusoid.safetensors",
    )
    with open(OUT / "versions.json", "w") as f:
        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
