"""Regenerate the Wan parity fixtures under tests/fixtures/wan/ from diffusers (torch, CPU).

Run with a Python 3.11 venv outside the repo that has torch and diffusers (CI has neither)::

    python3.11 -m venv /work/venv311 && /work/venv311/bin/pip install torch==2.13.0 diffusers
    /work/venv311/bin/python tools/make_wan_fixtures.py

Writes, for each tiny random config (diffusers' own Wan test config, the I2V config of
video_dits.md §6, and a tiny FLF2V config):

* ``<name>/diffusers/``: ``save_pretrained`` output (config.json + safetensors; ``t2v`` is sharded with an
  index so the sharded reader is exercised);
* ``<name>/original/diffusion_pytorch_model.safetensors``: the same weights under the original-release key
  names (written here by an independent inverse of the rename, so the converter's forward rename is tested
  against it); the ``i2v`` copy carries ComfyUI's ``model.diffusion_model.`` prefix;
* ``<name>/io.safetensors``: inputs, the float32 output, and submodule goldens (RoPE tables, condition
  embedder outputs, block 0 inputs/output).

Plus ``rope_d128.safetensors`` (rows of diffusers' real-size RoPE buffers and timestep sinusoids) and
``manifest.json``: every key name and shape of the released Wan2.1 checkpoints, diffusers and original
format, built on the meta device (no weights needed).
"""

import json
import pathlib
import re
import shutil

import diffusers
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.embeddings import Timesteps
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "wan"

TINY_T2V = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
TINY_I2V = dict(TINY_T2V, in_channels=36, out_channels=16, image_dim=8, added_kv_proj_dim=24)
TINY_FLF2V = dict(TINY_I2V, pos_embed_seq_len=10)

# Released architectures (diffusers scripts/convert_wan_to_diffusers.py).
_SHARED = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    cross_attn_norm=True,
    eps=1e-6,
    freq_dim=256,
    qk_norm="rms_norm_across_heads",
    text_dim=4096,
    out_channels=16,
    rope_max_seq_len=1024,
)
_14B = dict(_SHARED, num_attention_heads=40, ffn_dim=13824, num_layers=40)
FULL_SIZE = {
    "wan2.1-t2v-1.3b": dict(_SHARED, num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16),
    "wan2.1-t2v-14b": dict(_14B, in_channels=16),
    "wan2.1-i2v-14b": dict(_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.1-flf2v-14b": dict(
        _14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120, pos_embed_seq_len=514
    ),
}

# diffusers → original-release names, per key (the inverse of diffusers' TRANSFORMER_KEYS_RENAME_DICT).
_ATTN = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "o",
    "norm_q": "norm_q",
    "norm_k": "norm_k",
    "add_k_proj": "k_img",
    "add_v_proj": "v_img",
    "norm_added_k": "norm_k_img",
}
_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}


