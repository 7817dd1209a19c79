"""Regenerate the HunyuanVideo sampling golden under tests/fixtures/sampling/ from diffusers' pipeline.

Run with the torch + diffusers venv of ``tools/make_hunyuan_fixtures.py`` (CI has neither)::

    /work/venv311/bin/python tools/make_hunyuan_sampling_fixtures.py

The tiny transformer of ``tests/fixtures/hunyuan/padded/diffusers`` (patch 2, guidance-distilled) runs
inside a real ``HunyuanVideoPipeline`` with no text encoders or VAE (prompt embeddings, their masks and
the pooled vectors go in, ``output_type="latent"`` comes out) and the scheduler HunyuanVideo ships,
``FlowMatchEulerDiscreteScheduler(shift=7.0)``. One case uses the embedded guidance alone (diffusers'
default), one adds true classifier-free guidance with a negative prompt of another length. Each stores
the inputs, the timesteps and the final latents, all float32; ``hunyuan_cases.json`` the settings.
"""

import pathlib

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from make_sampling_fixtures import latent_io, write_cases  # (this folder)
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "fixtures" / "hunyuan" / "padded" / "diffusers"
OUT = ROOT / "tests" / "fixtures" / "sampling"

# (name, steps, embedded guidance, true cfg, latent frames, prompt tokens, negative prompt tokens)
CASES = (
    ("hunyuan_embedded", 4, 6.0, 1.0, 2, 5, None),
    ("hunyuan_true_cfg", 3, 6.0, 3.0, 2, 6, 3),
)
TEXT_SLOTS = 8  # padded prompt length


def text(gen, cfg, valid: int):
    embeds = torch.randn(1, TEXT_SLOTS, cfg.text_embed_dim, generator=gen)
    mask = (torch.arange(TEXT_SLOTS)[None] < valid).to(torch.float32)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
    return (
        embeds * mask[..., None],
        mask,
        pooled,
    )  # padded slots zero, as a text encoder's padding would not be


def run_case(transformer, name, steps, guidance, true_cfg, frames, valid, negative_valid, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(1, cfg.in_channels, frames, 8, 8, generator=gen)
    prompt, mask, pooled = text(gen, cfg, valid)
    neg = text(gen, cfg, negative_valid) if negative_valid else (None, None, None)
    pipe = HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
    )
    with torch.no_grad():
        final = pipe(
            prompt_embeds=prompt,
            prompt_attention_mask=mask,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=neg[0],
            negative_prompt_attention_mask=neg[1],
            negative_pooled_prompt_embeds=neg[2],
            guidance_scale=guidance,
            true_cfg_scale=true_cfg,
            num_inference_steps=steps,
            **latent_io(latents),
        ).frames
    tensors = {
        "latents": latents,
        "prompt_embeds": prompt,
        "prompt_mask": mask,
        "pooled": pooled,
        "timesteps": pipe.scheduler.timesteps.to(torch.float32),
        "final": final,
    }
    if negative_valid:
        tensors |= {"negative_embeds": neg[0], "negative_mask": neg[1], "negative_pooled": neg[2]}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors")
    return dict(
        steps=steps,
        embedded_guidance_scale=guidance,
        true_cfg_scale=true_cfg,
        latent_frames=frames,
        seed=seed,
    )


def main() -> None:
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    transformer = HunyuanVideoTransformer3DModel.from_config(
        HunyuanVideoTransformer3DModel.load_config(MODEL)
    )
    transformer.load_state_dict(load_file(MODEL / "diffusion_pytorch_model.safetensors"), strict=True)
    transformer = transformer.to(torch.float32).eval()
    cases = {}
    for seed, case in enumerate(CASES):
        cases[case[0]] = run_case(transformer, *case, seed=seed + 10)
    write_cases(OUT / "hunyuan_cases.json", cases, MODEL)


if __name__ == "__main__":
    main()
