"""Jittable diffusion schedulers with diffusers parity: UniPC (Wan), flow-matching Euler (HunyuanVideo) and
CogVideoX DDIM.

Each scheduler is a frozen, hashable config whose fields are diffusers' config keys (defaults: the model
family's shipped config). ``set_timesteps(n)`` runs on the host and returns a ``Schedule`` pytree;
``init_state`` and ``step(schedule, state, i, model_output, sample)`` trace with a traced step index, so a
``lax.fori_loop`` / ``lax.scan`` over the steps compiles once (see :mod:`.base`). This package imports only
jax, numpy and the standard library.
"""

from .base import NoState, Schedule, Scheduler
from .cogvideox_ddim import CogVideoXDDIMSchedule, CogVideoXDDIMScheduler
from .flow_euler import FlowMatchEulerDiscreteScheduler, FlowMatchEulerSchedule
from .unipc import UniPCMultistepScheduler, UniPCSchedule, UniPCState

SCHEDULERS: dict[str, type] = {
    "unipc": UniPCMultistepScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
    "cogvideox_ddim": CogVideoXDDIMScheduler,
}

__all__ = [
    "SCHEDULERS",
    "CogVideoXDDIMSchedule",
    "CogVideoXDDIMScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchEulerSchedule",
    "NoState",
    "Schedule",
    "Scheduler",
    "UniPCMultistepScheduler",
    "UniPCSchedule",
    "UniPCState",
]