def to_original(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key == "condition_embedder.image_embedder.pos_embed":
        return "img_emb.emb_pos"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        module, param = key.rsplit(".", 1)
        return f"{_TOP[module]}.{param}"
    layer, rest = m.groups()
    if rest == "scale_shift_table":
        return f"blocks.{layer}.modulation"
    a = re.fullmatch(r"attn([12])\.(.+)\.(weight|bias)", rest)
    if a:
        attn = {"1": "self_attn", "2": "cross_attn"}[a.group(1)]
        return f"blocks.{layer}.{attn}.{_ATTN[a.group(2)]}.{a.group(3)}"
    rest = {
        "norm2.weight": "norm3.weight",
        "norm2.bias": "norm3.bias",
        "ffn.net.0.proj.weight": "ffn.0.weight",
        "ffn.net.0.proj.bias": "ffn.0.bias",
        "ffn.net.2.weight": "ffn.2.weight",
        "ffn.net.2.bias": "ffn.2.bias",
    }[rest]
    return f"blocks.{layer}.{rest}"


def build_tiny(config: dict, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config).eval()
    with torch.no_grad():  # perturb every parameter so norms/biases are not trivially 1/0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def capture(module: torch.nn.Module, store: dict, name: str, with_inputs: bool = False):
    def hook(_, args, kwargs, output):
        store[name] = output
        if with_inputs:
            store[name + "_args"] = args

    return module.register_forward_hook(hook, with_kwargs=True)


def make_tiny(
    name: str,
    config: dict,
    *,
    batch: int,
    text_len: int,
    image_tokens: int | None,
    seed: int,
    shard: bool,
    comfy_prefix: bool,
) -> None:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    model = build_tiny(config, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = {
        "hidden_states": torch.randn(batch, config["in_channels"], 2, 16, 16, generator=gen),
        "timestep": torch.tensor([732, 15][:batch], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(batch, text_len, config["text_dim"], generator=gen),
    }
    if image_tokens is not None:
        images = batch * (2 if config.get("pos_embed_seq_len") else 1)
        inputs["encoder_hidden_states_image"] = torch.randn(
            images, image_tokens, config["image_dim"], generator=gen
        )
    store: dict = {}
    hooks = [
        capture(model.condition_embedder, store, "cond"),
        capture(model.blocks[0], store, "block0", True),
    ]
    with torch.no_grad():
        output = model(**inputs, return_dict=False)[0]
        rope_cos, rope_sin = model.rope(inputs["hidden_states"])
    for h in hooks:
        h.remove()
    temb, timestep_proj, text_emb, image_emb = store["cond"]
    block_x, block_ctx, block_tproj, _ = store["block0_args"]
    io = dict(
        inputs,
        output=output,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        temb=temb,
        timestep_proj=timestep_proj,
        text_emb=text_emb,
        block0_hidden=block_x,
        block0_context=block_ctx,
        block0_timestep_proj=block_tproj,
        block0_out=store["block0"],
    )
    if image_emb is not None:
        io["image_emb"] = image_emb
    out.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in io.items()}, out / "io.safetensors")

    model.save_pretrained(out / "diffusers", max_shard_size="40KB" if shard else "10GB")
    state = model.state_dict()
    prefix = "model.diffusion_model." if comfy_prefix else ""
    original = {prefix + to_original(k): v.contiguous() for k, v in state.items()}
    assert len(original) == len(state)
    (out / "original").mkdir()
    save_file(original, out / "original" / "diffusion_pytorch_model.safetensors")
    # The tiny architectures are no preset, so the original-format copy carries diffusers' config.json too.
    shutil.copy(out / "diffusers" / "config.json", out / "original" / "config.json")


def make_rope_goldens() -> None:
    rope = WanRotaryPosEmbed(128, (1, 2, 2), 1024)
    rows = torch.cat([torch.arange(0, 8), torch.arange(500, 508), torch.arange(1016, 1024)])
    t = torch.tensor([0.0, 1.0, 15.0, 500.0, 732.0, 999.0, 999.5])
    save_file(
        {
            "rows": rows,
            "freqs_cos": rope.freqs_cos[rows].contiguous(),
            "freqs_sin": rope.freqs_sin[rows].contiguous(),
            "timesteps": t,
            "sinusoid": Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t),
        },
        OUT / "rope_d128.safetensors",
    )


def make_manifest() -> None:
    manifest = {"diffusers_version": diffusers.__version__, "torch_version": torch.__version__, "models": {}}
    for name, config in FULL_SIZE.items():
        with torch.device("meta"):
            model = WanTransformer3DModel(**config)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        manifest["models"][name] = {
            "config": {k: v for k, v in model.config.items() if not k.startswith("_")},  # "_" keys: unordered
            "num_params": sum(int(torch.Size(s).numel()) for s in shapes.values()),
            "diffusers": shapes,
            "original": {to_original(k): s for k, s in shapes.items()},
        }
    with open(OUT / "manifest.json", "w") as f:
        json.dump(manifest, f, separators=(",", ":"), sort_keys=True, default=list)
        f.write("\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    make_tiny(
        "t2v", TINY_T2V, batch=2, text_len=12, image_tokens=None, seed=0, shard=True, comfy_prefix=False
    )
    make_tiny("i2v", TINY_I2V, batch=2, text_len=512, image_tokens=5, seed=1, shard=False, comfy_prefix=True)
    make_tiny(
        "flf2v", TINY_FLF2V, batch=1, text_len=512, image_tokens=5, seed=2, shard=False, comfy_prefix=False
    )
    make_rope_goldens()
    make_manifest()
    with open(OUT / "versions.json", "w") as f:
        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
