"""Regenerate the end-to-end sampling golden under tests/fixtures/sampling/ from diffusers' WanPipeline.

Run with the torch + diffusers venv of ``tools/make_wan_fixtures.py`` (CI has neither)::

    /work/venv311/bin/python tools/make_sampling_fixtures.py

The tiny T2V transformer of ``tests/fixtures/wan/t2v/diffusers`` runs inside a real ``WanPipeline`` (no text
encoder or VAE: prompt embeddings go in, ``output_type="latent"`` comes out) with the scheduler Wan ships,
``UniPCMultistepScheduler(flow_prediction, use_flow_sigmas, flow_shift, solver_order=2, bh2)``. Each case
stores the initial noise, the prompt and negative embeddings, the latents after every step (through
``callback_on_step_end``) and the timesteps, all float32.
"""

import json
import pathlib

import diffusers
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "fixtures" / "wan" / "t2v" / "diffusers"
OUT = ROOT / "tests" / "fixtures" / "sampling"

# (name, steps, guidance, flow_shift, latent frames); 2 frames exercise a T > 1 grid.
CASES = (
    ("wan_t2v_cfg", 6, 5.0, 3.0, 2),
    ("wan_t2v_nocfg", 4, 1.0, 5.0, 2),
)


def wan_scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    # The scheduler_config.json of the Wan-AI/Wan2.1-T2V-*-Diffusers repos, shift aside.
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )


def run_case(transformer, name: str, steps: int, guidance: float, shift: float, frames: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(1, cfg.in_channels, frames, 16, 16, generator=gen)
    prompt = torch.randn(1, 12, cfg.text_dim, generator=gen)
    negative = torch.randn(1, 12, cfg.text_dim, generator=gen)
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=wan_scheduler(shift)
    )
    trajectory = []

    def record(_pipe, _i, _t, kwargs):
        trajectory.append(kwargs["latents"].detach().clone())
        return {}

    with torch.no_grad():
        final = pipe(
            prompt_embeds=prompt,
            negative_prompt_embeds=negative if guidance > 1.0 else None,
            guidance_scale=guidance,
            num_inference_steps=steps,
            **latent_io(latents),
            callback_on_step_end=record,
            callback_on_step_end_tensor_inputs=["latents"],
        ).frames
    tensors = {
        "latents": latents,
        "prompt_embeds": prompt,
        "negative_embeds": negative,
        "timesteps": pipe.scheduler.timesteps.to(torch.float32),
        "trajectory": torch.stack(trajectory),
        "final": final,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors")
    return dict(steps=steps, guidance_scale=guidance, flow_shift=shift, latent_frames=frames, seed=seed)


def main() -> None:
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    # from_pretrained needs accelerate for this config; build from config.json and load the shards instead.
    transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(MODEL)).eval()
    state = {}
    for shard in sorted(MODEL.glob("*.safetensors")):
        state.update(load_file(shard))
    transformer.load_state_dict(state, strict=True)
    transformer.to(torch.float32)
    cases = {}
    for seed, (name, steps, guidance, shift, frames) in enumerate(CASES):
        cases[name] = run_case(transformer, name, steps, guidance, shift, frames, seed)
    write_cases(OUT / "cases.json", cases, MODEL)


def latent_io(latents: torch.Tensor) -> dict:
    """The pipeline arguments that start from ``latents`` ``[B, C, F, H, W]`` and stop at the latents (the
    VAE's 4× temporal and 8× spatial compression give the video size it checks)."""
    _, _, f, h, w = latents.shape
    size = dict(height=h * 8, width=w * 8, num_frames=(f - 1) * 4 + 1)
    return size | dict(latents=latents.clone(), output_type="latent")


def write_cases(path: pathlib.Path, cases: dict, model: pathlib.Path) -> None:
    """The settings of every case, with the versions that made them (also for the HunyuanVideo tool)."""
    meta = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "model": str(model.relative_to(ROOT)),
    }
    with open(path, "w") as f:
        json.dump({"versions": meta, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
