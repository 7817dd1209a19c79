"""Regenerate the scheduler parity goldens under tests/fixtures/schedulers/ from diffusers (torch, CPU).

Run with the Python 3.11 venv that has torch and diffusers (CI has neither)::

    python3.11 -m venv /work/venv311 && /work/venv311/bin/pip install torch==2.13.0 diffusers==0.42.1
    /work/venv311/bin/python tools/make_scheduler_fixtures.py

For every case it builds the diffusers scheduler the way the pipeline does (Wan: ``UniPCMultistepScheduler``;
HunyuanVideo: ``FlowMatchEulerDiscreteScheduler`` fed ``sigmas=linspace(1, 0, n + 1)[:-1]``; CogVideoX:
``CogVideoXDDIMScheduler``), draws a seeded float32 initial sample and one seeded float32 model output per
step, runs the whole update sequence and writes ``<case>.npz`` with:

* ``timesteps``: what the pipeline passes to the transformer (int64 for UniPC/DDIM, float32 for Euler);
* ``sigmas`` (UniPC, Euler; float32 ``[S + 1]``) or ``alphas_cumprod`` (DDIM; float64 ``[1000]``);
* ``sample``: the initial sample; ``model_outputs``: ``[S, *shape]``; ``prev_samples``: ``[S, *shape]``,
  the sample after every step.

``cases.json`` lists each case's scheduler, its diffusers config kwargs (our configs take the same names)
and ``num_steps``; ``versions.json`` records the library versions the goldens came from.
"""

import json
import pathlib
import platform

import diffusers
import numpy as np
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schedulers"
SHAPE = (1, 4, 3, 4, 4)  # [B, C, T, H, W], small so every intermediate sample fits in the fixture

# Wan's shipped scheduler_config.json (video_dits.md §4).
WAN_UNIPC = dict(
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    num_train_timesteps=1000,
    flow_shift=3.0,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
)
HUNYUAN_EULER = dict(num_train_timesteps=1000, shift=7.0)
COGVIDEOX_DDIM = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    timestep_spacing="trailing",
    snr_shift_scale=3.0,
    steps_offset=0,
    clip_sample=False,
)

# name → (scheduler key, diffusers kwargs, num_steps)
CASES = {
    "unipc_shift3_n50": ("unipc", WAN_UNIPC, 50),
    "unipc_shift5_n50": ("unipc", dict(WAN_UNIPC, flow_shift=5.0), 50),
    "unipc_shift3_n7": ("unipc", WAN_UNIPC, 7),
    "unipc_shift3_n1": ("unipc", WAN_UNIPC, 1),
    "unipc_shift3_n2": ("unipc", WAN_UNIPC, 2),
    "unipc_order1_n10": ("unipc", dict(WAN_UNIPC, solver_order=1), 10),
    "unipc_order3_n10": ("unipc", dict(WAN_UNIPC, solver_order=3), 10),
    "unipc_order3_n3": ("unipc", dict(WAN_UNIPC, solver_order=3), 3),
    "unipc_bh1_sigma_min_n10": (
        "unipc",
        dict(WAN_UNIPC, solver_type="bh1", final_sigmas_type="sigma_min"),
        10,
    ),
    "unipc_bh1_order3_sigma_min_n8": (
        "unipc",
        dict(WAN_UNIPC, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"),
        8,
    ),
    "unipc_no_lower_order_final_sigma_min_n6": (
        "unipc",
        dict(WAN_UNIPC, lower_order_final=False, final_sigmas_type="sigma_min"),
        6,
    ),
    "unipc_disable_corrector_n10": (
        "unipc",
        dict(WAN_UNIPC, flow_shift=5.0, disable_corrector=[0, 1, 4]),
        10,
    ),
    "flow_euler_shift7_n50": ("flow_euler", HUNYUAN_EULER, 50),
    "flow_euler_shift7_n6": ("flow_euler", HUNYUAN_EULER, 6),
    "flow_euler_shift1_n1": ("flow_euler", dict(HUNYUAN_EULER, shift=1.0), 1),
    "cogvideox_ddim_snr3_n50": ("cogvideox_ddim", COGVIDEOX_DDIM, 50),
    "cogvideox_ddim_snr1_n50": ("cogvideox_ddim", dict(COGVIDEOX_DDIM, snr_shift_scale=1.0), 50),
    "cogvideox_ddim_snr1_n13": ("cogvideox_ddim", dict(COGVIDEOX_DDIM, snr_shift_scale=1.0), 13),
    "cogvideox_ddim_snr3_n1": ("cogvideox_ddim", COGVIDEOX_DDIM, 1),
    "cogvideox_ddim_snr3_no_rescale_alpha_n7": (
        "cogvideox_ddim",
        dict(COGVIDEOX_DDIM, rescale_betas_zero_snr=False, set_alpha_to_one=False),
        7,
    ),
}


def _build(key: str, kwargs: dict, num_steps: int):
    """The scheduler after the pipeline's ``set_timesteps`` call, and its schedule table."""
    if key == "unipc":
        sched = UniPCMultistepScheduler(**kwargs)
        sched.set_timesteps(num_steps)  # WanPipeline: retrieve_timesteps(scheduler, n) → set_timesteps(n)
        return sched, {"sigmas": sched.sigmas.numpy()}
    if key == "flow_euler":
        sched = FlowMatchEulerDiscreteScheduler(**kwargs)
        # HunyuanVideoPipeline: retrieve_timesteps(scheduler, n, sigmas=linspace(1, 0, n + 1)[:-1]).
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
        return sched, {"sigmas": sched.sigmas.numpy()}
    if key == "cogvideox_ddim":
        sched = CogVideoXDDIMScheduler(**kwargs)
        sched.set_timesteps(num_steps)
        return sched, {"alphas_cumprod": sched.alphas_cumprod.numpy()}
    raise ValueError(f"unknown scheduler {key!r}")


def _run(key: str, kwargs: dict, num_steps: int, seed: int) -> dict[str, np.ndarray]:
    sched, tables = _build(key, kwargs, num_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    sample0 = x.clone()
    outs, prevs = [], []
    for t in sched.timesteps:
        v = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
        # CogVideoXPipeline passes eta=0.0 (extra_step_kwargs); the DDIM step ignores it.
        extra = {"eta": 0.0} if key == "cogvideox_ddim" else {}
        x = sched.step(v, t, x, return_dict=False, **extra)[0]
        assert x.dtype == torch.float32, x.dtype
        outs.append(v.numpy())
        prevs.append(x.numpy())
    return dict(
        timesteps=sched.timesteps.numpy(),
        sample=sample0.numpy(),
        model_outputs=np.stack(outs),
        prev_samples=np.stack(prevs),
        **tables,
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for seed, (name, (key, kwargs, num_steps)) in enumerate(CASES.items()):
        arrays = _run(key, kwargs, num_steps, seed)
        np.savez(OUT / f"{name}.npz", **arrays)
        manifest[name] = dict(scheduler=key, config=kwargs, num_steps=num_steps, seed=seed, shape=SHAPE)
        print(f"{name}: {len(arrays['timesteps'])} steps, timesteps[:3]={arrays['timesteps'][:3].tolist()}")
    (OUT / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    versions = dict(
        diffusers=diffusers.__version__,
        torch=torch.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        generator="tools/make_scheduler_fixtures.py",
    )
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    main()
