"""Flow-matching Euler scheduler as HunyuanVideo drives it (diffusers ``FlowMatchEulerDiscreteScheduler``).

``HunyuanVideoPipeline`` calls ``retrieve_timesteps(scheduler, n, sigmas=np.linspace(1, 0, n + 1)[:-1])``:
the scheduler casts those sigmas to float32, shifts them with ``s·σ / (1 + (s − 1)·σ)`` (float32 numpy),
sets ``timesteps = σ·1000`` (float32) and appends a final sigma of 0. A step is
``x + (σ_{i+1} − σ_i)·v`` in float32.

Where this port deliberately differs: diffusers multiplies ``dt`` into a bf16 ``model_output`` in bf16 and
returns ``prev_sample`` in the model output's dtype, so with a bf16 transformer HunyuanVideo's latents
become bf16 after the first step (and the pipeline's ``t.to(latents.dtype)`` then feeds bf16-rounded
timesteps to the transformer). Here the step always computes and returns float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .base import NoState, Stateless, check_int, check_num_steps, check_positive, unfused_mul

_NAME = "FlowMatchEulerDiscreteScheduler"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FlowMatchEulerSchedule:
    """Timesteps and sigmas of one generation."""

    timesteps: jax.Array  # float32 [S]: σ_i·num_train_timesteps, what the transformer sees
    sigmas: jax.Array  # float32 [S + 1]: the shifted sigmas, then 0
    num_steps: int = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowMatchEulerDiscreteScheduler(Stateless):
    """Euler steps on a shifted flow-matching schedule (HunyuanVideo: ``shift=7.0``).

    Field names are diffusers' config keys; defaults are HunyuanVideo's. Dynamic shifting, Karras /
    exponential / beta sigmas, inverted sigmas and stochastic sampling are not ported.
    """

    num_train_timesteps: int = 1000
    shift: float = 7.0

    def __post_init__(self):
        check_int(_NAME, "num_train_timesteps", self.num_train_timesteps, 1)
        check_positive(_NAME, "shift", self.shift)

    def set_timesteps(self, num_steps: int | np.integer) -> FlowMatchEulerSchedule:
        """The schedule ``HunyuanVideoPipeline`` builds for ``num_inference_steps=num_steps`` (host side)."""
        n = check_num_steps(_NAME, num_steps)
        sigmas = np.linspace(1.0, 0.0, n + 1)[:-1].astype(np.float32)
        # diffusers shifts the float32 array with Python scalars, so (NEP 50) every op rounds to float32.
        shift = float(self.shift)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        assert sigmas.dtype == np.float32, sigmas.dtype
        timesteps = sigmas * np.float32(self.num_train_timesteps)
        sigmas = np.concatenate([sigmas, np.zeros(1, np.float32)])
        return FlowMatchEulerSchedule(
            timesteps=jnp.asarray(timesteps), sigmas=jnp.asarray(sigmas), num_steps=n
        )

    def step(
        self,
        schedule: FlowMatchEulerSchedule,
        state: NoState,
        i: jax.Array | int,
        model_output: jax.Array,
        sample: jax.Array,
    ) -> tuple[jax.Array, NoState]:
        """``x_{i+1} = x_i + (σ_{i+1} − σ_i)·v`` in float32 (``i`` may be traced)."""
        i, v, x = self.float32_inputs(i, model_output, sample)
        dt = schedule.sigmas[i + 1] - schedule.sigmas[i]
        return x + unfused_mul(dt, v), state
